"""mlp and lenet, int8 and f32, on the fpga target against the reference interpreter."""

from __future__ import annotations

import pytest
from fpga_models import calibration, compile_sample, options

import compiler
from compiler.artifact import random_inputs

CASES = [("mlp", "int8", 256), ("lenet", "int8-per-channel", 4096), ("mlp", None, 512), ("lenet", None, 8192)]


@pytest.mark.parametrize("sample, scheme, reuse", CASES)
def test_matches_interpreter_and_schedule(tmp_path_factory, sample, scheme, reuse) -> None:
    cal = calibration(sample, tmp_path_factory.getbasetemp()) if scheme else None
    artifact = compile_sample(sample, options(reuse, scheme, cal))
    result = compiler.check(artifact, random_inputs(artifact.signature, seed=5))
    if scheme:
        assert result.max_abs_err == 0.0  # integer datapath: bit-exact with the quantized reference
    else:
        assert result.max_abs_err <= 1e-4
    report = artifact.report
    assert report["cycles"] == report["latency_cycles"]  # the simulator spends what the schedule says
    assert report["latency_s"] == pytest.approx(report["cycles"] / report["clock_hz"])
    assert report["mode"] in ("dataflow", "time-multiplexed") and report["mode_reason"] != "requested"
    layers = report["layers"]
    assert all(layer["ii"] >= 1 and layer["latency"] > 0 for layer in layers)
    assert sum(layer["dsp"] for layer in layers) >= 1
    if report["mode"] == "dataflow":
        assert report["dsp"] == sum(layer["dsp"] for layer in layers)
        assert report["bram"] == sum(layer["bram"] for layer in layers)


def test_reuse_factor_trades_latency_for_dsps(tmp_path_factory) -> None:
    cal = calibration("mlp", tmp_path_factory.getbasetemp())
    fast, slow = (compile_sample("mlp", options(r, "int8", cal, mode="dataflow")).report for r in (1024, 8192))
    assert fast["latency_cycles"] < slow["latency_cycles"]
    assert fast["dsp"] > slow["dsp"]
    w1 = {r["name"]: r for r in fast["layers"]}["w1"]
    # 784 * 128 MACs / 1024 wants 98 lanes along the 128 outputs; the largest divisor of 128 below is 64
    assert w1["reuse_factor"] == 1024 and w1["lanes"] == 64


def test_time_multiplexing_when_dataflow_does_not_fit(tmp_path_factory) -> None:
    cal = calibration("mlp", tmp_path_factory.getbasetemp())
    report = compile_sample("mlp", options(16, "int8", cal)).report
    assert report["mode"] == "time-multiplexed"
    assert report["latency_cycles"] == report["interval_cycles"]
    assert report["latency_cycles"] == sum(layer["latency"] for layer in report["layers"])
