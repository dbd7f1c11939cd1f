"""Quantization on a real data set: the digits classifier trained with
scikit-learn (fixture in conftest.py), compiled for the CPU in fp32 and
quantized, scored on the held-out test set. The int8 CPU results are also
reproduced bit for bit by an integer implementation written here with
numpy alone, from the parameters in the quantized IR."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.ir import SSAValue

import compiler
from backends.base import CompileOptions
from compiler.mlir import parse_mlir
from compiler.model import find_model
from dialects import nn, quant
from passes.quantize import quant_report


_ARTIFACTS: dict[tuple[str | None, str | None], object] = {}


def _compile(digits, scheme: str | None, config: str | None = None):
    """The digits model compiled for the CPU, once per scheme and config."""
    if (scheme, config) not in _ARTIFACTS:
        options = CompileOptions(quantize=scheme, calibration=str(digits.calibration) if scheme else None,
                                 quant_config=config)
        _ARTIFACTS[scheme, config] = compiler.compile(digits.model, target="cpu", weights=digits.weights,
                                                      options=options)
    return _ARTIFACTS[scheme, config]


def predictions(artifact, x: np.ndarray) -> np.ndarray:
    return np.array([artifact.run(x=row[None])["logits"][0] for row in x])


def accuracy(digits, scheme: str | None, config: str | None = None) -> float:
    logits = predictions(_compile(digits, scheme, config), digits.test_x)
    return float(np.mean(np.argmax(logits, axis=1) == digits.test_y))


def test_the_float_model_is_trained(digits) -> None:
    assert accuracy(digits, None) >= 0.95


@pytest.mark.parametrize("scheme", ["int8", "int8-per-channel"])
def test_int8_is_within_one_point_of_fp32(digits, scheme) -> None:
    assert accuracy(digits, scheme) >= accuracy(digits, None) - 0.01


@pytest.mark.parametrize("scheme", ["w4-group32", "w4-group64", "w4-awq"])
def test_w4_is_within_three_points_of_fp32(digits, scheme) -> None:
    assert accuracy(digits, scheme) >= accuracy(digits, None) - 0.03


def test_awq_is_no_worse_than_plain_w4(digits) -> None:
    assert accuracy(digits, "w4-awq") >= accuracy(digits, "w4-group64")
    awq = quant_report(parse_mlir(_compile(digits, "w4-awq").stages.nn))
    plain = quant_report(parse_mlir(_compile(digits, "w4-group64").stages.nn))
    assert awq["output_sqnr_db"]["logits"] > plain["output_sqnr_db"]["logits"]


def test_mixed_precision_honours_the_config_and_the_budget(digits, tmp_path) -> None:
    config = tmp_path / "q.toml"
    config.write_text('bits = 8.0\n[layers]\nw1 = "fp32"\n')
    report = quant_report(parse_mlir(_compile(digits, "mixed", str(config)).stages.nn))
    precisions = {layer["layer"]: layer["precision"] for layer in report["layers"]}
    assert report["float_layers"] == "w1" and "w1" not in precisions
    # a budget of 8 bits keeps every scored layer at int8
    assert precisions == {"w2": "int8 per-channel", "w3": "int8 per-channel"}
    assert accuracy(digits, "mixed", str(config)) >= accuracy(digits, None) - 0.01


# --------------------------------------------------------------------------
# An independent integer implementation of the int8 graph
# --------------------------------------------------------------------------


def _only_user(value: SSAValue):
    (use,) = value.uses
    return use.operation


def requantize(acc: np.ndarray, p: dict) -> np.ndarray:
    """acc * M / 2^shift rounded half away from zero, plus the zero point, clamped."""
    product = acc * np.asarray(p["multiplier"], np.int64)
    shift = np.asarray(p["shift"], np.int64)
    magnitude = (np.abs(product) + (np.int64(1) << (shift - 1))) >> shift
    return np.clip(np.sign(product) * magnitude + p["zero_point"], *p["clamp"])


def integer_forward(module, x: np.ndarray) -> np.ndarray:
    """The quantized MLP on a batch of rows: quantize, then per layer an
    integer matmul with zero points plus the i32 bias, requantized for the
    next layer or, at the end, converted to float32 and scaled."""
    f = find_model(module, None)
    (quantize,) = [op for op in f.walk() if isinstance(op, quant.QuantizeOp)]
    t = quantize.params()["quant_type"]
    scale, zero_point = np.float32(t.scales()), np.float32(t.zero_points())
    q = np.clip(np.rint(x.astype(np.float32) / scale) + zero_point, -128, 127).astype(np.int64)
    for matmul in [op for op in f.walk() if isinstance(op, quant.MatmulOp)]:
        p = matmul.params()
        weights = matmul.operands[1].owner.array().astype(np.int64)
        add = _only_user(matmul.result)
        bias = add.operands[1].owner.array().astype(np.int64)
        acc = (q - p["lhs_zero_point"]) @ (weights - p["rhs_zero_point"]) + bias
        after = _only_user(add.result)
        if isinstance(after, quant.RequantizeOp):
            q = requantize(acc, after.params())
        else:
            assert isinstance(after, quant.DequantizeOp)
            scales = after.params()["quant_type"].scales().reshape(-1).astype(np.float32)
            return acc.astype(np.float32) * scales
    raise AssertionError("no dequantized output")


@pytest.mark.parametrize("scheme", ["int8", "int8-per-channel"])
def test_int8_cpu_results_equal_a_numpy_integer_implementation(digits, scheme) -> None:
    artifact = _compile(digits, scheme)
    module = parse_mlir(artifact.stages.nn)
    assert not [op for op in module.walk() if isinstance(op, nn.MatmulOp)]
    expected = integer_forward(module, digits.test_x)
    np.testing.assert_array_equal(predictions(artifact, digits.test_x), expected)
