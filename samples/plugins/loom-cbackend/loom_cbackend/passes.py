"""`div-to-mul`: divide by a constant by multiplying with its reciprocal.

Division is several times slower than multiplication on most hardware (a
divider is rarely pipelined; a multiplier always is), and `x / 8` or
`scores / sqrt(d)` are common in models. When the divisor is a known f32
constant, `x / c` becomes `x * (1 / c)` with `1 / c` computed once, here.

The rewrite is not exact: `1 / c` is rounded to f32 before it multiplies, so
a result may differ from the true quotient in its last bit (about 1e-7
relative). Divisors that are powers of two are the exception: their
reciprocals are exact. Narrow floats are left alone, since rounding the
reciprocal to f16 or bf16 would cost more than that last bit, and so is any
divisor without a finite reciprocal: a zero, or a value so small that `1 / c`
overflows, where `x * inf` is infinite although `x / c` may not be.
"""

from __future__ import annotations

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import Float32Type, ModuleOp, TensorType
from xdsl.ir import OpResult
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from dialects import nn


def f32_reciprocal(divisor: nn.ConstantOp) -> np.ndarray | None:
    """`1 / divisor` when multiplying by it stays within the last bit of dividing."""
    t = divisor.result.type
    assert isinstance(t, TensorType)
    if not isinstance(t.element_type, Float32Type):
        return None
    with np.errstate(divide="ignore", over="ignore"):  # 1/0 and 1/1e-40: refused just below
        reciprocal = np.reciprocal(divisor.array(), dtype=np.float32)
    return reciprocal if np.all(np.isfinite(reciprocal)) else None


class DivideByConstant(RewritePattern):
    """`nn.div(x, c)` with `c` a suitable f32 constant -> `nn.mul(x, 1 / c)`."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.DivOp, rewriter: PatternRewriter) -> None:
        x, divisor = op.operands
        if not (isinstance(divisor, OpResult) and isinstance(divisor.op, nn.ConstantOp)):
            return
        reciprocal = f32_reciprocal(divisor.op)
        if reciprocal is None:
            return
        factor = nn.ConstantOp(reciprocal, Float32Type())
        rewriter.insert(factor, InsertPoint.before(op))
        rewriter.replace(op, nn.MulOp.make([x, factor]))
        if not divisor.uses:
            rewriter.erase(divisor.op)


class DivToMulPass(ModulePass):
    """Turn f32 division by a constant into multiplication by its reciprocal (within 1 ulp)."""

    name = "div-to-mul"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(DivideByConstant()).rewrite_module(op)
