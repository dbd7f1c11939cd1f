"""The nn verifier rejects malformed ops written by hand or left by a broken pass."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects.builtin import TensorType, f32, i8

from compiler.diagnostics import LoomError
from compiler.mlir import parse_mlir
from dialects import nn


def module(body: str, args: str = "%x: tensor<2x3xf32>") -> str:
    return f"builtin.module {{\n  func.func @m({args}) {{\n{body}\n    func.return\n  }}\n}}"


@pytest.mark.parametrize(
    "body, message",
    [
        ("    %0 = nn.relu %x : (tensor<2x3xf32>) -> tensor<3x2xf32>", "does not match the inferred"),
        ("    %0 = nn.add %x, %x : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xi8>", "does not match"),
        ("    %0 = nn.matmul %x, %x : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>",
         "matmul inner dimensions differ"),
        ("    %0 = nn.softmax %x {axis = 5 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>", "out of range"),
        ("    %0 = nn.reshape %x {shape = array<i64: 4, 2>} : (tensor<2x3xf32>) -> tensor<4x2xf32>",
         "cannot reshape"),
        ("    %0 = nn.transpose %x {perm = array<i64: 0, 0>} : (tensor<2x3xf32>) -> tensor<2x2xf32>",
         "not a permutation"),
        ("    %0 = nn.maxpool2d %x {kernel = array<i64: 2, 2>, stride = array<i64: 2, 2>, "
         "padding = array<i64: 0, 0>} : (tensor<2x3xf32>) -> tensor<1x1xf32>", "rank-4"),
        ("    %0 = nn.relu %x, %x : (tensor<2x3xf32>, tensor<2x3xf32>) -> tensor<2x3xf32>", "takes one operand"),
    ],
)
def test_verifier_rejects(body: str, message: str) -> None:
    with pytest.raises(LoomError, match="invalid IR") as info:
        parse_mlir(module(body))
    assert message in info.value.message


def test_verifier_rejects_constant_of_wrong_type() -> None:
    text = module('    %0 = nn.constant {value = dense<1.0> : tensor<2xf32>} : tensor<3xf32>', args="")
    with pytest.raises(LoomError, match="value type must equal"):
        parse_mlir(text)


def test_well_formed_ops_verify() -> None:
    body = (
        "    %0 = nn.softmax %x {axis = 1 : i64} : (tensor<2x3xf32>) -> tensor<2x3xf32>\n"
        "    %1 = nn.sum %0 {axes = array<i64: 0>, keepdims = false} : (tensor<2x3xf32>) -> tensor<3xf32>"
    )
    parse_mlir(module(body))


def test_make_canonicalises_params() -> None:
    x = nn.ConstantOp(np.zeros((2, 3, 4)), f32)
    op = nn.SoftmaxOp.make([x], axis=-1)
    assert op.params() == {"axis": 2}
    pool = nn.MaxPool2dOp.make([nn.ConstantOp(np.zeros((1, 1, 8, 8)), f32)], kernel=2)
    assert pool.params() == {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]}
    assert pool.result.type == TensorType(f32, [1, 1, 4, 4])


def test_mixed_dtypes_are_rejected() -> None:
    a = nn.ConstantOp(np.zeros(3), f32)
    b = nn.ConstantOp(np.zeros(3), i8)
    with pytest.raises(nn.ShapeError, match="different dtypes"):
        nn.AddOp.make([a, b])


def test_dense_roundtrip_of_every_dtype() -> None:
    values = np.array([[1.5, -2.0], [0.25, 3.0]], dtype=np.float32)
    for name, dtype in nn.DTYPES.items():
        expected = values.astype(nn.numpy_dtype(dtype))
        if name == "bf16":
            expected = nn.round_to_bf16(values)
        np.testing.assert_array_equal(nn.array_from_dense(nn.dense_from_array(values, dtype)), expected)
