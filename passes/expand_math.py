"""Expand f32 `math.exp` and `math.tanh` into plain arithmetic.

LLVM has no vector form of `expf`/`tanhf` without a vector maths library, so
a loop calling them runs one element at a time through libm (gelu, sigmoid
and softmax are dominated by it). Written as arithmetic — range reduction to
[-ln2/2, ln2/2], a degree-6 polynomial (the classic Cephes `expf`
coefficients, about 1 ulp) and an exponent built with integer shifts — the
same loops vectorise. tanh is derived from exp without cancellation for large
|x|: tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|); its absolute
error stays around 1e-7.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, math
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, ModuleOp, f32, i32
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

LOG2E = 1.44269504088896341
LN2_HI = 0.693359375
LN2_LO = -2.12194440e-4
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
            1.6666665459e-1, 5.0000001201e-1)
EXP_MAX = 88.72283935546875  # above this expf overflows to inf
EXP_MIN = -87.33654475  # below this the result is (sub)normal-tiny; flushed to 2^-126 scale


class _Emitter:
    """Appends arith ops before `anchor`, one helper per operation."""

    def __init__(self, rewriter: PatternRewriter):
        self.rewriter = rewriter

    def add(self, op: Operation) -> SSAValue:
        self.rewriter.insert(op)
        return op.results[0]

    def const(self, value: float) -> SSAValue:
        return self.add(arith.ConstantOp(FloatAttr(value, f32)))

    def binary(self, cls: Callable[..., Operation], a: SSAValue, b: SSAValue | float) -> SSAValue:
        return self.add(cls(a, b if isinstance(b, SSAValue) else self.const(b)))

    def mul(self, a, b):
        return self.binary(arith.MulfOp, a, b)

    def add_(self, a, b):
        return self.binary(arith.AddfOp, a, b)

    def sub(self, a, b):
        return self.binary(arith.SubfOp, a, b)

    def select(self, predicate: str, a: SSAValue, b: SSAValue | float, if_true: SSAValue,
               if_false: SSAValue) -> SSAValue:
        rhs = b if isinstance(b, SSAValue) else self.const(b)
        return self.add(arith.SelectOp(self.add(arith.CmpfOp(a, rhs, predicate)), if_true, if_false))

    def exp(self, x: SSAValue) -> SSAValue:
        clamped = self.binary(arith.MaximumfOp, self.binary(arith.MinimumfOp, x, EXP_MAX), EXP_MIN)
        n = self.add(math.RoundEvenOp(self.mul(clamped, LOG2E)))
        r = self.sub(self.sub(clamped, self.mul(n, LN2_HI)), self.mul(n, LN2_LO))
        poly = self.const(EXP_POLY[0])
        for c in EXP_POLY[1:]:
            poly = self.add_(self.mul(poly, r), c)
        poly = self.add_(self.add_(self.mul(self.mul(poly, r), r), r), 1.0)
        # 2^n with n in [-126, 128): biased exponent shifted into place. n = 128
        # (x near EXP_MAX) is split as 2^(n-1) * 2 to stay representable.
        n_int = self.add(arith.FPToSIOp(self.sub(n, 1.0), i32))
        biased = self.add(arith.AddiOp(n_int, self.add(arith.ConstantOp(IntegerAttr(127, i32)))))
        bits = self.add(arith.ShLIOp(biased, self.add(arith.ConstantOp(IntegerAttr(23, i32)))))
        scale = self.add(arith.BitcastOp(bits, f32))
        result = self.mul(self.mul(poly, scale), 2.0)
        overflowed = self.select("ogt", x, EXP_MAX, self.const(float("inf")), result)
        return self.select("uno", x, x, x, overflowed)  # NaN in, NaN out

    def tanh(self, x: SSAValue) -> SSAValue:
        magnitude = self.add(math.AbsFOp(x))
        e = self.exp(self.mul(magnitude, -2.0))
        positive = self.binary(arith.DivfOp, self.sub(self.const(1.0), e), self.add_(e, 1.0))
        return self.add(math.CopySignOp(positive, x))


@dataclass
class ExpandExp(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: math.ExpOp, rewriter: PatternRewriter) -> None:
        if op.operand.type == f32:
            rewriter.replace(op, [], [_Emitter(rewriter).exp(op.operand)])


@dataclass
class ExpandTanh(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: math.TanhOp, rewriter: PatternRewriter) -> None:
        if op.operand.type == f32:
            rewriter.replace(op, [], [_Emitter(rewriter).tanh(op.operand)])


@dataclass(frozen=True)
class ExpandMathPass(ModulePass):
    """Expand f32 exp and tanh into arithmetic that vectorises (no libm calls)."""

    name = "expand-math"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(
            GreedyRewritePatternApplier([ExpandExp(), ExpandTanh()]), apply_recursively=False
        ).rewrite_module(op)
