"""Builders for the tensor-level structured IR that nn ops lower to.

The nn lowering only ever needs a handful of shapes of IR: a fresh or filled
tensor, a `linalg.generic` with explicit indexing maps, a padded copy and a
reshape. They live here so each lowering pattern reads as the maths of its op.

Element types follow one rule throughout: arithmetic on f16 and bf16 happens
in f32 (`compute_type`), so values are extended when read and truncated once
when written; sums accumulate in `sum_type` (f32 for the reduced floats, i32
for i8) and are narrowed by a final elementwise op.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from math import prod

from xdsl.builder import Builder
from xdsl.dialects import arith, math, tensor
from xdsl.dialects.linalg import ops as linalg
from xdsl.dialects.builtin import (
    AffineMapAttr,
    AnyFloat,
    ArrayAttr,
    BFloat16Type,
    Float16Type,
    FloatAttr,
    IndexType,
    IntegerAttr,
    IntegerType,
    TensorType,
    f32,
    i8,
    i32,
    i64,
)
from xdsl.dialects.linalg.attrs import IteratorTypeAttr
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.ir.affine import AffineExpr, AffineMap
from xdsl.rewriter import InsertPoint

PARALLEL = IteratorTypeAttr.parallel()
REDUCTION = IteratorTypeAttr.reduction()

# Provenance attributes on structured ops, read by later passes and reports:
# the nn op kind an op was lowered from ("matmul"), the DSL name of that op's
# result when it had one, and the kinds a fused op was merged from.
OP_KIND_ATTR = "loom.op"
OP_NAME_ATTR = "loom.name"
FUSED_KINDS_ATTR = "loom.ops"

Scalar = SSAValue | float | int
"""A body operand: an SSA value, or a Python number materialised as a constant
of the other operands' compute type."""


# --------------------------------------------------------------------------
# Element types
# --------------------------------------------------------------------------


def compute_type(t: Attribute) -> Attribute:
    """The type arithmetic on values of `t` is done in."""
    return f32 if isinstance(t, Float16Type | BFloat16Type) else t


def sum_type(t: Attribute) -> Attribute:
    """The type sums of values of `t` accumulate in: partial sums of narrow
    types are neither rounded nor wrapped before the end, which keeps long
    f16 sums accurate and integer averages exact."""
    return i32 if t == i8 else compute_type(t)


def lowest(t: Attribute) -> float | int:
    """The identity of max on `t`: -inf for floats, the minimum for integers."""
    if isinstance(t, AnyFloat):
        return float("-inf")
    assert isinstance(t, IntegerType)
    return -(1 << (t.width.data - 1))


def convert_literal(value: float, t: Attribute) -> float | int:
    """A float parameter as a constant of `t`: integers are truncated toward
    zero and wrapped to the type's width, as a C cast through int64 does."""
    if isinstance(t, AnyFloat):
        return float(value)
    assert isinstance(t, IntegerType)
    width = t.width.data
    wrapped = int(value) & ((1 << width) - 1)
    return wrapped - (1 << width) if wrapped >> (width - 1) else wrapped


def _width(t: Attribute) -> int:
    if isinstance(t, AnyFloat):
        return t.bitwidth
    if isinstance(t, IntegerType):
        return t.width.data
    return 64


def element_type(value: SSAValue) -> Attribute:
    assert isinstance(value.type, TensorType)
    return value.type.element_type


def shape_of(value: SSAValue) -> list[int]:
    assert isinstance(value.type, TensorType)
    return list(value.type.get_shape())


# --------------------------------------------------------------------------
# Scalar bodies
# --------------------------------------------------------------------------


class ScalarBuilder:
    """Emits the scalar arith/math ops of a `linalg.generic` body.

    Every arithmetic method first brings its operands to one compute type:
    f16/bf16 values are extended to f32 (once per value), the narrower of two
    integers is sign-extended, and Python numbers become constants. The float
    or integer flavour of each op is picked from that type.
    """

    def __init__(self, builder: Builder):
        self.builder = builder
        self._casts: dict[tuple[SSAValue, Attribute], SSAValue] = {}

    def emit(self, op: Operation) -> SSAValue:
        self.builder.insert(op)
        return op.results[0]

    def constant(self, value: float | int, t: Attribute) -> SSAValue:
        if isinstance(t, AnyFloat):
            return self.emit(arith.ConstantOp(FloatAttr(float(value), t)))
        return self.emit(arith.ConstantOp(IntegerAttr(int(value), t)))

    def cast(self, value: SSAValue, t: Attribute) -> SSAValue:
        """`value` converted to `t` (extend or truncate, float or integer)."""
        if value.type == t:
            return value
        key = (value, t)
        if key not in self._casts:
            wider = _width(t) > _width(value.type)
            if isinstance(t, AnyFloat):
                op = arith.ExtFOp(value, t) if wider else arith.TruncFOp(value, t)
            else:
                op = arith.ExtSIOp(value, t) if wider else arith.TruncIOp(value, t)
            self._casts[key] = self.emit(op)
        return self._casts[key]

    def operands(self, *values: Scalar) -> list[SSAValue]:
        """`values` in their common compute type."""
        types = [compute_type(v.type) for v in values if isinstance(v, SSAValue)]
        assert types, "a scalar op needs at least one SSA operand"
        t = max(types, key=_width)
        return [
            self.cast(v, t) if isinstance(v, SSAValue) else self.constant(v, t)
            for v in values
        ]

    def _binary(self, float_op: type[Operation], int_op: type[Operation], a: Scalar, b: Scalar) -> SSAValue:
        lhs, rhs = self.operands(a, b)
        op = float_op if isinstance(lhs.type, AnyFloat) else int_op
        return self.emit(op(lhs, rhs))

    def add(self, a: Scalar, b: Scalar) -> SSAValue:
        return self._binary(arith.AddfOp, arith.AddiOp, a, b)

    def sub(self, a: Scalar, b: Scalar) -> SSAValue:
        return self._binary(arith.SubfOp, arith.SubiOp, a, b)

    def mul(self, a: Scalar, b: Scalar) -> SSAValue:
        return self._binary(arith.MulfOp, arith.MuliOp, a, b)

    def div(self, a: Scalar, b: Scalar) -> SSAValue:
        """Float division, or integer division truncating toward zero."""
        return self._binary(arith.DivfOp, arith.DivSIOp, a, b)

    def max(self, a: Scalar, b: Scalar) -> SSAValue:
        """NaN-propagating maximum for floats, signed maximum for integers."""
        return self._binary(arith.MaximumfOp, arith.MaxSIOp, a, b)

    def neg(self, a: SSAValue) -> SSAValue:
        (x,) = self.operands(a)
        if isinstance(x.type, AnyFloat):
            return self.emit(arith.NegfOp(x))
        return self.sub(0, x)

    def exp(self, a: SSAValue) -> SSAValue:
        return self.emit(math.ExpOp(*self.operands(a)))

    def tanh(self, a: SSAValue) -> SSAValue:
        return self.emit(math.TanhOp(*self.operands(a)))

    def sqrt(self, a: SSAValue) -> SSAValue:
        return self.emit(math.SqrtOp(*self.operands(a)))

    def square(self, a: SSAValue) -> SSAValue:
        return self.mul(a, a)

    def index(self, dim: int) -> SSAValue:
        """The current iteration index along loop `dim`."""
        return self.emit(linalg.IndexOp(dim))

    def index_constant(self, value: int) -> SSAValue:
        return self.emit(arith.ConstantOp(IntegerAttr(value, IndexType())))

    def less_equal(self, a: SSAValue, b: SSAValue) -> SSAValue:
        """Signed a <= b on integers or indices."""
        return self.emit(arith.CmpiOp(a, b, "sle"))

    def select(self, condition: SSAValue, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.emit(arith.SelectOp(condition, a, b))


Body = Callable[..., SSAValue]
"""`body(s, *args) -> value`: `s` is a ScalarBuilder, `args` the body's block
arguments (one per input, then the output element) in their storage types."""


# --------------------------------------------------------------------------
# Indexing maps
# --------------------------------------------------------------------------


def dims(n: int) -> list[AffineExpr]:
    return [AffineExpr.dimension(i) for i in range(n)]


def affine_map(num_dims: int, results: Sequence[AffineExpr]) -> AffineMap:
    return AffineMap(num_dims, 0, tuple(results))


def identity_map(rank: int) -> AffineMap:
    return AffineMap.identity(rank)


def broadcast_map(operand_shape: Sequence[int], out_shape: Sequence[int]) -> AffineMap:
    """numpy broadcasting of `operand_shape` to `out_shape` as an indexing map:
    missing leading dims are dropped and stretched unit dims read index 0."""
    rank = len(out_shape)
    offset = rank - len(operand_shape)
    results = [
        AffineExpr.constant(0) if size == 1 and out_shape[i + offset] != 1 else d
        for (i, size), d in zip(enumerate(operand_shape), dims(rank)[offset:])
    ]
    return affine_map(rank, results)


def reduced_map(rank: int, axes: Sequence[int], keepdims: bool) -> AffineMap:
    """The map from a rank-`rank` domain to its reduction over `axes`: reduced
    dims are dropped, or read index 0 when kept."""
    results = [
        AffineExpr.constant(0) if i in axes else AffineExpr.dimension(i)
        for i in range(rank)
        if keepdims or i not in axes
    ]
    return affine_map(rank, results)


def reduced_shape(shape: Sequence[int], axes: Sequence[int], keepdims: bool) -> list[int]:
    return [1 if i in axes else d for i, d in enumerate(shape) if keepdims or i not in axes]


# --------------------------------------------------------------------------
# Tensors and structured ops
# --------------------------------------------------------------------------


def empty(b: Builder, shape: Sequence[int], t: Attribute) -> SSAValue:
    return b.insert(tensor.EmptyOp([], TensorType(t, list(shape)))).tensor


def filled(b: Builder, shape: Sequence[int], t: Attribute, value: float | int) -> SSAValue:
    """A new tensor of `shape` holding `value` everywhere."""
    init = empty(b, shape, t)
    scalar = ScalarBuilder(b).constant(value, t)
    return b.insert(linalg.FillOp([scalar], [init])).res[0]


def generic(
    b: Builder,
    inputs: Sequence[tuple[SSAValue, AffineMap]],
    init: SSAValue,
    init_map: AffineMap,
    iterators: Sequence[IteratorTypeAttr],
    body: Body,
) -> SSAValue:
    """A `linalg.generic` reading `inputs` through their maps and updating
    `init`. The body's value is converted to `init`'s element type."""
    out_type = element_type(init)
    block = Block(arg_types=[element_type(v) for v, _ in inputs] + [out_type])
    s = ScalarBuilder(Builder(InsertPoint.at_end(block)))
    result = s.cast(body(s, *block.args), out_type)
    s.builder.insert(linalg.YieldOp(result))
    op = linalg.GenericOp(
        [v for v, _ in inputs],
        [init],
        Region(block),
        [AffineMapAttr(m) for _, m in inputs] + [AffineMapAttr(init_map)],
        list(iterators),
        [init.type],
    )
    return b.insert(op).res[0]


def elementwise(
    b: Builder,
    inputs: Sequence[tuple[SSAValue, AffineMap]],
    shape: Sequence[int],
    t: Attribute,
    body: Body,
) -> SSAValue:
    """A new tensor of `shape` and element type `t` computed point by point;
    the body sees the inputs and an unused output element."""
    rank = len(shape)
    return generic(b, inputs, empty(b, shape, t), identity_map(rank), [PARALLEL] * rank, body)


def reduce(
    b: Builder,
    inputs: Sequence[tuple[SSAValue, AffineMap]],
    domain: Sequence[int],
    axes: Sequence[int],
    keepdims: bool,
    t: Attribute,
    start: float | int,
    body: Body,
) -> SSAValue:
    """Reduce over `axes` of the loop `domain` into a new tensor of element
    type `t` that starts at `start`; the body gets the inputs and the running
    value and returns the next one."""
    rank = len(domain)
    init = filled(b, reduced_shape(domain, axes, keepdims), t, start)
    iterators = [REDUCTION if i in axes else PARALLEL for i in range(rank)]
    return generic(b, inputs, init, reduced_map(rank, axes, keepdims), iterators, body)


def finish(b: Builder, value: SSAValue, t: Attribute, body: Body | None = None) -> SSAValue:
    """`value` (an accumulator) mapped through `body` and narrowed to `t`;
    `value` itself when there is nothing to do."""
    if body is None:
        if element_type(value) == t:
            return value
        body = copy_value
    shape = shape_of(value)
    return elementwise(b, [(value, identity_map(len(shape)))], shape, t, body)


def copy_value(s: ScalarBuilder, value: SSAValue, *_: SSAValue) -> SSAValue:
    """The body of a copy: the first input as it is."""
    return value


def copy_into(b: Builder, value: SSAValue, init: SSAValue, offsets: Sequence[int]) -> SSAValue:
    """`init` with `value` written into it starting at `offsets`.

    A bare loop dim in a map must span its whole operand dim, so a dim that
    `value` only partly covers from offset 0 is written at `d + u` instead,
    where `u` is an outermost one-trip loop given its extent by a leading unit
    dim on a view of `value`."""
    source, target = shape_of(value), shape_of(init)
    rank = len(offsets)
    partial_at_zero = [o == 0 and s != t for o, s, t in zip(offsets, source, target)]
    if not any(partial_at_zero):
        out_map = affine_map(rank, [d + o for d, o in zip(dims(rank), offsets)])
        return generic(b, [(value, identity_map(rank))], init, out_map, [PARALLEL] * rank, copy_value)
    unit, *d = dims(rank + 1)
    out_map = affine_map(rank + 1, [di + (unit if p else o) for di, o, p in zip(d, offsets, partial_at_zero)])
    view = expand(b, value, [1, *source], [[0, 1]] + [[i + 1] for i in range(1, rank)])
    return generic(b, [(view, identity_map(rank + 1))], init, out_map, [PARALLEL] * (rank + 1), copy_value)


def pad(b: Builder, value: SSAValue, low: Sequence[int], high: Sequence[int], fill: float | int) -> SSAValue:
    """`value` surrounded by `low`/`high` cells of `fill` per dim."""
    if not any(low) and not any(high):
        return value
    shape = [d + lo + hi for d, lo, hi in zip(shape_of(value), low, high)]
    return copy_into(b, value, filled(b, shape, element_type(value), fill), low)


# --------------------------------------------------------------------------
# Reshapes
# --------------------------------------------------------------------------


def reassociation(collapsed: Sequence[int], expanded: Sequence[int]) -> list[list[int]] | None:
    """Groups of consecutive `expanded` dims whose sizes multiply to each
    `collapsed` dim, or None when the shapes are not related that way."""
    if len(expanded) < len(collapsed) or not collapsed:
        return None
    groups: list[list[int]] = []
    next_dim = 0
    for size in collapsed:
        group = [next_dim]
        product = expanded[next_dim] if next_dim < len(expanded) else 0
        next_dim += 1
        while product < size and next_dim < len(expanded):
            product *= expanded[next_dim]
            group.append(next_dim)
            next_dim += 1
        if product != size:
            return None
        groups.append(group)
    trailing = list(range(next_dim, len(expanded)))
    if any(expanded[d] != 1 for d in trailing):
        return None
    groups[-1].extend(trailing)
    return groups


def _reassociation_attr(groups: list[list[int]]) -> ArrayAttr[ArrayAttr[IntegerAttr]]:
    return ArrayAttr([ArrayAttr([IntegerAttr(d, i64) for d in g]) for g in groups])


def collapse(b: Builder, value: SSAValue, shape: Sequence[int], groups: list[list[int]]) -> SSAValue:
    result_type = TensorType(element_type(value), list(shape))
    op = tensor.CollapseShapeOp(
        operands=[value],
        result_types=[result_type],
        properties={"reassociation": _reassociation_attr(groups)},
    )
    return b.insert(op).result


def expand(b: Builder, value: SSAValue, shape: Sequence[int], groups: list[list[int]]) -> SSAValue:
    result_type = TensorType(element_type(value), list(shape))
    op = tensor.ExpandShapeOp(value, [], _reassociation_attr(groups), list(shape), result_type)
    return b.insert(op).result


def reshape(b: Builder, value: SSAValue, shape: Sequence[int]) -> SSAValue:
    """Row-major reshape as one collapse or expand when the shapes allow it,
    else a collapse to 1-D and an expand; rank-0 ends need a copy, as a
    reassociation cannot describe them."""
    source = shape_of(value)
    shape = list(shape)
    if source == shape:
        return value
    if not source or not shape:
        rank = len(source)
        in_map = affine_map(0, [AffineExpr.constant(0)] * rank)
        out = empty(b, shape, element_type(value))
        out_map = affine_map(0, [AffineExpr.constant(0)] * len(shape))
        return generic(b, [(value, in_map)], out, out_map, [], copy_value)
    if (groups := reassociation(shape, source)) is not None:
        return collapse(b, value, shape, groups)
    if (groups := reassociation(source, shape)) is not None:
        return expand(b, value, shape, groups)
    size = prod(source)
    flat = collapse(b, value, [size], [list(range(len(source)))])
    return expand(b, flat, shape, [list(range(len(shape)))])
