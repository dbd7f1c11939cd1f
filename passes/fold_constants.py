"""Evaluate nn ops whose operands are all constants at compile time.

The value is computed by the reference interpreter, so a folded op means
exactly what it would have meant at run time, for every dtype. Typical
catches are weights rearranged in the source (`transpose(w)` becomes a
constant holding the transposed weights) and literal arithmetic (`1 / 8`).
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import OpResult, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from compiler.diagnostics import LoomError
from compiler.interpreter import evaluate
from dialects import nn

# A fold may grow the constant data by at most this factor over its operands.
MAX_GROWTH = 4


def _constant_of(value: SSAValue) -> nn.ConstantOp | None:
    if isinstance(value, OpResult) and isinstance(value.op, nn.ConstantOp):
        return value.op
    return None


def _size(value: SSAValue) -> int:
    t = value.type
    assert isinstance(t, TensorType)
    return t.element_count()


@dataclass
class FoldConstantOperands(RewritePattern):
    """Replace an nn op with constant operands by the constant it computes.

    Folding is refused when the result holds more than `max_growth` times as
    many elements as all operands together: a broadcast such as an [M, 1]
    constant plus a [1, N] constant would otherwise trade a cheap op on M + N
    values for an M x N constant carried through every later stage and into
    the binary. The parameter name survives when exactly one distinct operand
    is a named parameter, so `transpose(w)` is still called `w`.
    """

    max_growth: int = MAX_GROWTH

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.NNOperation, rewriter: PatternRewriter) -> None:
        constants = [_constant_of(v) for v in op.operands]
        if not constants or any(c is None for c in constants):
            return
        operand_size = sum(_size(v) for v in op.operands)
        if _size(op.result) > self.max_growth * operand_size:
            return
        try:
            value = evaluate(op, [c.array() for c in constants])  # type: ignore[union-attr]
        except LoomError:
            return  # e.g. an integer division by zero: leave it to be reported at run time
        distinct = list(dict.fromkeys(constants))
        named = [c.param_name for c in distinct if c.param_name]  # type: ignore[union-attr]
        result_type = op.result.type
        assert isinstance(result_type, TensorType)
        folded = nn.ConstantOp(value, result_type.element_type, named[0] if len(named) == 1 else None)
        rewriter.replace(op, folded)
        for constant in distinct:
            if not constant.result.uses:  # type: ignore[union-attr]
                rewriter.erase(constant)  # type: ignore[arg-type]


class FoldConstantsPass(ModulePass):
    """Evaluate nn ops whose operands are all constants (transposed weights, literal arithmetic)."""

    name = "fold-constants"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FoldConstantOperands()).rewrite_module(op)
