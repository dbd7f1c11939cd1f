"""Lower quant ops to `linalg.generic`s doing integer arithmetic.

The generated bodies compute exactly what `dialects/quant.py` defines, so a
quantized model gives the same integers on every target as in the reference
interpreter: matmul and convolution multiply zero-point-shifted i8 values
and accumulate in i32; requantization multiplies by a 31-bit fixed-point
multiplier in i64 and rounds with an add and an arithmetic shift; only
quantize, dequantize and the f32 requantization of imported ONNX models
(`quant.requantize_float`) touch floats. Per-block scales, zero points and
per-channel multipliers become constant tensors read through indexing maps
(`d floordiv block` for a grouped dim), never expanded to the data's shape.

`convert-nn-to-linalg` applies these patterns together with the nn ones;
this pass applies them alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects import arith, math
from xdsl.dialects.builtin import ModuleOp, f32, i8, i32, i64
from xdsl.ir import Attribute, SSAValue
from xdsl.ir.affine import AffineExpr, AffineMap
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from dialects import nn, quant
from passes.convert_nn_to_linalg import conv2d_generic, matmul_generic, replace_lowered, result_type
from passes.linalg_builders import ScalarBuilder, affine_map, dims, elementwise, identity_map, shape_of


def _constant(rewriter: PatternRewriter, array: np.ndarray, element_type: Attribute) -> SSAValue:
    return rewriter.insert(nn.ConstantOp(array, element_type)).result


@dataclass(frozen=True)
class _BodyArg:
    index: int


class BlockParams:
    """The scale and zero point of one element of a quantized tensor, as body
    values: literals for a per-tensor type, otherwise constant tensors the
    generic reads through a map from the data's index to its block's (zero
    points that are all 0 stay a literal)."""

    def __init__(self, rewriter: PatternRewriter, quant_type: quant.UniformQuantAttr, shape: Sequence[int]):
        self.inputs: list[tuple[SSAValue, AffineMap]] = []
        scales, zero_points = quant_type.scales(), quant_type.zero_points()
        if quant_type.per_tensor:
            self._scale, self._zero_point = float(scales), int(zero_points)
            return
        rank = len(shape)
        results = [
            AffineExpr.constant(0) if role == "all" else d if role == "each" else d // size
            for role, d, size in zip(quant_type.block_roles(shape), dims(rank), quant_type.block_sizes())
        ]
        block_map = affine_map(rank, results)
        self._scale = self._read(_constant(rewriter, scales, f32), block_map)
        self._zero_point = self._read(_constant(rewriter, zero_points, i32), block_map) if zero_points.any() else 0

    def _read(self, value: SSAValue, block_map: AffineMap) -> _BodyArg:
        self.inputs.append((value, block_map))
        return _BodyArg(len(self.inputs) - 1)

    def values(self, args: Sequence[SSAValue]) -> tuple[SSAValue | float, SSAValue | int]:
        """(scale, zero point), given the body arguments that follow the data's."""
        return tuple(args[v.index] if isinstance(v, _BodyArg) else v for v in (self._scale, self._zero_point))


def _to_float(s: ScalarBuilder, value: SSAValue | int) -> SSAValue | float:
    if isinstance(value, int):
        return float(value)
    return s.emit(arith.SIToFPOp(value, f32))


class LowerQuantize(RewritePattern):
    """quantize: x / scale, round half to even, add the zero point, clamp
    (maxnum/minnum, so NaN lands on the lowest value), convert."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.QuantizeOp, rewriter: PatternRewriter):
        (x,) = op.operands
        shape = shape_of(x)
        quant_type = op.params()["quant_type"]
        lo, hi = quant_type.value_range()
        params = BlockParams(rewriter, quant_type, shape)

        def body(s: ScalarBuilder, value: SSAValue, *args: SSAValue) -> SSAValue:
            scale, zero_point = params.values(args)
            rounded = s.emit(math.RoundEvenOp(s.div(value, scale)))
            shifted = s.add(rounded, _to_float(s, zero_point))
            low = s.emit(arith.MaxnumfOp(shifted, s.constant(lo, f32)))
            clamped = s.emit(arith.MinnumfOp(low, s.constant(hi, f32)))
            return s.emit(arith.FPToSIOp(clamped, quant_type.storage))

        inputs = [(x, identity_map(len(shape))), *params.inputs]
        replace_lowered(rewriter, op, elementwise(rewriter, inputs, shape, quant_type.storage, body))


class LowerDequantize(RewritePattern):
    """dequantize: subtract the zero point in i32, convert, multiply by the scale."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.DequantizeOp, rewriter: PatternRewriter):
        (q,) = op.operands
        shape = shape_of(q)
        quant_type = op.params()["quant_type"]
        params = BlockParams(rewriter, quant_type, shape)

        def body(s: ScalarBuilder, value: SSAValue, *args: SSAValue) -> SSAValue:
            scale, zero_point = params.values(args)
            wide = s.cast(value, i32)
            if not isinstance(zero_point, int) or zero_point:
                wide = s.sub(wide, zero_point)
            return s.mul(s.emit(arith.SIToFPOp(wide, f32)), scale)

        inputs = [(q, identity_map(len(shape))), *params.inputs]
        replace_lowered(rewriter, op, elementwise(rewriter, inputs, shape, f32, body))


def shifted_product(lhs_zero_point: int, rhs_zero_point: int):
    """The body acc + (x - zx) * (y - zy) on i8 values widened to the i32 accumulator."""

    def body(s: ScalarBuilder, x: SSAValue, y: SSAValue, acc: SSAValue) -> SSAValue:
        factors = []
        for value, zero_point in ((x, lhs_zero_point), (y, rhs_zero_point)):
            wide = s.cast(value, acc.type)
            factors.append(s.sub(wide, zero_point) if zero_point else wide)
        return s.add(acc, s.mul(*factors))

    return body


class LowerQuantMatmul(RewritePattern):
    """quant.matmul: nn.matmul's loop nest with an i32 zero-point-shifted body."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.MatmulOp, rewriter: PatternRewriter):
        a, b = op.operands
        p = op.params()
        body = shifted_product(p["lhs_zero_point"], p["rhs_zero_point"])
        replace_lowered(rewriter, op, matmul_generic(rewriter, a, b, result_type(op).get_shape(), i32, body))


class LowerQuantConv2d(RewritePattern):
    """quant.conv2d: nn.conv2d's loop nest on the input padded with its zero
    point, with the same body as quant.matmul."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.Conv2dOp, rewriter: PatternRewriter):
        x, w, *bias = op.operands
        p = op.params()
        body = shifted_product(p["input_zero_point"], p["weight_zero_point"])
        result = conv2d_generic(
            rewriter, x, w, bias[0] if bias else None, p, result_type(op).get_shape(), i32,
            p["input_zero_point"], body,
        )
        replace_lowered(rewriter, op, result)


def _with_channel_vectors(
    rewriter: PatternRewriter, acc: SSAValue, axis: int, vectors: list[tuple[np.ndarray, Attribute]]
) -> list[tuple[SSAValue, AffineMap]]:
    """The accumulator, read point by point, then per-channel constants read
    along `axis` (none for a per-tensor op)."""
    rank = len(shape_of(acc))
    channel = affine_map(rank, [AffineExpr.dimension(axis)])
    return [(acc, identity_map(rank))] + [(_constant(rewriter, array, t), channel) for array, t in vectors]


class LowerRequantize(RewritePattern):
    """requantize in i64: acc * multiplier, plus 2^(shift-1), minus one when
    negative (the product shifted right by 63), shifted right by `shift`;
    then the zero point and the clamp. Per-channel multipliers and shifts are
    i32 tensors read along the channel dim."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.RequantizeOp, rewriter: PatternRewriter):
        (acc,) = op.operands
        p = op.params()
        per_channel = len(p["multiplier"]) > 1
        vectors = [(np.array(p["multiplier"]), i32), (np.array(p["shift"]), i32)] if per_channel else []
        inputs = _with_channel_vectors(rewriter, acc, p["axis"], vectors)
        lo, hi = p["clamp"]

        def body(s: ScalarBuilder, value: SSAValue, *args: SSAValue) -> SSAValue:
            if per_channel:
                multiplier, shift = s.cast(args[0], i64), s.cast(args[1], i64)
                half = s.emit(arith.ShLIOp(s.constant(1, i64), s.sub(shift, 1)))
            else:
                multiplier, shift = s.constant(p["multiplier"][0], i64), s.constant(p["shift"][0], i64)
                half = s.constant(1 << (p["shift"][0] - 1), i64)
            product = s.mul(s.cast(value, i64), multiplier)
            sign = s.emit(arith.ShRSIOp(product, s.constant(63, i64)))
            rounded = s.emit(arith.ShRSIOp(s.add(s.add(product, half), sign), shift))
            low = s.max(s.add(rounded, p["zero_point"]), lo)
            return s.emit(arith.MinSIOp(low, s.constant(hi, i64)))

        replace_lowered(rewriter, op, elementwise(rewriter, inputs, shape_of(acc), i8, body))


class LowerFloatRequantize(RewritePattern):
    """requantize_float: convert to f32, multiply by the scale, clamp at the
    bounds less the zero point (maxnum/minnum), round half to even, convert
    back and add the zero point. Per-channel scales are an f32 tensor read
    along the channel dim."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: quant.FloatRequantizeOp, rewriter: PatternRewriter):
        (acc,) = op.operands
        p = op.params()
        per_channel = len(p["scale"]) > 1
        vectors = [(np.array(p["scale"], np.float32), f32)] if per_channel else []
        inputs = _with_channel_vectors(rewriter, acc, p["axis"], vectors)
        zero_point = p["zero_point"]
        lo, hi = p["clamp"]

        def body(s: ScalarBuilder, value: SSAValue, *args: SSAValue) -> SSAValue:
            scale = args[0] if per_channel else s.constant(p["scale"][0], f32)
            product = s.mul(s.emit(arith.SIToFPOp(value, f32)), scale)
            low = s.emit(arith.MaxnumfOp(product, s.constant(lo - zero_point, f32)))
            clamped = s.emit(arith.MinnumfOp(low, s.constant(hi - zero_point, f32)))
            rounded = s.emit(arith.FPToSIOp(s.emit(math.RoundEvenOp(clamped)), i32))
            return s.cast(s.add(rounded, zero_point), i8)

        replace_lowered(rewriter, op, elementwise(rewriter, inputs, shape_of(acc), i8, body))


QUANT_LOWERINGS: tuple[RewritePattern, ...] = (
    LowerQuantize(),
    LowerDequantize(),
    LowerQuantMatmul(),
    LowerQuantConv2d(),
    LowerRequantize(),
    LowerFloatRequantize(),
)


class ConvertQuantToLinalgPass(ModulePass):
    """Lower quant ops to linalg.generics on integers (convert-nn-to-linalg includes this)."""

    name = "convert-quant-to-linalg"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(
            GreedyRewritePatternApplier(list(QUANT_LOWERINGS)), apply_recursively=False
        ).rewrite_module(op)
