"""Tile structured ops to the memory hierarchy of the target.

Runs on buffers, after `bufferize` and before `convert-linalg-to-loops`. A
`linalg.generic` with a reduction whose body multiplies and accumulates f32
(matmul, convolution) gets the schedule `passes.cost_model` chooses for the
target's caches; any reduction op named in the `tiles` option gets the
sizes given there instead. The op becomes the standard tiled form: `scf.for`
loops over tiles, and inside them the same generic on `memref.subview`s of
its operands. Shapes are static, so a dim a tile size does not divide is
peeled: the last, smaller tile is a second copy of the inner nest with its
own static sizes.

Elementwise consumers of the result (bias, activation, residual, the
narrowing of an f32 accumulator) move into the loop nest: they run on each
output tile right after the reduction over it finishes, while it is still
in cache. The fill that zeroes the accumulator moves in the same way, to
just before the reduction.

With more than one thread, the outermost tile loop, when it runs over a
parallel dim and the op is predicted to take long enough to amortise
starting threads, is marked `loom.parallel` for the backend to split over
cores. Only parallel dims are ever split, so every output element is
computed by the same instructions in the same order whatever the thread
count. The chosen sizes are recorded as `loom.tiles` and the prediction as
`loom.cost` on the tiled ops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, func, memref, scf
from xdsl.dialects.builtin import (
    AffineMapAttr,
    ArrayAttr,
    DenseArrayBase,
    DictionaryAttr,
    Float32Type,
    FloatAttr,
    IndexType,
    IntegerAttr,
    MemRefType,
    ModuleOp,
    StringAttr,
    UnitAttr,
    f64,
    i64,
)
from xdsl.dialects.linalg import ops as linalg
from xdsl.dialects.linalg.attrs import IteratorType
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.ir.affine import AffineDimExpr, AffineExpr, AffineMap
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from compiler.diagnostics import LoomError
from compiler.targets import load_target
from passes.cost_model import (
    Access,
    LinearIndex,
    LoopNest,
    Machine,
    Schedule,
    TileLevel,
    choose_kernel,
    choose_schedule,
    contraction_roles,
    contraction_schedule,
    linear_index,
    predict,
)
from passes.loop_builders import IndexBuilder, Offset

OP_ATTR = "loom.op"
NAME_ATTR = "loom.name"
TILES_ATTR = "loom.tiles"
COST_ATTR = "loom.cost"
PARALLEL_ATTR = "loom.parallel"

# Below this predicted time an op stays on one core: starting and joining a
# worker thread costs about 50 microseconds per call on the development
# machine (`benchmarks/cpu_matmul.py --overhead` measures it), and splitting
# should save several times that.
PARALLEL_MIN_SECONDS = 100e-6


# --------------------------------------------------------------------------
# Reading ops as loop nests
# --------------------------------------------------------------------------


def _element_bytes(t: MemRefType) -> int:
    width = getattr(t.element_type, "bitwidth", None) or t.element_type.width.data
    return max(1, width // 8)


def _loop_ranges(operands: Sequence[SSAValue], maps: Sequence[AffineMap]) -> tuple[int, ...] | None:
    """Each loop's extent, read off an operand dim indexed by that loop alone."""
    sizes: dict[int, int] = {}
    for value, affine_map in zip(operands, maps):
        for size, expr in zip(value.type.get_shape(), affine_map.results):
            if isinstance(expr, AffineDimExpr):
                sizes.setdefault(expr.position, size)
    num_dims = maps[0].num_dims if maps else 0
    if len(sizes) != num_dims:
        return None
    return tuple(sizes[d] for d in range(num_dims))


def loop_nest(op: linalg.GenericOp) -> LoopNest | None:
    """The loop nest of a generic on statically shaped buffers whose indices
    are all linear with non-negative coefficients; None for any other op."""
    operand_types = [v.type for v in op.operands]
    if not all(isinstance(t, MemRefType) and all(d >= 0 for d in t.get_shape()) for t in operand_types):
        return None
    maps = [m.data for m in op.indexing_maps]
    if len(op.outputs) != 1 or any(m.num_symbols for m in maps):
        return None
    sizes = _loop_ranges(op.operands, maps)
    if sizes is None:
        return None
    accesses = []
    for index, (value, affine_map) in enumerate(zip(op.operands, maps)):
        indices = [linear_index(e, affine_map.num_dims) for e in affine_map.results]
        if any(i is None for i in indices):
            return None
        accesses.append(Access(tuple(indices), _element_bytes(value.type), index >= len(op.inputs)))
    reductions = frozenset(d for d, it in enumerate(op.iterator_types) if it.data == IteratorType.REDUCTION)
    return LoopNest(tuple(sizes), reductions, tuple(accesses))


def is_f32_multiply_accumulate(op: linalg.GenericOp) -> bool:
    """Whether the body is `out + in0 * in1` (either order) on f32 values."""
    if not all(isinstance(v.type, MemRefType) and isinstance(v.type.element_type, Float32Type)
               for v in op.operands):
        return False
    block = op.body.block
    body = list(block.ops)
    if len(body) != 3 or len(block.args) != 3:
        return False
    product, total, done = body
    if not (isinstance(product, arith.MulfOp) and isinstance(total, arith.AddfOp)
            and isinstance(done, linalg.YieldOp)):
        return False
    x, y, acc = block.args
    return ({product.lhs, product.rhs} == {x, y}
            and {total.lhs, total.rhs} == {acc, product.result}
            and done.operands[0] == total.result)


# --------------------------------------------------------------------------
# The tiles option
# --------------------------------------------------------------------------


def parse_tile_overrides(text: str) -> dict[str, tuple[int, ...]]:
    """`"matmul=64,256,128;h=32,32,32"` -> {"matmul": (64, 256, 128), "h": (32, 32, 32)}."""
    overrides: dict[str, tuple[int, ...]] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        key, equals, sizes = entry.partition("=")
        try:
            values = tuple(int(s) for s in sizes.split(","))
        except ValueError:
            values = ()
        if not equals or not key.strip() or not values:
            raise LoomError(f"tile sizes: expected 'op=size,size,...' (entries separated by ';'), got '{entry}'")
        overrides[key.strip()] = values
    return overrides


def format_tile_overrides(tiles: dict[str, Sequence[int]]) -> str:
    return ";".join(f"{key}={','.join(str(s) for s in sizes)}" for key, sizes in tiles.items())


def _label(op: Operation) -> str:
    name, kind = op.attributes.get(NAME_ATTR), op.attributes.get(OP_ATTR)
    parts = [f"'{a.data}'" for a in (name, kind) if isinstance(a, StringAttr)]
    return " / ".join(parts) or op.name


def override_for(op: linalg.GenericOp, nest: LoopNest,
                 overrides: dict[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    """The override that applies to `op` (its DSL name first, then its kind),
    checked and clamped to the op's extents."""
    for attr in (NAME_ATTR, OP_ATTR):
        key = op.attributes.get(attr)
        if isinstance(key, StringAttr) and key.data in overrides:
            sizes = overrides[key.data]
            if len(sizes) != nest.rank:
                raise LoomError(
                    f"tile sizes for {_label(op)}: got {len(sizes)} sizes, but the op has "
                    f"{nest.rank} loops (extents {', '.join(map(str, nest.sizes))})"
                )
            if any(s <= 0 for s in sizes):
                raise LoomError(f"tile sizes for {_label(op)} must be positive, got {', '.join(map(str, sizes))}")
            return tuple(min(s, e) for s, e in zip(sizes, nest.sizes))
    return None


# --------------------------------------------------------------------------
# Fusion candidates
# --------------------------------------------------------------------------


def _identity(affine_map: AffineMap) -> bool:
    return affine_map == AffineMap.identity(affine_map.num_dims)


def _defined_before(value: SSAValue, op: Operation) -> bool:
    owner = value.owner
    if not isinstance(owner, Operation):
        return True
    return owner.parent_block() is op.parent_block() and owner.is_before_in_block(op)


HOISTABLE = (memref.AllocOp, memref.GetGlobalOp, memref.CollapseShapeOp, memref.ExpandShapeOp)


def _movable_before(value: SSAValue, op: Operation) -> list[Operation] | None:
    """The ops to move before `op` so that `value` is defined there: none if it
    already is; an allocation, a global or a view of such (side-effect free,
    nothing to reorder); None when `value` cannot be made available."""
    if _defined_before(value, op):
        return []
    owner = value.owner
    if not isinstance(owner, HOISTABLE) or owner.parent_block() is not op.parent_block():
        return None
    moved: list[Operation] = []
    for operand in owner.operands:
        inner = _movable_before(operand, op)
        if inner is None:
            return None
        moved += inner
    return moved + [owner]


VIEWS = (memref.CollapseShapeOp, memref.ExpandShapeOp, memref.SubviewOp, memref.ViewOp)


def storage(value: SSAValue) -> SSAValue:
    """The buffer `value` is a (possibly nested) view of, or `value` itself."""
    while isinstance(view := value.owner, VIEWS):
        value = view.operands[0]
    return value


def _touches(op: Operation, buffers: set[SSAValue]) -> bool:
    return any(storage(v) in buffers for v in op.operands)


def _ops_between(first: Operation, last: Operation) -> list[Operation]:
    ops, op = [], first.next_op
    while op is not None and op is not last:
        ops.append(op)
        op = op.next_op
    return ops


def _untouched_between(values: Sequence[SSAValue], first: Operation, last: Operation,
                       moving: Sequence[Operation]) -> bool:
    """No op between `first` and `last`, other than those `moving` with them,
    uses the storage of `values` (through any view of it)."""
    buffers = {storage(v) for v in values}
    return not any(_touches(op, buffers) for op in _ops_between(first, last) if op not in moving)


def accumulator_fill(anchor: linalg.GenericOp) -> linalg.FillOp | None:
    """The fill that initialises the anchor's output right before it."""
    out = anchor.outputs[0]
    fill = anchor.prev_op
    while fill is not None and not _touches(fill, {storage(out)}):
        fill = fill.prev_op
    if isinstance(fill, linalg.FillOp) and list(fill.outputs) == [out] and _defined_before(fill.inputs[0], fill):
        return fill
    return None


def epilogue_chain(anchor: linalg.GenericOp) -> list[linalg.GenericOp]:
    """Elementwise generics that consume the anchor's output point by point
    and can run tile by tile inside its loop nest, in order."""
    chain: list[linalg.GenericOp] = []
    produced, last = anchor.outputs[0], anchor
    output_map = anchor.indexing_maps.data[-1].data
    if not output_map.is_projected_permutation():
        return chain
    shape = produced.type.get_shape()
    forbidden = {storage(v) for v in anchor.operands}
    while True:
        consumer = last.next_op
        while consumer is not None and produced not in consumer.operands:
            consumer = consumer.next_op
        nest = loop_nest(consumer) if isinstance(consumer, linalg.GenericOp) else None
        if nest is None:
            return chain
        maps = [m.data for m in consumer.indexing_maps]
        reads = [i for i, v in enumerate(consumer.inputs) if v == produced]
        out = consumer.outputs[0]
        if (
            any(it.data != IteratorType.PARALLEL for it in consumer.iterator_types)
            or nest.sizes != tuple(shape)
            or not reads or any(not _identity(maps[i]) for i in reads)
            or not _identity(maps[-1])
            or storage(out) == storage(produced) or storage(out) in forbidden
            or not _untouched_between(consumer.operands, anchor, consumer, chain)
        ):
            return chain
        hoisted = [_movable_before(v, anchor) for v in consumer.operands]
        if any(h is None for h in hoisted):
            return chain
        for op in dict.fromkeys(o for h in hoisted for o in h):
            op.detach()
            Rewriter.insert_op(op, InsertPoint.before(anchor))
        chain.append(consumer)
        forbidden |= {storage(v) for v in consumer.inputs}
        produced, last = out, consumer


# --------------------------------------------------------------------------
# Emitting the loop nest
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    dim: int
    size: int


def _steps(nest: LoopNest, schedule: Schedule) -> list[Step]:
    steps, extents = [], list(nest.sizes)
    for level in schedule.levels:
        for d in level.order:
            size = min(level.sizes[d], extents[d])
            if size < extents[d]:
                steps.append(Step(d, size))
        extents = [min(s, e) for s, e in zip(level.sizes, extents)]
    return steps


def _identity_indices(rank: int) -> tuple[LinearIndex, ...]:
    return tuple(LinearIndex(tuple(int(i == d) for i in range(rank)), 0) for d in range(rank))


def _rebased(index: LinearIndex) -> AffineExpr:
    """`index` without its constant term: the same index inside a subview that starts there."""
    terms = [AffineExpr.dimension(d) * c if c != 1 else AffineExpr.dimension(d)
             for d, c in enumerate(index.coefficients) if c]
    if not terms:
        return AffineExpr.constant(0)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


class NestEmitter(IndexBuilder):
    """Builds the tile loops of one anchor op, with its fill and epilogues."""

    def __init__(self, anchor: linalg.GenericOp, nest: LoopNest, schedule: Schedule,
                 fill: linalg.FillOp | None, epilogues: list[linalg.GenericOp],
                 parallel: bool, attributes: dict[str, Attribute]):
        super().__init__(InsertPoint.before(anchor))
        self.anchor = anchor
        self.nest = nest
        self.steps = _steps(nest, schedule)
        self.fill = fill
        self.epilogues = epilogues
        self.parallel = parallel
        self.attributes = attributes
        self.depth = 0
        split_reductions = [i for i, s in enumerate(self.steps) if s.dim in nest.reductions]
        self.fusion_step = split_reductions[0] if split_reductions else len(self.steps)
        output = anchor.indexing_maps.data[-1].data
        self.output_dims = [e.position for e in output.results]

    # ---- tiles of ops --------------------------------------------------------

    def subview(self, value: SSAValue, indices: Sequence[LinearIndex], offsets: Sequence[Offset],
                extents: Sequence[int]) -> SSAValue:
        source = value.type
        assert isinstance(source, MemRefType)
        starts = [self.linear(index, offsets) for index in indices]
        sizes = [index.extent(extents) for index in indices]
        if all(s == 0 for s in starts) and tuple(sizes) == tuple(source.get_shape()):
            return value
        strides = [1] * len(sizes)
        result = memref.SubviewOp.infer_result_type(source, starts, sizes, strides)
        return self.insert(memref.SubviewOp.get(value, starts, sizes, strides, result)).result

    def generic_on_tile(self, op: linalg.GenericOp, nest: LoopNest, offsets: Sequence[Offset],
                        extents: Sequence[int]) -> linalg.GenericOp:
        """A copy of `op` over one tile of its domain, on subviews of its operands."""
        operands = [self.subview(v, a.indices, offsets, extents) for v, a in zip(op.operands, nest.accesses)]
        maps = [AffineMapAttr(AffineMap(nest.rank, 0, tuple(_rebased(i) for i in a.indices)))
                for a in nest.accesses]
        tile = op.clone()
        tile.operands = operands
        tile.properties["indexing_maps"] = ArrayAttr(maps)
        self.shift_indices(tile, offsets)
        return self.insert(tile)

    def shift_indices(self, tile: linalg.GenericOp, offsets: Sequence[Offset]) -> None:
        """`linalg.index` inside the tile counts from the tile's start; add the start back."""
        for index_op in [o for o in tile.body.walk() if isinstance(o, linalg.IndexOp)]:
            offset = offsets[index_op.dim.value.data]
            if isinstance(offset, int) and offset == 0:
                continue
            shift: list[Operation] = []
            if isinstance(offset, int):
                shift.append(arith.ConstantOp(IntegerAttr(offset, IndexType())))
                offset = shift[0].results[0]
            total = arith.AddiOp(index_op.result, offset)
            Rewriter.insert_op([*shift, total], InsertPoint.after(index_op))
            index_op.result.replace_uses_with_if(total.result, lambda use: use.operation is not total)

    def output_tile(self, offsets: Sequence[Offset], extents: Sequence[int]) -> tuple[list[Offset], list[int]]:
        """The anchor tile's offsets and extents in the output's (and epilogues') domain."""
        return [offsets[d] for d in self.output_dims], [extents[d] for d in self.output_dims]

    def emit_fill(self, offsets: Sequence[Offset], extents: Sequence[int]) -> None:
        assert self.fill is not None
        out = self.fill.outputs[0]
        tile = self.fill.clone()
        tile.operands = [self.fill.inputs[0], self.subview(out, _identity_indices(len(offsets)), offsets, extents)]
        self.insert(tile)

    # ---- loops ------------------------------------------------------------------

    def run(self) -> None:
        self.emit(0, [0] * self.nest.rank, list(self.nest.sizes))

    def emit(self, i: int, offsets: list[Offset], extents: list[int]) -> None:
        fuse_here = i == self.fusion_step
        if fuse_here and self.fill is not None:
            self.emit_fill(*self.output_tile(offsets, extents))
        if i == len(self.steps):
            tile = self.generic_on_tile(self.anchor, self.nest, offsets, extents)
            tile.attributes.update(self.attributes)
        else:
            self.emit_step(i, offsets, extents)
        if fuse_here:
            out_offsets, out_extents = self.output_tile(offsets, extents)
            for epilogue in self.epilogues:
                nest = loop_nest(epilogue)
                assert nest is not None
                self.generic_on_tile(epilogue, nest, out_offsets, out_extents)

    def emit_step(self, i: int, offsets: list[Offset], extents: list[int]) -> None:
        step = self.steps[i]
        d = step.dim
        size = min(step.size, extents[d])
        full, rest = divmod(extents[d], size)

        def variant(start: Offset, extent: int) -> None:
            self.emit(i + 1, offsets[:d] + [start] + offsets[d + 1:], extents[:d] + [extent] + extents[d + 1:])

        parallel = self.parallel and self.depth == 0 and d not in self.nest.reductions and full + bool(rest) > 1
        if parallel:
            self.tile_loop(offsets[d], full + bool(rest), size, parallel=True,
                           body=lambda iv: self.full_or_rest(iv, offsets[d], full, size, rest, variant))
            return
        if full > 1:
            self.tile_loop(offsets[d], full, size, body=lambda iv: variant(iv, size))
        elif full == 1:
            variant(offsets[d], size)
        if rest:
            variant(self.add(offsets[d], full * size), rest)

    def tile_loop(self, start: Offset, trips: int, size: int, body, parallel: bool = False) -> None:
        def run(iv: SSAValue, _: Sequence[SSAValue]) -> list[SSAValue]:
            self.depth += 1
            body(iv)
            self.depth -= 1
            return []

        loop = self.loop(start, self.add(start, trips * size), size, [], run)
        if parallel:
            loop.attributes[PARALLEL_ATTR] = UnitAttr()

    def full_or_rest(self, iv: SSAValue, start: Offset, full: int, size: int, rest: int, variant) -> None:
        """The body of a loop that also runs the remainder tile: full tiles up to
        `start + full * size`, then one tile of `rest`."""
        if not rest:
            variant(iv, size)
            return
        limit = self.index(self.add(start, full * size))
        is_full = self.insert(arith.CmpiOp(iv, limit, "slt")).result
        then_block, else_block = Block(), Block()
        self.insert(scf.IfOp(is_full, [], Region(then_block), Region(else_block)))
        for block, extent in ((then_block, size), (else_block, rest)):
            self.within(block, lambda extent=extent: variant(iv, extent))
            Rewriter.insert_op(scf.YieldOp(), InsertPoint.at_end(block))


# --------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TilePass(ModulePass):
    """Tile reductions (matmul, conv) to the target's caches, fusing elementwise epilogues."""

    name = "tile"

    target_config: str = "host"
    """A built-in hardware description or the path of a TOML file."""

    tiles: str = ""
    """Overrides: `op=size,...` per op kind or DSL name, separated by ';'."""

    threads: int = 1
    """Cores the backend will run parallel loops on; 1 marks none."""

    fuse_epilogues: bool = True
    """Move elementwise consumers into the tile loops (off with `--no-fusion`)."""

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        machine = Machine.from_target(load_target(self.target_config))
        overrides = parse_tile_overrides(self.tiles)
        anchors = [(o, nest) for o in op.walk() if isinstance(o, linalg.GenericOp)
                   and isinstance(o.parent_op(), func.FuncOp)
                   and (nest := loop_nest(o)) is not None and nest.reductions]
        keys = {a.data for o, _ in anchors for a in (o.attributes.get(NAME_ATTR), o.attributes.get(OP_ATTR))
                if isinstance(a, StringAttr)}
        if unknown := sorted(set(overrides) - keys):
            known = ", ".join(sorted(keys)) or "none"
            raise LoomError(f"tile sizes given for {', '.join(map(repr, unknown))}, but no reduction op has "
                            f"that kind or name (reduction ops here: {known})")
        for anchor, nest in anchors:
            self.tile_op(anchor, nest, machine, overrides)

    def tile_op(self, anchor: linalg.GenericOp, nest: LoopNest, machine: Machine,
                overrides: dict[str, tuple[int, ...]]) -> None:
        override = override_for(anchor, nest, overrides)
        schedule = self.schedule(anchor, nest, machine, override)
        if schedule is None or not _steps(nest, schedule):
            return
        fill = accumulator_fill(anchor)
        epilogues = epilogue_chain(anchor) if self.fuse_epilogues else []
        serial = predict(nest, schedule, machine)
        parallel = self.threads > 1 and serial.time_s >= PARALLEL_MIN_SECONDS
        prediction = predict(nest, schedule, machine, self.threads) if parallel else serial
        outer = schedule.levels[0].sizes
        attributes = {
            TILES_ATTR: DenseArrayBase.from_list(i64, [s if s < e else 0 for s, e in zip(outer, nest.sizes)]),
            COST_ATTR: DictionaryAttr({
                "time_s": FloatAttr(prediction.time_s, f64),
                "bytes": IntegerAttr(prediction.main_memory_bytes, i64),
            }),
        }
        NestEmitter(anchor, nest, schedule, fill, epilogues, parallel, attributes).run()
        for done in [*reversed(epilogues), anchor, *([fill] if fill else [])]:
            Rewriter.erase_op(done)

    @staticmethod
    def schedule(anchor: linalg.GenericOp, nest: LoopNest, machine: Machine,
                 override: tuple[int, ...] | None) -> Schedule | None:
        vectorisable = is_f32_multiply_accumulate(anchor)
        if override is None:
            return choose_schedule(nest, machine) if vectorisable else None
        roles = contraction_roles(nest) if vectorisable and nest.points else None
        kernel = choose_kernel(nest, roles, machine) if roles else None
        if roles is not None and kernel is not None:
            return contraction_schedule(nest, roles, kernel, override)
        order = tuple(sorted(range(nest.rank), key=lambda d: (d in nest.reductions, d)))
        return Schedule((TileLevel(override, order),))
