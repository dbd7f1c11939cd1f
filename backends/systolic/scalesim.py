"""Run SCALE-Sim, the reference systolic-array simulator, on the layers Loom runs.

SCALE-Sim 3.0 needs numpy < 2 (it fails under numpy 2 inside its double-
buffered scratchpad model), so it lives in its own virtual environment,
`.venv-scalesim/` at the repository root, created on first use with
`python -m venv` and `pip install scalesim "numpy<2"`, and runs as a
subprocess. All layers of one configuration go into one topology file and
one run; results are cached in that environment keyed by the configuration
and the layers.

Layers are given as convolutions (a GEMM M x N x K is the 1 x K filter over
an M x K ifmap, exactly how SCALE-Sim reads GEMM topologies). SCALE-Sim has
no padding: give it the padded ifmap. It rounds the output size up
(ceil((H - R) / stride) + 1), which agrees with the usual floor only when
the stride divides H - R.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv-scalesim"
REQUIREMENTS = ("scalesim==3.0.0", "numpy<2")


@dataclass(frozen=True)
class ConvLayer:
    """A layer in SCALE-Sim's topology terms (no padding, one stride)."""

    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    filters: int
    stride: int = 1

    @staticmethod
    def gemm(name: str, m: int, n: int, k: int) -> ConvLayer:
        return ConvLayer(name, m, k, 1, k, 1, n, 1)

    @property
    def ofmap(self) -> tuple[int, int]:
        return ((self.ifmap_h - self.filter_h) // self.stride + 1, (self.ifmap_w - self.filter_w) // self.stride + 1)

    @property
    def macs(self) -> int:
        oh, ow = self.ofmap
        return oh * ow * self.filter_h * self.filter_w * self.channels * self.filters


@dataclass(frozen=True)
class ScaleSimResult:
    name: str
    total_cycles: int  # "Total Cycles": compute, without the initial prefetch
    total_cycles_with_prefetch: int
    stall_cycles: int
    overall_util: float  # percent
    mapping_efficiency: float
    compute_util: float


def python() -> Path:
    """The interpreter of the SCALE-Sim environment, created if missing."""
    executable = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".venv-scalesim.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one creator when tests run in parallel
        wanted = " ".join(REQUIREMENTS) + "\n"
        if not stamp.exists() or stamp.read_text() != wanted:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
            subprocess.run([str(executable), "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
            stamp.write_text(wanted)
    return executable


def _config_text(rows: int, cols: int, dataflow: str, sram_kib: int) -> str:
    return f"""[general]
run_name = loom

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: {sram_kib}
FilterSramSzkB: {sram_kib}
OfmapSramSzkB: {sram_kib}
IfmapOffset: 0
FilterOffset: 10000000
OfmapOffset: 20000000
Dataflow: {dataflow}
Bandwidth: 10
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""


def run(layers: list[ConvLayer], rows: int, cols: int, dataflow: str, sram_kib: int = 1024,
        cached: bool = True) -> list[ScaleSimResult]:
    """SCALE-Sim's compute report for `layers` on a rows x cols array (one run; the
    result is cached unless `cached` is false, which runs SCALE-Sim again)."""
    key = hashlib.sha256(json.dumps([rows, cols, dataflow, sram_kib, [asdict(layer) for layer in layers],
                                     REQUIREMENTS]).encode()).hexdigest()[:24]
    cache = VENV / "cache" / f"{key}.json"
    interpreter = python()
    if cached and cache.exists():
        return [ScaleSimResult(**entry) for entry in json.loads(cache.read_text())]
    with tempfile.TemporaryDirectory(prefix="loom-scalesim-") as tmp:
        work = Path(tmp)
        (work / "loom.cfg").write_text(_config_text(rows, cols, dataflow, sram_kib))
        topology = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,"]
        topology += [f"{l.name}, {l.ifmap_h}, {l.ifmap_w}, {l.filter_h}, {l.filter_w}, {l.channels}, "
                     f"{l.filters}, {l.stride}," for l in layers]
        (work / "topology.csv").write_text("\n".join(topology) + "\n")
        # Layout files are read even when custom layouts are off.
        (work / "layout.csv").write_text("Layer name, unused,\n" + "".join(f"{l.name}, 1,\n" for l in layers))
        process = subprocess.run(
            [str(interpreter), "-m", "scalesim.scale", "-c", "loom.cfg", "-t", "topology.csv", "-l", "layout.csv",
             "-p", "out", "-i", "conv", "-s", "N"],
            cwd=work, capture_output=True, text=True)
        report = work / "out" / "loom" / "COMPUTE_REPORT.csv"
        if process.returncode != 0 or not report.exists():
            raise RuntimeError(f"SCALE-Sim failed:\n{process.stdout[-2000:]}\n{process.stderr[-2000:]}")
        with open(report) as f:
            rows_read = [[cell.strip() for cell in row] for row in csv.reader(f)][1:]
    results = []
    for layer, row in zip(layers, rows_read):
        results.append(ScaleSimResult(layer.name, int(row[2]), int(row[1]), int(row[3]),
                                      float(row[4]), float(row[5]), float(row[6])))
    if len(results) != len(layers):
        raise RuntimeError(f"SCALE-Sim reported {len(results)} layers for {len(layers)}")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps([asdict(r) for r in results]))
    return results
