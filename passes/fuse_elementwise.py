"""Fuse elementwise `linalg.generic` producers into their consumers.

After `convert-nn-to-linalg` every nn op is one or more generics, each
writing a whole tensor that the next one reads back. Inlining a producer's
body into its consumer computes the value where it is needed instead, so a
chain such as `relu(x @ w + b)` or the `exp(x - max)` feeding softmax's sum
becomes one loop nest and its intermediate tensors disappear.

A producer can be fused when it is an all-parallel generic with one result
written through a permutation: each of its elements is then a function of
its inputs at indices the consumer can compute, since the consumer's loop
indices map back to the producer's loop indices through the inverse of that
permutation. The consumer may reduce (softmax's sum, layernorm's variance).

A producer is fused into all of its consumers or into none, so it is always
erased afterwards. Fusion repeats the producer's body, which is only worth it
when the extra work is small:
- a producer with several consumers is computed once per consumer, so it
  must be cheap (at most `max-recompute-ops` arithmetic ops);
- a consumer that reads a producer through a broadcast recomputes each
  element for every broadcast index, so that producer must be cheap too; a
  consumer that reduces may only broadcast it along its reduced dims, which
  keeps elementwise work out of the inner loops of matmul and convolution;
- the elementwise epilogue of a contraction (bias, activation, residual
  after a matmul or convolution) only merges with a single all-parallel
  consumer that reads and writes it element for element, so one epilogue
  generic follows each contraction. It is marked with `loom.epilogue_of`
  for the tile pass, which fuses it into the contraction's loop nest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith
from xdsl.dialects.builtin import (
    AffineMapAttr,
    ArrayAttr,
    IndexType,
    IntegerAttr,
    ModuleOp,
    ShapedType,
    StringAttr,
)
from xdsl.dialects.linalg import ops as linalg
from xdsl.dialects.linalg.abstract_ops import LinalgStructuredOperation
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.ir.affine import AffineConstantExpr, AffineDimExpr, AffineExpr, AffineMap
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.transforms.dead_code_elimination import is_trivially_dead

from passes.linalg_builders import FUSED_KINDS_ATTR, OP_KIND_ATTR, REDUCTION

EPILOGUE_ATTR = "loom.epilogue_of"

# Body ops that cost nothing worth counting when a body is repeated.
_FREE_OPS = (
    linalg.YieldOp,
    linalg.IndexOp,
    arith.ConstantOp,
    arith.ExtFOp,
    arith.TruncFOp,
    arith.ExtSIOp,
    arith.TruncIOp,
)


# --------------------------------------------------------------------------
# Structure of generics
# --------------------------------------------------------------------------


def _maps(op: linalg.GenericOp) -> list[AffineMap]:
    return [m.data for m in op.indexing_maps]


def _input_maps(op: linalg.GenericOp) -> list[AffineMap]:
    return _maps(op)[: len(op.inputs)]


def _reduction_dims(op: linalg.GenericOp) -> set[int]:
    return {i for i, t in enumerate(op.iterator_types) if t == REDUCTION}


def _is_permutation(m: AffineMap) -> bool:
    return len(m.results) == m.num_dims and m.is_projected_permutation()


def _cost(op: linalg.GenericOp) -> int:
    """The arithmetic ops in `op`'s body: what repeating the body costs."""
    return sum(not isinstance(o, _FREE_OPS) for o in op.body.block.ops)


def _writes_pointwise(op: linalg.GenericOp) -> bool:
    """Whether `op` writes each result element in its own iteration."""
    return not _reduction_dims(op) and _is_permutation(_maps(op)[-1])


def _is_elementwise_producer(op: Operation) -> bool:
    """A generic writing one result pointwise without reading what its init
    held: each element can be computed anywhere from the inputs alone."""
    return (
        isinstance(op, linalg.GenericOp)
        and len(op.outputs) == 1
        and _writes_pointwise(op)
        and not op.body.block.args[-1].uses
    )


def _is_contraction(op: Operation) -> bool:
    """A reduction that combines several operands each broadcast along some
    output dim, as matmul and convolution do: every operand element feeds
    many outputs, which is what makes these ops worth tiling."""
    if not isinstance(op, linalg.GenericOp) or len(op.inputs) < 2:
        return False
    reductions = _reduction_dims(op)
    parallel = set(range(len(op.iterator_types))) - reductions
    return bool(reductions) and all(parallel - m.used_dims() for m in _input_maps(op))


def _contraction_read(op: linalg.GenericOp) -> linalg.GenericOp | None:
    """The contraction whose result `op` reads element by element, if any."""
    for value, m in zip(op.inputs, _input_maps(op)):
        if _is_contraction(value.owner) and _is_permutation(m):
            assert isinstance(value.owner, linalg.GenericOp)
            return value.owner
    return None


def _kinds(op: Operation) -> list[Attribute]:
    """The nn op kinds `op` computes: its fused list, else its own kind."""
    fused = op.attributes.get(FUSED_KINDS_ATTR)
    if isinstance(fused, ArrayAttr):
        return list(fused.data)
    kind = op.attributes.get(OP_KIND_ATTR)
    return [kind] if kind is not None else []


def _element_type(value: SSAValue) -> Attribute:
    return value.type.get_element_type() if isinstance(value.type, ShapedType) else value.type


# --------------------------------------------------------------------------
# Fusion of one producer into one consumer
# --------------------------------------------------------------------------


class _Fusion:
    """`consumer` rewritten to read `producer`'s inputs in place of its result.

    An input the consumer reads through map `c` becomes, for each producer
    input read through `p`, that input read through `p ∘ inverse(out) ∘ c`
    (`out` is the producer's output map), and the producer's body is inlined
    where the consumer's body used the element. Equal (value, map) inputs are
    read once."""

    def __init__(self, producer: linalg.GenericOp, consumer: linalg.GenericOp):
        self.producer = producer
        self.consumer = consumer
        # The fused op's inputs, numbered, and for each consumer input either
        # the number of the input it becomes or, where it read the producer,
        # the map from consumer to producer loops and the producer's inputs.
        self.inputs: dict[tuple[SSAValue, AffineMap], int] = {}
        self.sources: list[int | tuple[AffineMap, list[int]]] = []
        to_producer_result = _maps(producer)[-1].inverse_permutation()
        assert to_producer_result is not None
        for value, m in zip(consumer.inputs, _input_maps(consumer)):
            if value is producer.res[0]:
                to_producer = to_producer_result.compose(m)
                slots = [
                    self._slot(v, pm.compose(to_producer))
                    for v, pm in zip(producer.inputs, _input_maps(producer))
                ]
                self.sources.append((to_producer, slots))
            else:
                self.sources.append(self._slot(value, m))

    def _slot(self, value: SSAValue, m: AffineMap) -> int:
        return self.inputs.setdefault((value, m), len(self.inputs))

    def loops_are_defined(self) -> bool:
        """Whether every loop of the fused op still runs along a whole dim of
        some operand, which is where its trip count comes from."""
        maps = [m for _, m in self.inputs] + _maps(self.consumer)[len(self.consumer.inputs) :]
        results = tuple(r for m in maps for r in m.results)
        return AffineMap(maps[-1].num_dims, 0, results).inverse_permutation() is not None

    def build(self) -> linalg.GenericOp:
        values = [v for v, _ in self.inputs]
        inits = list(self.consumer.outputs)
        block = Block(arg_types=[_element_type(v) for v in (*values, *inits)])
        consumer_block = self.consumer.body.block
        mapping: dict[SSAValue, SSAValue] = dict(
            zip(consumer_block.args[len(self.sources) :], block.args[len(values) :])
        )
        inlined: dict[AffineMap, SSAValue] = {}  # one copy per distinct read
        for arg, source in zip(consumer_block.args, self.sources):
            if isinstance(source, int):
                mapping[arg] = block.args[source]
                continue
            to_producer, slots = source
            if to_producer not in inlined:
                inlined[to_producer] = self._inline_producer(block, [block.args[s] for s in slots], to_producer)
            mapping[arg] = inlined[to_producer]
        for op in consumer_block.ops:
            block.add_op(op.clone(mapping))
        fused = linalg.GenericOp(
            values,
            inits,
            Region(block),
            [AffineMapAttr(m) for _, m in self.inputs] + list(self.consumer.indexing_maps.data[len(self.sources) :]),
            self.consumer.iterator_types,
            self.consumer.result_types,
            self.consumer.doc,
            self.consumer.library_call,
        )
        fused.attributes.update(self.consumer.attributes)
        if kinds := [*_kinds(self.producer), *_kinds(self.consumer)]:
            fused.attributes[FUSED_KINDS_ATTR] = ArrayAttr(kinds)
        return fused

    def _inline_producer(self, block: Block, args: Sequence[SSAValue], to_producer: AffineMap) -> SSAValue:
        """Copy the producer's body into `block` reading `args`; its loop
        indices become the consumer's through `to_producer`. Returns the
        value it yields."""
        body = self.producer.body.block
        mapping: dict[SSAValue, SSAValue] = dict(zip(body.args, args))
        for op in body.ops:
            if isinstance(op, linalg.YieldOp):
                return mapping.get(op.operands[0], op.operands[0])
            if isinstance(op, linalg.IndexOp):
                index = _index_op(to_producer.results[op.dim.value.data])
                block.add_op(index)
                mapping[op.result] = index.results[0]
            else:
                block.add_op(op.clone(mapping))
        raise AssertionError("a linalg.generic body ends with linalg.yield")


def _index_op(expr: AffineExpr) -> Operation:
    """The op computing loop index expression `expr` in a fused body: a
    consumer loop index, or a constant where the consumer broadcasts."""
    if isinstance(expr, AffineDimExpr):
        return linalg.IndexOp(expr.position)
    assert isinstance(expr, AffineConstantExpr)
    return arith.ConstantOp(IntegerAttr(expr.value, IndexType()))


# --------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------


def _may_compute_in(consumer: linalg.GenericOp, m: AffineMap, cheap: bool, epilogue: bool) -> bool:
    """Whether `consumer`, reading a producer's result through `m`, may
    compute the producer's elements itself (see the module docstring)."""
    if not m.is_projected_permutation(allow_zero_in_results=True):
        return False
    if epilogue:
        return _writes_pointwise(consumer) and _is_permutation(m)
    reductions = _reduction_dims(consumer)
    broadcast = set(range(m.num_dims)) - m.used_dims()
    return not broadcast or (cheap and (not reductions or broadcast <= reductions))


@dataclass
class FuseIntoConsumers(RewritePattern):
    """Fuse an elementwise producer into every consumer, then erase it."""

    max_recompute_ops: int

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: linalg.GenericOp, rewriter: PatternRewriter):
        if not _is_elementwise_producer(op):
            return
        reads: list[tuple[linalg.GenericOp, AffineMap]] = []
        for use in op.res[0].uses:
            consumer = use.operation
            if not isinstance(consumer, linalg.GenericOp) or use.index >= len(consumer.inputs):
                return  # also an init, reshaped or returned: it must stay
            reads.append((consumer, _input_maps(consumer)[use.index]))
        consumers = list(dict.fromkeys(consumer for consumer, _ in reads))
        cheap = _cost(op) <= self.max_recompute_ops
        epilogue = _contraction_read(op) is not None
        if not consumers or (len(consumers) > 1 and (epilogue or not cheap)):
            return
        if not all(_may_compute_in(consumer, m, cheap, epilogue) for consumer, m in reads):
            return
        fusions = [_Fusion(op, consumer) for consumer in consumers]
        if not all(f.loops_are_defined() for f in fusions):
            return
        for fusion in fusions:
            rewriter.replace(fusion.consumer, fusion.build())
        _erase_with_dead_operands(rewriter, op)


def _is_dead(op: Operation) -> bool:
    """Unused and without effects; structured ops on tensors are values."""
    if isinstance(op, LinalgStructuredOperation) and op.results:
        return not any(r.uses for r in op.results)
    return is_trivially_dead(op)


def _erase_with_dead_operands(rewriter: PatternRewriter, op: Operation) -> None:
    """Erase `op`, then whatever only it used (its init, a fill, constants)."""
    operands = list(op.operands)
    rewriter.erase(op)
    for value in operands:
        owner = value.owner
        if isinstance(owner, Operation) and owner.parent is not None and _is_dead(owner):
            _erase_with_dead_operands(rewriter, owner)


def mark_epilogues(module: ModuleOp) -> None:
    """Mark each elementwise generic that is the only reader of a
    contraction's result, element by element, with the contraction's kind."""
    for op in module.walk():
        if not isinstance(op, linalg.GenericOp) or not _writes_pointwise(op):
            continue
        contraction = _contraction_read(op)
        if contraction is None or not contraction.res[0].has_one_use():
            continue
        kind = contraction.attributes.get(OP_KIND_ATTR)
        if isinstance(kind, StringAttr):
            op.attributes[EPILOGUE_ATTR] = kind


@dataclass(frozen=True)
class FuseElementwisePass(ModulePass):
    """Fuse elementwise linalg.generic producers into their consumers (chains, reductions, epilogues)."""

    name = "fuse-elementwise"

    max_recompute_ops: int = 4
    """A producer whose body has at most this many arithmetic ops may be
    computed more than once: in several consumers, or per broadcast index."""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FuseIntoConsumers(self.max_recompute_ops)).rewrite_module(op)
        mark_epilogues(op)
