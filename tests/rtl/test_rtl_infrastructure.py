"""The RTL layer end to end on small designs: build with the netlist layer,
export through CIRCT, lint and simulate with Verilator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from xdsl.dialects import test
from xdsl.dialects.builtin import IntegerType

from backends.rtl import synth, verilator
from backends.rtl.export import export_verilog
from backends.rtl.netlist import ModuleBuilder, design
from compiler.diagnostics import InternalError

WORDS = 16


def summing_design() -> ModuleBuilder:
    """Walks a memory initialised from `data.hex`: sums its words as signed
    bytes, replaces each word w by 3w - 7 (wrapping), counts words that are
    negative as i8, and raises `done` after the last one."""
    m = ModuleBuilder("summer")
    data = m.memory("data", WORDS, 8, init_file="data.hex")
    index = m.reg("index", 5)
    total = m.reg("total", 16)
    negatives = m.reg("negatives", 8)
    busy = index.q.ult(WORDS)
    word = data.read(index.q[0:4])
    total.set(total.q + word.sext(16), when=busy)
    negatives.set(negatives.q + word.slt(0).zext(8), when=busy)
    data.write(index.q[0:4], word * 3 - 7, busy)
    index.set(index.q + 1, when=busy)
    readout = m.input("addr", 4)
    m.output("done", ~busy)
    m.output("total", total.q)
    m.output("negatives", negatives.q)
    m.output("word", data.read(readout))
    return m


@pytest.fixture(scope="module")
def summer_verilog() -> dict[str, str]:
    return export_verilog(design(summing_design().finish()))


def test_export_writes_one_file_per_module_and_is_deterministic(summer_verilog: dict[str, str]) -> None:
    assert list(summer_verilog) == ["data_16x8.sv", "summer.sv"]
    top = summer_verilog["summer.sv"]
    assert "module summer(" in top and "always_ff @(posedge clk)" in top
    assert '$readmemh("data.hex", Memory)' in summer_verilog["data_16x8.sv"]
    assert export_verilog(design(summing_design().finish())) == summer_verilog


def test_lint_is_clean_and_reports_problems(summer_verilog: dict[str, str]) -> None:
    verilator.lint(summer_verilog, "summer")
    m = ModuleBuilder("unused")
    m.input("ignored", 4)
    m.output("done", m.const(1, 1))
    with pytest.raises(verilator.LintError, match="UNUSEDSIGNAL.*ignored"):
        verilator.lint(export_verilog(design(m.finish())), "unused")


def test_verilator_runs_the_design(summer_verilog: dict[str, str], tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, WORDS).astype(np.uint8)
    (tmp_path / "data.hex").write_text("".join(f"{b:02x}\n" for b in data))
    build = verilator.build(summer_verilog, verilator.Harness("summer", ("total", "negatives"), "addr", "word"))
    result = build.run(tmp_path, limit=1000, first=0, count=WORDS)
    signed = data.view(np.int8).astype(np.int64)
    assert result.done and result.ticks == WORDS
    assert result.scalars["total"] == int(signed.sum()) % (1 << 16)
    assert result.scalars["negatives"] == int((signed < 0).sum())
    assert result.words == [(3 * int(b) - 7) % 256 for b in data]
    # The same sources and harness reuse the build.
    assert verilator.build(summer_verilog, build.harness).executable == build.executable


def test_circt_errors_become_internal_errors() -> None:
    m = ModuleBuilder("broken")
    m.block.add_op(test.TestOp(result_types=[IntegerType(8)]))  # an op CIRCT does not know
    m.output("done", m.const(1, 1))
    with pytest.raises(InternalError, match="CIRCT"):
        export_verilog(design(m.finish()))


def test_yosys_and_nextpnr_report_resources_and_fmax(summer_verilog: dict[str, str], tmp_path: Path) -> None:
    synth.check(summer_verilog, "summer")
    report = synth.synthesize(summer_verilog, "summer", tmp_path)
    # 16 + 8 + 5 bits of registers at least; a memory, adders and comparators need LUTs.
    assert report.ffs >= 29 and report.luts > 0
    fmax = synth.place_and_route("summer", tmp_path)
    assert 10 < fmax < 1000
    path = synth.critical_path(tmp_path)  # the path that sets the Fmax, from and to registers
    assert path.cells > 0 and path.logic_ns > 0 and path.routing_ns > 0
    assert 1000 / path.total_ns == pytest.approx(fmax, rel=1e-3)
    assert "$tr_io" not in path.start + path.end


def test_classic_abc_maps_the_same_design(summer_verilog: dict[str, str], tmp_path: Path) -> None:
    """The flow for netlists ABC9 cannot finish: same registers, LUT4s from classic ABC, still placeable."""
    report = synth.synthesize(summer_verilog, "summer", tmp_path, lut_mapper="abc")
    assert report.ffs >= 29 and report.luts > 0
    assert 10 < synth.place_and_route("summer", tmp_path) < 1000
    with pytest.raises(InternalError, match="LUT mapper"):
        synth.synthesize(summer_verilog, "summer", tmp_path, lut_mapper="vpr")
