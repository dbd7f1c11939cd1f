"""Fold inference batchnorm into the convolution that feeds it.

In inference, batchnorm is an affine map per channel,
`y = (x - mean) * s + beta` with `s = gamma / sqrt(var + eps)`. When `x` is a
convolution with constant weights, scaling the weights of each output
channel by `s` and moving the shift into the bias gives the same values with
one op instead of two, and the CPU never runs the normalisation at all.

The new weights and bias are computed in float64 from the stored constants
and rounded once to the model's dtype, so f32 results differ from the
unfolded model only by that rounding.
"""

from __future__ import annotations

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from dialects import nn

FOLDED_SUFFIX = ".bn_folded"


def _folded_name(original: nn.ConstantOp) -> str | None:
    """The name of a constant derived from `original`: its own plus a suffix."""
    return original.param_name + FOLDED_SUFFIX if original.param_name else None


class FoldBatchNormIntoConv(RewritePattern):
    """`batchnorm(conv2d(x, w, b?), mean, var, gamma, beta)` with every
    parameter constant and the convolution used only there becomes
    `conv2d(x, w * s, (b - mean) * s + beta)`, `s` per output channel."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.BatchNormOp, rewriter: PatternRewriter):
        x, *stats = op.operands
        conv = x.owner
        if not isinstance(conv, nn.Conv2dOp) or not x.has_one_use():
            return
        data, *conv_params = conv.operands
        constants = [v.owner for v in (*conv_params, *stats)]
        if not all(isinstance(c, nn.ConstantOp) for c in constants):
            return
        weights, *bias = constants[: len(conv_params)]
        mean, var, gamma, beta = (c.array().astype(np.float64) for c in constants[len(conv_params) :])

        scale = gamma / np.sqrt(var + op.params()["eps"])
        shift = (bias[0].array().astype(np.float64) if bias else 0.0) - mean
        t = _element_type(op.result)
        new_weights = nn.ConstantOp(weights.array() * scale[:, None, None, None], t, _folded_name(weights))
        new_bias = nn.ConstantOp(shift * scale + beta, t, _folded_name(bias[0] if bias else constants[-1]))
        folded = nn.Conv2dOp.make([data, new_weights, new_bias], **conv.params())
        rewriter.replace(op, [new_weights, new_bias, folded])
        rewriter.erase(conv)
        for value in dict.fromkeys((*conv_params, *stats)):
            if not value.uses:
                rewriter.erase(value.owner)


def _element_type(value: SSAValue):
    assert isinstance(value.type, TensorType)
    return value.type.element_type


class FoldBatchNormPass(ModulePass):
    """Fold inference batchnorm into the convolution feeding it (constant parameters)."""

    name = "fold-batchnorm"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FoldBatchNormIntoConv()).rewrite_module(op)
