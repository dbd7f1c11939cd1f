"""Lower computing nn ops to structured ops on tensors.

Every op becomes `linalg.generic`s over explicit iteration domains (plus
`linalg.fill`, `tensor.empty` and reshapes), so later passes see the loop
structure, the access pattern of every operand and where reductions are.
Loop orders are chosen for the loop nest that `convert-linalg-to-loops`
produces: wherever the op allows, the innermost loop walks the contiguous last
dim of the output (matmul is i-k-j, convolution and pooling end with the
output width).
Broadcasting is expressed in indexing maps, never materialised. `nn.constant`
is left for `bufferize`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr, TensorType
from xdsl.dialects.linalg.abstract_ops import LinalgStructuredOperation
from xdsl.ir import Attribute, OpResult, Operation, SSAValue
from xdsl.ir.affine import AffineExpr
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.utils.exceptions import PassFailedException

from dialects import nn
from passes.linalg_builders import (
    OP_KIND_ATTR,
    Body,
    OP_NAME_ATTR,
    PARALLEL,
    REDUCTION,
    ScalarBuilder,
    affine_map,
    broadcast_map,
    collapse,
    compute_type,
    convert_literal,
    copy_into,
    copy_value,
    dims,
    element_type,
    elementwise,
    empty,
    expand,
    filled,
    finish,
    generic,
    identity_map,
    lowest,
    pad,
    reduce,
    reduced_map,
    reshape,
    shape_of,
    sum_type,
)


def result_type(op: nn.InferredOperation) -> TensorType:
    """The tensor type of an nn or quant op's single result."""
    t = op.results[0].type
    assert isinstance(t, TensorType)
    return t


def _scalar_literal(value: SSAValue) -> float | int | None:
    """The number held by a rank-0 literal, which a body can use directly."""
    owner = value.owner
    if isinstance(owner, nn.ConstantOp) and not shape_of(value):
        return owner.array().item()
    return None


def _stamp(op: Operation, value: SSAValue) -> None:
    """Mark every structured op computing `value` from `op`'s operands with
    `op`'s kind and the DSL name of its result, so passes after the lowering
    (tiling, reports) can tell which model op a loop nest implements."""
    kind = StringAttr(op.name.removeprefix("nn."))
    name = op.results[0].name_hint
    boundary = set(op.operands)
    pending, seen = [value], set[OpResult]()
    while pending:
        v = pending.pop()
        if v in boundary or not isinstance(v, OpResult) or v in seen:
            continue
        seen.add(v)
        if isinstance(v.op, LinalgStructuredOperation):
            v.op.attributes[OP_KIND_ATTR] = kind
            if name is not None:
                v.op.attributes[OP_NAME_ATTR] = StringAttr(name)
        pending.extend(v.op.operands)


def replace_lowered(rewriter: PatternRewriter, op: Operation, value: SSAValue) -> None:
    """Replace `op` by `value`, stamping the ops computing it (see `_stamp`),
    and drop literals it leaves unused."""
    _stamp(op, value)
    operands = list(op.operands)
    rewriter.replace(op, [], [value])
    for operand in operands:
        if isinstance(operand.owner, nn.ConstantOp) and not operand.uses:
            rewriter.erase(operand.owner)


# --------------------------------------------------------------------------
# Elementwise
# --------------------------------------------------------------------------

_BINARY: dict[type[nn.NNOperation], Callable[[ScalarBuilder, SSAValue, SSAValue], SSAValue]] = {
    nn.AddOp: ScalarBuilder.add,
    nn.SubOp: ScalarBuilder.sub,
    nn.MulOp: ScalarBuilder.mul,
    nn.DivOp: ScalarBuilder.div,
}

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu(s: ScalarBuilder, x: SSAValue) -> SSAValue:
    cube = s.mul(s.square(x), x)
    inner = s.mul(_SQRT_2_OVER_PI, s.add(x, s.mul(0.044715, cube)))
    return s.mul(s.mul(0.5, x), s.add(1.0, s.tanh(inner)))


def _sigmoid(s: ScalarBuilder, x: SSAValue) -> SSAValue:
    return s.div(1.0, s.add(1.0, s.exp(s.neg(x))))


_UNARY: dict[type[nn.NNOperation], Callable[[ScalarBuilder, SSAValue], SSAValue]] = {
    nn.NegOp: ScalarBuilder.neg,
    nn.ReluOp: lambda s, x: s.max(x, 0),
    nn.GeluOp: _gelu,
    nn.SigmoidOp: _sigmoid,
    nn.TanhOp: ScalarBuilder.tanh,
    nn.ExpOp: ScalarBuilder.exp,
    nn.SqrtOp: ScalarBuilder.sqrt,
}


class LowerElementwise(RewritePattern):
    """Unary and binary elementwise ops: one parallel generic over the result.
    Rank-0 literal operands become constants inside the body."""

    @op_type_rewrite_pattern
    def match_and_rewrite(
        self, op: nn.ElementwiseBinaryOp | nn.ElementwiseUnaryOp, rewriter: PatternRewriter
    ):
        out = result_type(op)
        shape = list(out.get_shape())
        fn: Callable[..., SSAValue] = _BINARY.get(type(op)) or _UNARY[type(op)]
        literals = [_scalar_literal(v) for v in op.operands]
        if all(literal is not None for literal in literals):
            literals[0] = None  # body ops take their type from an SSA operand
        inputs = [
            (v, broadcast_map(shape_of(v), shape))
            for v, literal in zip(op.operands, literals)
            if literal is None
        ]

        def body(s: ScalarBuilder, *args: SSAValue) -> SSAValue:
            values = iter(args)
            return fn(s, *(next(values) if literal is None else literal for literal in literals))

        replace_lowered(rewriter, op, elementwise(rewriter, inputs, shape, out.element_type, body))


class LowerTril(RewritePattern):
    """tril: select on the iteration indices of the last two dims."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.TrilOp, rewriter: PatternRewriter):
        out = result_type(op)
        shape = list(out.get_shape())
        rank = len(shape)
        params = op.params()
        fill = convert_literal(params["fill"], out.element_type)

        def body(s: ScalarBuilder, x: SSAValue, _: SSAValue) -> SSAValue:
            row, col = s.index(rank - 2), s.index(rank - 1)
            keep = s.less_equal(s.sub(col, row), s.index_constant(params["k"]))
            return s.select(keep, x, s.constant(fill, out.element_type))

        (x,) = op.operands
        result = elementwise(rewriter, [(x, identity_map(rank))], shape, out.element_type, body)
        replace_lowered(rewriter, op, result)


# --------------------------------------------------------------------------
# Linear algebra
# --------------------------------------------------------------------------


def multiply_accumulate(s: ScalarBuilder, x: SSAValue, y: SSAValue, acc: SSAValue) -> SSAValue:
    """The body of a contraction: acc + x * y in the accumulator's type."""
    return s.add(acc, s.mul(s.cast(x, acc.type), s.cast(y, acc.type)))


def matmul_generic(
    rewriter: PatternRewriter, a: SSAValue, b: SSAValue, out_shape: Sequence[int], acc_type: Attribute, body: Body
) -> SSAValue:
    """The matmul nest over (batch..., i, k, j), accumulating `body` into a
    zero-filled `acc_type` tensor: the innermost loop walks a row of B and
    of C, so it is contiguous and vectorisable."""
    out_shape = list(out_shape)
    batch = len(out_shape) - 2
    rank = batch + 3
    d = dims(rank)
    i, k, j = d[batch], d[batch + 1], d[batch + 2]
    batch_shape = out_shape[:batch]

    def operand_map(value: SSAValue, inner: list[AffineExpr]):
        own_batch = shape_of(value)[:-2]
        batch_map = broadcast_map(own_batch, batch_shape)
        return affine_map(rank, [*batch_map.results, *inner])

    return generic(
        rewriter,
        [(a, operand_map(a, [i, k])), (b, operand_map(b, [k, j]))],
        filled(rewriter, out_shape, acc_type, 0),
        affine_map(rank, [*d[:batch], i, j]),
        [PARALLEL] * batch + [PARALLEL, REDUCTION, PARALLEL],
        body,
    )


class LowerMatmul(RewritePattern):
    """matmul: the nest of `matmul_generic`, narrowed to the result type."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.MatmulOp, rewriter: PatternRewriter):
        a, b = op.operands
        out = result_type(op)
        acc_type = sum_type(out.element_type)
        product = matmul_generic(rewriter, a, b, out.get_shape(), acc_type, multiply_accumulate)
        replace_lowered(rewriter, op, finish(rewriter, product, out.element_type))


# --------------------------------------------------------------------------
# Convolution and pooling
# --------------------------------------------------------------------------


def _window(d_out: AffineExpr, d_kernel: AffineExpr, stride: int, dilation: int) -> AffineExpr:
    return d_out * stride + d_kernel * dilation


def conv2d_generic(
    rewriter: PatternRewriter,
    x: SSAValue,
    w: SSAValue,
    bias: SSAValue | None,
    params: dict,
    out_shape: Sequence[int],
    acc_type: Attribute,
    pad_value: float | int,
    body: Body,
) -> SSAValue:
    """conv2d (params as nn.conv2d's) on `x` padded with `pad_value`, over the
    domain (n, [g,] oc, oh, ic, kh, kw, ow): the innermost loop runs along an
    output row. With groups, the input, weights and output are viewed with a
    separate group dim so every map stays a projection of the domain. The
    `acc_type` sums start at the bias, or at zero."""
    n, o, oh, ow = out_shape
    groups = params["groups"]
    _, c_per_group, _, _ = shape_of(w)
    (ph, pw), (sh, sw), (dh, dw) = params["padding"], params["stride"], params["dilation"]

    padded = pad(rewriter, x, [0, 0, ph, pw], [0, 0, ph, pw], pad_value)
    if bias is not None:
        init = elementwise(
            rewriter,
            [(bias, affine_map(4, [AffineExpr.dimension(1)]))],
            [n, o, oh, ow],
            acc_type,
            copy_value,
        )
    else:
        init = filled(rewriter, [n, o, oh, ow], acc_type, 0)

    grouped = groups > 1
    rank = 8 if grouped else 7
    d = dims(rank)
    d_n, *d_g, d_oc, d_oh, d_ic, d_kh, d_kw, d_ow = d
    rows = _window(d_oh, d_kh, sh, dh)
    cols = _window(d_ow, d_kw, sw, dw)
    if grouped:
        _, _, hp, wp = shape_of(padded)
        _, _, kh, kw = shape_of(w)
        padded = expand(rewriter, padded, [n, groups, c_per_group, hp, wp], [[0], [1, 2], [3], [4]])
        w = expand(rewriter, w, [groups, o // groups, c_per_group, kh, kw], [[0, 1], [2], [3], [4]])
        init = expand(rewriter, init, [n, groups, o // groups, oh, ow], [[0], [1, 2], [3], [4]])

    iterators = [PARALLEL] * (rank - 4) + [REDUCTION] * 3 + [PARALLEL]
    result = generic(
        rewriter,
        [
            (padded, affine_map(rank, [d_n, *d_g, d_ic, rows, cols])),
            (w, affine_map(rank, [*d_g, d_oc, d_ic, d_kh, d_kw])),
        ],
        init,
        affine_map(rank, [d_n, *d_g, d_oc, d_oh, d_ow]),
        iterators,
        body,
    )
    if grouped:
        result = collapse(rewriter, result, [n, o, oh, ow], [[0], [1, 2], [3], [4]])
    return result


class LowerConv2d(RewritePattern):
    """conv2d: the nest of `conv2d_generic` on a zero-padded input, narrowed
    to the result type."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.Conv2dOp, rewriter: PatternRewriter):
        x, w, *bias = op.operands
        out = result_type(op)
        result = conv2d_generic(
            rewriter, x, w, bias[0] if bias else None, op.params(), out.get_shape(),
            sum_type(out.element_type), 0, multiply_accumulate,
        )
        replace_lowered(rewriter, op, finish(rewriter, result, out.element_type))


class LowerPool2d(RewritePattern):
    """Window pooling over the domain (n, c, oh, kh, kw, ow). An unread
    kh x kw operand gives the window loops their extent. Max pools pad with
    the lowest value, average pools with zero and divide by kh*kw."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.Pool2dOp, rewriter: PatternRewriter):
        (x,) = op.operands
        p = op.params()
        out = result_type(op)
        t = out.element_type
        (kh, kw), (sh, sw), (ph, pw) = p["kernel"], p["stride"], p["padding"]
        is_max = isinstance(op, nn.MaxPool2dOp)

        padded = pad(rewriter, x, [0, 0, ph, pw], [0, 0, ph, pw], lowest(t) if is_max else 0)
        window = empty(rewriter, [kh, kw], t)
        d_n, d_c, d_oh, d_kh, d_kw, d_ow = dims(6)
        inputs = [
            (padded, affine_map(6, [d_n, d_c, _window(d_oh, d_kh, sh, 1), _window(d_ow, d_kw, sw, 1)])),
            (window, affine_map(6, [d_kh, d_kw])),
        ]
        shape = list(out.get_shape())
        init_type = compute_type(t) if is_max else sum_type(t)
        init = filled(rewriter, shape, init_type, lowest(init_type) if is_max else 0)
        combine = ScalarBuilder.max if is_max else ScalarBuilder.add
        pooled = generic(
            rewriter,
            inputs,
            init,
            affine_map(6, [d_n, d_c, d_oh, d_ow]),
            [PARALLEL] * 3 + [REDUCTION] * 2 + [PARALLEL],
            lambda s, xv, _, acc: combine(s, acc, xv),
        )
        divide = None if is_max else (lambda s, acc, _: s.div(acc, kh * kw))
        replace_lowered(rewriter, op, finish(rewriter, pooled, t, divide))


# --------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------


def _sum(b: PatternRewriter, x: SSAValue, axes: Sequence[int], keepdims: bool, t: Attribute) -> SSAValue:
    """The sum over `axes` as element type `t`, accumulated in the sum type."""
    shape = shape_of(x)
    total = reduce(
        b,
        [(x, identity_map(len(shape)))],
        shape,
        axes,
        keepdims,
        sum_type(element_type(x)),
        0,
        lambda s, v, acc: s.add(acc, v),
    )
    return finish(b, total, t)


def _mean(b: PatternRewriter, x: SSAValue, axes: Sequence[int], keepdims: bool, t: Attribute) -> SSAValue:
    """The mean over `axes` as element type `t`."""
    total = _sum(b, x, axes, keepdims, sum_type(element_type(x)))
    count = math.prod(shape_of(x)[a] for a in axes)
    return finish(b, total, t, lambda s, v, _: s.div(v, float(count)))


def _max(b: PatternRewriter, x: SSAValue, axes: Sequence[int], keepdims: bool, t: Attribute) -> SSAValue:
    """The maximum over `axes` as element type `t`."""
    shape = shape_of(x)
    acc_type = compute_type(element_type(x))
    peak = reduce(
        b,
        [(x, identity_map(len(shape)))],
        shape,
        axes,
        keepdims,
        acc_type,
        lowest(acc_type),
        lambda s, v, acc: s.max(acc, v),
    )
    return finish(b, peak, t)


_REDUCTIONS = {nn.ReduceSumOp: _sum, nn.ReduceMeanOp: _mean, nn.ReduceMaxOp: _max}


class LowerReduction(RewritePattern):
    """sum, mean and max over axes, keeping reduced dims as 1 on request."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.ReductionOp, rewriter: PatternRewriter):
        p = op.params()
        reduce_fn = _REDUCTIONS[type(op)]
        result = reduce_fn(rewriter, op.operands[0], p["axes"], p["keepdims"], result_type(op).element_type)
        replace_lowered(rewriter, op, result)


class LowerGlobalAvgPool(RewritePattern):
    """global_avgpool: the mean over H and W, kept as 1 x 1."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.GlobalAvgPoolOp, rewriter: PatternRewriter):
        mean = _mean(rewriter, op.operands[0], [2, 3], True, result_type(op).element_type)
        replace_lowered(rewriter, op, mean)


# --------------------------------------------------------------------------
# Normalisation and softmax
# --------------------------------------------------------------------------


class LowerSoftmax(RewritePattern):
    """Numerically stable softmax: max, exp(x - max), sum, divide."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.SoftmaxOp, rewriter: PatternRewriter):
        (x,) = op.operands
        axis = op.params()["axis"]
        shape = shape_of(x)
        rank = len(shape)
        identity = identity_map(rank)
        row_map = reduced_map(rank, [axis], False)
        peak = _max(rewriter, x, [axis], False, compute_type(element_type(x)))
        exps = elementwise(
            rewriter,
            [(x, identity), (peak, row_map)],
            shape,
            sum_type(element_type(x)),
            lambda s, v, m, _: s.exp(s.sub(v, m)),
        )
        total = _sum(rewriter, exps, [axis], False, element_type(exps))
        result = elementwise(
            rewriter,
            [(exps, identity), (total, row_map)],
            shape,
            element_type(x),
            lambda s, e, t, _: s.div(e, t),
        )
        replace_lowered(rewriter, op, result)


def _trailing_map(rank: int, count: int):
    """Reads the last `count` dims of a rank-`rank` domain."""
    return affine_map(rank, dims(rank)[rank - count :])


class LowerLayerNorm(RewritePattern):
    """layernorm over dims axis..: mean, biased variance around it, then
    (x - mean) / sqrt(var + eps) * gamma + beta."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.LayerNormOp, rewriter: PatternRewriter):
        x, gamma, beta = op.operands
        p = op.params()
        shape = shape_of(x)
        rank = len(shape)
        axes = list(range(p["axis"], rank))
        count = math.prod(shape[a] for a in axes)
        identity = identity_map(rank)
        row_map = reduced_map(rank, axes, False)
        param_map = _trailing_map(rank, len(axes))

        mean = _mean(rewriter, x, axes, False, sum_type(element_type(x)))
        squares = reduce(
            rewriter,
            [(x, identity), (mean, row_map)],
            shape,
            axes,
            False,
            element_type(mean),
            0,
            lambda s, v, m, acc: s.add(acc, s.square(s.sub(v, m))),
        )
        std = finish(
            rewriter,
            squares,
            element_type(mean),
            lambda s, v, _: s.sqrt(s.add(s.div(v, float(count)), p["eps"])),
        )
        result = elementwise(
            rewriter,
            [(x, identity), (mean, row_map), (std, row_map), (gamma, param_map), (beta, param_map)],
            shape,
            element_type(x),
            lambda s, v, m, sd, g, b, _: s.add(s.mul(s.div(s.sub(v, m), sd), g), b),
        )
        replace_lowered(rewriter, op, result)


class LowerBatchNorm(RewritePattern):
    """Inference batchnorm: sqrt(var + eps) once per channel, then
    (x - mean) / std * gamma + beta per element."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.BatchNormOp, rewriter: PatternRewriter):
        x, mean, var, gamma, beta = op.operands
        eps = op.params()["eps"]
        shape = shape_of(x)
        rank = len(shape)
        t = element_type(x)
        std = elementwise(
            rewriter,
            [(var, identity_map(1))],
            [shape[1]],
            compute_type(t),
            lambda s, v, _: s.sqrt(s.add(v, eps)),
        )
        channel = affine_map(rank, [AffineExpr.dimension(1)])
        result = elementwise(
            rewriter,
            [(x, identity_map(rank)), (mean, channel), (std, channel), (gamma, channel), (beta, channel)],
            shape,
            t,
            lambda s, v, m, sd, g, b, _: s.add(s.mul(s.div(s.sub(v, m), sd), g), b),
        )
        replace_lowered(rewriter, op, result)


# --------------------------------------------------------------------------
# Data movement
# --------------------------------------------------------------------------


class LowerReshape(RewritePattern):
    """reshape: views (collapse/expand) of the operand; see `reshape`."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.ReshapeOp, rewriter: PatternRewriter):
        replace_lowered(rewriter, op, reshape(rewriter, op.operands[0], result_type(op).get_shape()))


class LowerTranspose(RewritePattern):
    """transpose: a copy over the result's domain reading the input through
    the permutation."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.TransposeOp, rewriter: PatternRewriter):
        (x,) = op.operands
        perm = op.params()["perm"]
        out = result_type(op)
        rank = len(perm)
        d = dims(rank)
        source_map = affine_map(rank, [d[perm.index(axis)] for axis in range(rank)])
        result = elementwise(rewriter, [(x, source_map)], out.get_shape(), out.element_type, copy_value)
        replace_lowered(rewriter, op, result)


class LowerSlice(RewritePattern):
    """slice: a copy over the result's domain reading the input at
    `start + step * index` on every dim.

    A bare loop dim must span its whole operand dim, so a dim read from 0 with
    step 1 but not to its end is read at `d + u` instead, `u` being an
    outermost one-trip loop given its extent by a leading unit dim of the
    result (the trick `copy_into` plays on the written side)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.SliceOp, rewriter: PatternRewriter):
        (x,) = op.operands
        params = op.params()
        out = result_type(op)
        shape = list(out.get_shape())
        rank = len(shape)
        prefix_only = [
            start == 0 and step == 1 and size != full
            for start, step, size, full in zip(params["starts"], params["steps"], shape, shape_of(x))
        ]
        if not any(prefix_only):
            d = dims(rank)
            source_map = affine_map(rank, [i * step + start for i, start, step in zip(d, params["starts"], params["steps"])])
            result = elementwise(rewriter, [(x, source_map)], shape, out.element_type, copy_value)
        else:
            unit, *d = dims(rank + 1)
            source_map = affine_map(rank + 1, [
                i + unit if prefix else i * step + start
                for i, start, step, prefix in zip(d, params["starts"], params["steps"], prefix_only)
            ])
            widened = elementwise(rewriter, [(x, source_map)], [1, *shape], out.element_type, copy_value)
            result = collapse(rewriter, widened, shape, [[0, 1]] + [[i + 1] for i in range(1, rank)])
        replace_lowered(rewriter, op, result)


class LowerConcat(RewritePattern):
    """concat: one copy per operand into its slice of one result tensor."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: nn.ConcatOp, rewriter: PatternRewriter):
        axis = op.params()["axis"]
        out = result_type(op)
        result = empty(rewriter, out.get_shape(), out.element_type)
        offsets = [0] * len(out.get_shape())
        for operand in op.operands:
            result = copy_into(rewriter, operand, result, offsets)
            offsets[axis] += shape_of(operand)[axis]
        replace_lowered(rewriter, op, result)


class ConvertNNToLinalgPass(ModulePass):
    """Lower nn ops to linalg.generic/fill and tensor ops (nn.constant stays).
    The quant ops a quantized model mixes with nn ops are lowered with them."""

    name = "convert-nn-to-linalg"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        from passes.convert_quant_to_linalg import QUANT_LOWERINGS  # it builds on this module

        PatternRewriteWalker(
            GreedyRewritePatternApplier(
                [
                    LowerElementwise(),
                    LowerTril(),
                    LowerMatmul(),
                    LowerConv2d(),
                    LowerPool2d(),
                    LowerReduction(),
                    LowerGlobalAvgPool(),
                    LowerSoftmax(),
                    LowerLayerNorm(),
                    LowerBatchNorm(),
                    LowerReshape(),
                    LowerTranspose(),
                    LowerSlice(),
                    LowerConcat(),
                    *QUANT_LOWERINGS,
                ]
            ),
            apply_recursively=False,
        ).rewrite_module(op)
        for leftover in op.walk():
            if isinstance(leftover, nn.NNOperation):
                raise PassFailedException(f"convert-nn-to-linalg has no lowering for {leftover.name}")
