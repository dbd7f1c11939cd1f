"""The quant dialect: its type attribute, op verifiers, and the numpy
semantics every target must reproduce (rounding, fixed-point multipliers)."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects.builtin import f32, i8, i32
from xdsl.utils.exceptions import VerifyException

from compiler.diagnostics import LoomError
from compiler.mlir import parse_mlir
from dialects import nn, quant
from dialects.nn import ShapeError, tensor

UNIFORM = (
    "#quant.uniform<i8, bits = 4, scale = dense<[[0.5, 0.25], [1.0, 2.0]]> : tensor<2x2xf32>, "
    "zero_point = dense<[[0, -1], [3, 7]]> : tensor<2x2xi32>, block = [16, 1]>"
)


def module_text(quant_type: str) -> str:
    return f"""
builtin.module {{
  func.func @m(%q: tensor<20x2xi8>) -> tensor<20x2xf32> attributes {{loom.model, loom.inputs = ["q"], loom.outputs = ["y"]}} {{
    %y = quant.dequantize %q {{quant_type = {quant_type}}} : (tensor<20x2xi8>) -> tensor<20x2xf32>
    func.return %y : tensor<20x2xf32>
  }}
}}"""


def test_uniform_type_prints_and_parses_back() -> None:
    module = parse_mlir(module_text(UNIFORM))
    assert str(parse_mlir(str(module))) == str(module)
    (op,) = [o for o in module.walk() if isinstance(o, quant.DequantizeOp)]
    t = op.params()["quant_type"]
    assert t.bits.data == 4 and t.block_sizes() == [16, 1] and t.value_range() == (-8, 7)
    np.testing.assert_array_equal(t.zero_points(), [[0, -1], [3, 7]])
    assert t.block_roles([20, 2]) == ["group", "each"]


def test_blocks_must_fit_the_tensor() -> None:
    # 20 rows in blocks of 8 need 3 scale rows, not 2
    with pytest.raises(LoomError, match=r"expected \[3, 2\]"):
        parse_mlir(module_text(UNIFORM.replace("[16, 1]", "[8, 1]")))


@pytest.mark.parametrize(
    "scale, zero_point, bits, message",
    [
        (0.0, 0, 8, "finite and positive"),
        (np.nan, 0, 8, "finite and positive"),
        (0.1, 8, 4, r"zero points must lie in \[-8, 7\]"),
        (0.1, 1, 32, "be 0 for i32"),
    ],
)
def test_uniform_type_rejects_bad_params(scale, zero_point, bits, message) -> None:
    with pytest.raises(VerifyException, match=message):
        quant.UniformQuantAttr.get(scale, zero_point, bits)


def test_ops_check_their_operands() -> None:
    x8, x32, xf = (nn.ConstantOp(np.zeros((2, 4)), t) for t in (i8, i32, f32))
    w8 = nn.ConstantOp(np.zeros((4, 3)), i8)
    with pytest.raises(ShapeError, match="expects i8 values"):
        quant.MatmulOp.make([xf, w8])
    with pytest.raises(ShapeError, match="inner dimensions differ"):
        quant.MatmulOp.make([w8, x8])
    with pytest.raises(ShapeError, match="outside the i8 range"):
        quant.MatmulOp.make([x8, w8], lhs_zero_point=200)
    with pytest.raises(ShapeError, match="one per index of dim 1"):
        quant.RequantizeOp.make([x32], multiplier=[1 << 30] * 3, shift=[31] * 3, axis=1)
    with pytest.raises(ShapeError, match=r"shifts in \[1, 62\]"):
        quant.RequantizeOp.make([x32], multiplier=[1 << 30], shift=[0])
    with pytest.raises(ShapeError, match="produces i8"):
        quant.QuantizeOp.make([xf], quant_type=quant.UniformQuantAttr.get(0.5, 0, 32))
    assert quant.MatmulOp.make([x8, w8]).result.type == tensor(i32, [2, 3])
    x = nn.ConstantOp(np.zeros((1, 4, 6, 6)), i8)
    w = nn.ConstantOp(np.zeros((8, 2, 3, 3)), i8)
    with pytest.raises(ShapeError, match="bias"):
        quant.Conv2dOp.make([x, w, nn.ConstantOp(np.zeros(8), i8)], groups=2)
    conv = quant.Conv2dOp.make([x, w, nn.ConstantOp(np.zeros(8), i32)], groups=2, stride=2, padding=1)
    assert conv.result.type == tensor(i32, [1, 8, 3, 3])


# --------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------


def test_quantize_rounds_half_to_even_and_saturates() -> None:
    t = quant.UniformQuantAttr.get(0.5, 3, 8)
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 1000.0, -1000.0, np.inf, -np.inf, np.nan], np.float32)
    np.testing.assert_array_equal(quant.quantize_values(x, t), [3, 5, 5, 3, 1, 127, -128, 127, -128, -128])


def test_dequantize_per_group_with_a_partial_last_group() -> None:
    scales = np.array([[1.0], [10.0], [100.0]], np.float32)
    t = quant.UniformQuantAttr.get(scales, np.array([[0], [1], [2]]), 4, [2, 1])
    q = np.arange(5).reshape(5, 1)
    np.testing.assert_array_equal(quant.dequantize_values(q, t), [[0], [1], [10], [20], [200]])


def test_rounding_shift_rounds_ties_away_from_zero() -> None:
    product = np.array([3, -3, 5, -5, 6, -6, 7, -7, 0])
    np.testing.assert_array_equal(quant.rounding_shift(product, 1), [2, -2, 3, -3, 3, -3, 4, -4, 0])
    np.testing.assert_array_equal(quant.rounding_shift(product, 2), [1, -1, 1, -1, 2, -2, 2, -2, 0])


def test_rounding_shift_matches_exact_rational_rounding() -> None:
    rng = np.random.default_rng(0)
    product = rng.integers(-(1 << 61), 1 << 61, 2000)
    shift = rng.integers(1, 63, 2000)
    got = quant.rounding_shift(product, shift)
    for p, s, g in zip(product.tolist(), shift.tolist(), got.tolist()):
        magnitude = (abs(p) + (1 << (s - 1))) >> s  # round half up on |p|
        assert g == (magnitude if p >= 0 else -magnitude)


def test_fixed_point_multiplier_has_31_bits_of_precision() -> None:
    real = np.logspace(-9, 8, 500)  # 2^-30 .. 2^27
    multiplier, shift = quant.fixed_point(real)
    assert np.all((multiplier >= 1 << 30) & (multiplier < 1 << 31))
    approx = multiplier.astype(np.float64) * np.exp2(-shift.astype(np.float64))
    assert np.max(np.abs(approx / real - 1)) <= 2.0**-31
    tiny_multiplier, tiny_shift = quant.fixed_point(np.array([1e-30, 0.0]))
    np.testing.assert_array_equal(tiny_multiplier, [0, 0])
    assert np.all(tiny_shift == quant.MAX_SHIFT)
    with pytest.raises(ValueError, match="too large"):
        quant.fixed_point(np.array([2.0**31]))


def test_requantize_per_channel_clamps_and_adds_the_zero_point() -> None:
    acc = np.array([[100, 100], [-100, -100], [1 << 30, -(1 << 30)]])
    params = {"multiplier": [1 << 30, 3 << 29], "shift": [31, 32], "axis": 1, "zero_point": -5, "clamp": [-20, 127]}
    # channel 0 multiplies by 1/2, channel 1 by 3/8
    np.testing.assert_array_equal(quant.requantize_values(acc, params), [[45, 33], [-20, -20], [127, -20]])
