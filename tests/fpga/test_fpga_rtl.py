"""The FPGA target's Verilog: lint, Verilator runs bit-exact with the quantized reference, cycles as scheduled.

Two Verilator builds in all (cached by content): int8 mlp at reuse factor
256 (time-multiplexed, as asked; 128 lanes on fc1) and int8 lenet at 100000
(a small dataflow design: convolutions, poolings and dense layers).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fpga_models import ROOT, calibration, compile_sample, options

from backends.fpga.rtl.layout import Layout, PhysicalDim
from compiler import interpreter
from compiler.artifact import random_inputs
from compiler.cli import main
from compiler.diagnostics import LoomError
from compiler.model import find_model

CASES = {"mlp": ("int8", 256, "time-multiplexed"), "lenet": ("int8", 100_000, "dataflow")}


@pytest.fixture(scope="module", params=sorted(CASES))
def compiled(request, tmp_path_factory):
    sample = request.param
    scheme, reuse, mode = CASES[sample]
    artifact = compile_sample(sample, options(reuse, scheme, calibration(sample, tmp_path_factory.getbasetemp()),
                                              mode=mode))
    assert artifact.report["mode"] == mode
    return artifact


def test_lint_clean(compiled) -> None:
    compiled.rtl.lint()  # verilator --lint-only -Wall; raises with its messages


def test_verilator_matches_reference_and_schedule(compiled) -> None:
    """The RTL region's integers equal the simulator's, and the host computes the float
    edges (quantize, dequantize, softmax) as numpy does, so both runs' outputs are the
    interpreter's bit for bit."""
    inputs = random_inputs(compiled.signature, seed=5)
    outputs = compiled.run_rtl(**inputs)
    simulated = compiled.run(**inputs)
    reference = interpreter.run_model(find_model(compiled.reference_module, None), dict(inputs))
    for name, want in reference.items():
        assert np.array_equal(simulated[name], want), name
        assert np.array_equal(outputs[name], want), name
    report = compiled.report
    assert report["rtl_cycles"] == report["rtl_expected_cycles"]  # the design spends what the schedule says
    assert report["rtl_total_cycles"] == pytest.approx(report["latency_cycles"], rel=0.05)
    assert report["rtl_cycles"] > 0.8 * report["latency_cycles"]  # the integer engines are the bulk of the work


def test_emit_verilog_directory(tmp_path_factory, tmp_path) -> None:
    cal = calibration("mlp", tmp_path_factory.getbasetemp())
    argv = ["compile", str(ROOT / "samples/mlp.loom"), "--target", "fpga", "--quantize", "int8", "--calibration", cal,
            "-X", "reuse_factor=4096", "--emit", "verilog", "-o", str(tmp_path / "rtl")]
    assert main(argv) == 0
    out = tmp_path / "rtl"
    names = (out / "filelist.f").read_text().split()
    assert "loom_fpga.sv" in names and all((out / n).is_file() for n in names)
    report = json.loads((out / "report.json").read_text())
    assert [e["name"] for e in report["engines"]] == ["w1", "w2"] and report["rtl_cycles"] > 0
    weights = sorted(p.name for p in out.glob("w1_q_b*.hex"))
    assert weights and len((out / weights[0]).read_text().split()) * len(weights) >= 784 * 128
    assert "ENABLE_INITIAL_MEM_" in (out / "README.md").read_text() and (out / "testbench.cpp").is_file()


def test_float_model_has_no_integer_region() -> None:
    artifact = compile_sample("mlp", options(512))
    with pytest.raises(LoomError, match="no integer loop nests"):
        _ = artifact.rtl


def test_layout_places_elements_in_cyclic_banks() -> None:
    layout = Layout("t", (2, 6), 8, (PhysicalDim(2, 1), PhysicalDim(6, 3)), False)
    bank, row = layout.place(np.arange(12))
    assert bank.tolist() == [0, 1, 2] * 4 and row.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    images = layout.images(np.arange(12).reshape(2, 6))
    assert [b.tolist() for b in images] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
