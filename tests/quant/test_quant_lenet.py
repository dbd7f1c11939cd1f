"""LeNet quantized with calibration on random images: integer convolutions
through the CPU, output SQNR against the float model on fresh inputs, and
the size of the int8 parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import compiler
from backends.base import CompileOptions
from backends.cpu import CpuBackend
from compiler.api import load_module, model_pipeline, select_model
from compiler.artifact import random_inputs
from compiler.context import make_context
from compiler.interpreter import interpret
from compiler.mlir import parse_mlir
from compiler.pass_manager import build_pipeline
from dialects import nn, quant
from passes.quant_calibration import sqnr_db
from passes.quantize import quant_report

LENET = Path(__file__).resolve().parents[2] / "samples" / "lenet.loom"
CALIBRATION_SAMPLES = 16
TEST_SEEDS = range(100, 112)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    path = tmp_path_factory.mktemp("lenet") / "calibration.npz"
    np.savez(path, x=np.random.default_rng(1).standard_normal((CALIBRATION_SAMPLES, 1, 1, 28, 28)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def float_model():
    return compiler.compile(LENET, target="interp")


def quantized(calibration, scheme: str):
    options = CompileOptions(quantize=scheme, calibration=str(calibration))
    return compiler.compile(LENET, target="cpu", options=options)


def test_int8_per_channel_lenet(calibration, float_model) -> None:
    artifact = quantized(calibration, "int8-per-channel")
    module = parse_mlir(artifact.stages.nn)
    kinds = {type(op) for op in module.walk()}
    assert {quant.Conv2dOp, quant.MatmulOp, quant.RequantizeOp} <= kinds
    assert not kinds & {nn.Conv2dOp, nn.MatmulOp}
    # activations stay i8 from the first convolution to the last matmul
    assert sum(isinstance(op, quant.QuantizeOp) for op in module.walk()) == 1

    report = quant_report(module)
    assert report["size_ratio"] <= 0.26
    assert [layer["layer"] for layer in report["layers"]] == ["conv1_w", "conv2_w", "fc1_w", "fc2_w", "fc3_w"]
    assert all(layer["sqnr_db"] > 30 for layer in report["layers"])

    references, outputs = [], []
    for seed in TEST_SEEDS:
        x = random_inputs(artifact.signature, seed)["x"]
        got = artifact.run(x=x)["logits"]
        np.testing.assert_array_equal(got, interpret(module, {"x": x})["logits"])
        outputs.append(got)
        references.append(float_model.run(x=x)["logits"])
    assert sqnr_db(np.array(references), np.array(outputs)) > 30


def test_int4_lenet_awq_beats_plain_rounding(calibration) -> None:
    reports = {scheme: quant_report(parse_mlir(quantized(calibration, scheme).stages.nn))
               for scheme in ("w4-group64", "w4-awq")}
    plain, awq = (reports[s]["output_sqnr_db"]["logits"] for s in ("w4-group64", "w4-awq"))
    assert 10 < plain < awq
    assert reports["w4-awq"]["packed_param_bytes"] < 0.2 * reports["w4-awq"]["float_param_bytes"]


def test_quantized_ir_roundtrips_at_every_stage(calibration) -> None:
    """Printed IR parses back to the same text after every pass, for a mix
    of int8 and weight-only int4 layers (int8 and grouped dequantization)."""
    options = CompileOptions(quantize="mixed", calibration=str(calibration))
    module = select_model(load_module(LENET), None)
    ctx = make_context()
    kinds = set()
    for p in build_pipeline(f"{model_pipeline(options)},{CpuBackend().pipeline(options)}"):
        p.apply(ctx, module)
        module.verify()
        kinds |= {type(op) for op in module.walk()}
        text = str(module)
        assert str(parse_mlir(text, p.name)) == text, f"round-trip changed the IR after {p.name}"
    assert {quant.DequantizeOp, quant.RequantizeOp, quant.Conv2dOp} <= kinds
