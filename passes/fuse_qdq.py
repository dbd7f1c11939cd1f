"""Integer arithmetic for QDQ models: the `fuse-qdq` pass.

Exporters and quantization tools write a quantized model in the QDQ form:
float operators between DequantizeLinear and QuantizeLinear, which say what
the integers mean but leave the arithmetic in float. Inference engines run
such a model on integers, and so does Loom after this pass:

    matmul(dequantize(a), dequantize(b))          -> dequantize(quant.matmul(a, b))
    conv2d(dequantize(x), dequantize(w), dequantize(bias))
                                                  -> dequantize(quant.conv2d(x, w, bias))
    dequantize(acc) + dequantize(bias)            -> dequantize(acc + bias)       (i32)
    quantize([relu](dequantize(acc)))             -> quant.requantize_float(acc)
    quantize(dequantize(q)), the same quantization -> q
    transpose/reshape/maxpool2d(dequantize(q))     -> dequantize(transpose/reshape/maxpool2d(q))

The accumulator of a product is dequantized at the scale f32(a_scale *
b_scale) and requantized by f32(that / y_scale), rounding half to even:
onnxruntime's arithmetic after its own QDQ fusion, so the integers agree
with it. Against the float graph taken literally, a value differs only
where float rounding in the sums moves it across a rounding boundary.

Only what integers express exactly is rewritten: i8 operands with one zero
point, a left operand (or convolution input) with one scale, weights with
one scale or one per output channel, biases at the accumulator's scale.
Everything else, such as group-wise int4 weights, stays in float.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType, i8, i32
from xdsl.ir import OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from dialects import nn, quant
from passes.quantize import per_axis_type

# Scales that agree to this relative difference (a few f32 roundings) are the same.
SCALE_RTOL = 1e-6
# quantize(dequantize(q)) gives back q unless (q - zero_point) * scale overflows f32.
MAX_ROUND_TRIP_SCALE = 1e30


def _shape(value: SSAValue) -> list[int]:
    assert isinstance(value.type, TensorType)
    return list(value.type.get_shape())


def _dequantize_of(value: SSAValue) -> quant.DequantizeOp | None:
    if isinstance(value, OpResult) and isinstance(value.op, quant.DequantizeOp):
        return value.op
    return None


def _quant_type(op: quant.QuantizeOp | quant.DequantizeOp) -> quant.UniformQuantAttr:
    return op.params()["quant_type"]


def _accumulator(value: SSAValue) -> bool:
    """Whether `value` holds the i32 sums of a quant.matmul or quant.conv2d,
    bias included: the values integer engines rescale in one step."""
    if not isinstance(value, OpResult):
        return False
    if isinstance(value.op, nn.AddOp):
        return any(_accumulator(operand) for operand in value.op.operands)
    return isinstance(value.op, quant.MatmulOp | quant.Conv2dOp)


def _channel_scales(quant_type: quant.UniformQuantAttr, shape: list[int]) -> tuple[int, np.ndarray] | None:
    """(axis, scales) when the scales are one value (axis 0) or vary along
    one dim only, one per index; None for any other layout."""
    if quant_type.per_tensor:
        return 0, quant_type.scales().reshape(1)
    roles = quant_type.block_roles(shape)
    varying = [d for d, role in enumerate(roles) if role != "all"]
    if not varying:
        return 0, quant_type.scales().reshape(1)
    if len(varying) == 1 and roles[varying[0]] == "each":
        return varying[0], quant_type.scales().reshape(-1)
    return None


@dataclass
class Integers:
    """A float value that is the dequantization of i8 integers with one zero
    point, and its scales along one dim."""

    values: SSAValue
    scales: np.ndarray
    zero_point: int


def _integers(value: SSAValue, axis: int | None) -> Integers | None:
    """`value` as Integers with scales along dim `axis` (None: one scale)."""
    dequantize = _dequantize_of(value)
    if dequantize is None:
        return None
    quant_type = _quant_type(dequantize)
    channels = _channel_scales(quant_type, _shape(value))
    zero_points = quant_type.zero_points().reshape(-1)
    if quant_type.storage != i8 or channels is None or np.any(zero_points != zero_points[0]):
        return None
    along, scales = channels
    if scales.size > 1 and along != axis:
        return None
    return Integers(dequantize.operands[0], scales, int(zero_points[0]))


def _accumulated(
    rewriter: PatternRewriter, op: nn.MatmulOp | nn.Conv2dOp, product: quant.MatmulOp | quant.Conv2dOp,
    scales: np.ndarray, axis: int,
) -> None:
    """Replace the float `op` by the dequantized i32 `product`."""
    shape = _shape(product.results[0])
    dequantize = quant.DequantizeOp.make([product], quant_type=per_axis_type(scales, shape, axis, 32))
    rewriter.replace(op, [product, dequantize])


class IntegerMatmul(RewritePattern):
    """matmul(dequantize(a), dequantize(b)), a per tensor and b per tensor
    or per column: quant.matmul, dequantized at f32(a_scale * b_scale)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.MatmulOp, rewriter: PatternRewriter):
        lhs, rhs = op.operands
        a = _integers(lhs, None)
        b = _integers(rhs, len(_shape(rhs)) - 1)
        if a is None or b is None:
            return
        product = quant.MatmulOp.make(
            [a.values, b.values], lhs_zero_point=a.zero_point, rhs_zero_point=b.zero_point
        )
        scales = np.float32(a.scales[0]) * b.scales.astype(np.float32)
        _accumulated(rewriter, op, product, scales, len(_shape(op.result)) - 1)


class IntegerConv2d(RewritePattern):
    """conv2d(dequantize(x), dequantize(w)[, dequantize(bias)]), x per
    tensor, w per tensor or per output channel, the bias i32 at the scale
    x_scale * w_scale: quant.conv2d, dequantized at that scale."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.Conv2dOp, rewriter: PatternRewriter):
        x_value, w_value, *bias_value = op.operands
        x = _integers(x_value, None)
        w = _integers(w_value, 0)
        if x is None or w is None:
            return
        channels = _shape(w_value)[0]
        scales = np.float32(x.scales[0]) * w.scales.astype(np.float32)
        bias = []
        if bias_value:
            dequantize = _dequantize_of(bias_value[0])
            if dequantize is None or _quant_type(dequantize).storage != i32:
                return
            bias_scales = _quant_type(dequantize).expanded(_shape(bias_value[0]))[0]
            if not np.allclose(bias_scales, np.broadcast_to(scales, (channels,)), rtol=SCALE_RTOL, atol=0):
                return
            bias.append(dequantize.operands[0])
        product = quant.Conv2dOp.make(
            [x.values, w.values, *bias], **op.params(),
            input_zero_point=x.zero_point, weight_zero_point=w.zero_point,
        )
        _accumulated(rewriter, op, product, scales, 1)


class IntegerBias(RewritePattern):
    """dequantize(acc) + dequantize(bias) of an accumulator and i32 values
    at the same scales (broadcast into the accumulator): the sum in i32,
    dequantized."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.AddOp, rewriter: PatternRewriter):
        for acc_value, bias_value in (op.operands, reversed(op.operands)):
            acc, bias = _dequantize_of(acc_value), _dequantize_of(bias_value)
            if acc is None or bias is None or _shape(acc_value) != _shape(op.result):
                continue
            acc_type, bias_type = _quant_type(acc), _quant_type(bias)
            if not _accumulator(acc.operands[0]) or bias_type.storage != i32:
                continue
            shape = _shape(acc_value)
            bias_scales = np.broadcast_to(bias_type.expanded(_shape(bias_value))[0], shape)
            if np.allclose(bias_scales, acc_type.expanded(shape)[0], rtol=SCALE_RTOL, atol=0):
                total = nn.AddOp.make([acc.operands[0], bias.operands[0]])
                rewriter.replace(op, [total, quant.DequantizeOp.make([total], quant_type=acc_type)])
                return


class FloatRequantize(RewritePattern):
    """quantize(dequantize(acc)) of an accumulator, dequantized per tensor
    or per channel, to one output scale: quant.requantize_float by the f32
    ratio of the scales. A ReLU in between raises the lower clamp to the
    output's zero point (the quantized 0)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.QuantizeOp, rewriter: PatternRewriter):
        out_type = _quant_type(op)
        value = op.operands[0]
        relu = isinstance(value, OpResult) and isinstance(value.op, nn.ReluOp)
        if relu:
            value = value.op.operands[0]
        dequantize = _dequantize_of(value)
        if dequantize is None or not out_type.per_tensor or not _accumulator(dequantize.operands[0]):
            return
        channels = _channel_scales(_quant_type(dequantize), _shape(value))
        if channels is None:
            return
        axis, scales = channels
        lo, hi = out_type.value_range()
        zero_point = int(out_type.zero_points())
        rewriter.replace(op, quant.FloatRequantizeOp.make(
            [dequantize.operands[0]], scale=scales.astype(np.float32) / out_type.scales().astype(np.float32),
            axis=axis, zero_point=zero_point, clamp=[max(lo, zero_point) if relu else lo, hi],
        ))


class DropRoundTrip(RewritePattern):
    """quantize(dequantize(q)) with the same quantization is q: each value
    comes back exactly."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.QuantizeOp, rewriter: PatternRewriter):
        dequantize = _dequantize_of(op.operands[0])
        if dequantize is None or _quant_type(dequantize) != _quant_type(op):
            return
        if np.max(_quant_type(op).scales()) >= MAX_ROUND_TRIP_SCALE:
            return
        rewriter.replace(op, [], [dequantize.operands[0]])


class HoistDequantize(RewritePattern):
    """Ops that only move or select elements commute with dequantization:
    transpose (permuting the scales), reshape (one scale) and max pooling
    (scales per batch or channel at most). Applied to the integers, they
    leave dequantize next to the op that consumes it."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.TransposeOp | nn.ReshapeOp | nn.MaxPool2dOp, rewriter: PatternRewriter):
        dequantize = _dequantize_of(op.operands[0])
        if dequantize is None:
            return
        quant_type = _quant_type(dequantize)
        if isinstance(op, nn.TransposeOp):
            quant_type = _transposed(quant_type, op.params()["perm"])
        elif not quant_type.per_tensor and (
            isinstance(op, nn.ReshapeOp) or quant_type.block_roles(_shape(op.operands[0]))[2:] != ["all", "all"]
        ):
            return
        moved = type(op).make([dequantize.operands[0]], **op.params())
        rewriter.replace(op, [moved, quant.DequantizeOp.make([moved], quant_type=quant_type)])


def _transposed(quant_type: quant.UniformQuantAttr, perm: list[int]) -> quant.UniformQuantAttr:
    if quant_type.per_tensor:
        return quant_type
    block = quant_type.block_sizes()
    return quant.UniformQuantAttr.get(
        np.transpose(quant_type.scales(), perm), np.transpose(quant_type.zero_points(), perm),
        quant_type.bits.data, [block[p] for p in perm],
    )


class FuseQdqPass(ModulePass):
    """Run QDQ models on integers: float matmul/conv2d between dequantize and quantize become quant ops."""

    name = "fuse-qdq"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(GreedyRewritePatternApplier([
            HoistDequantize(),
            DropRoundTrip(),
            IntegerMatmul(),
            IntegerConv2d(),
            IntegerBias(),
            FloatRequantize(),
        ])).rewrite_module(op)
