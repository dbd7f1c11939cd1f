"""Place the top-level buffers of lowered functions in one arena.

After bufferization and lowering to loops, a model function allocates each
intermediate buffer at its function's top level and frees it after its last
use, so the buffers live over known spans of top-level ops. Buffers whose
spans are disjoint can share memory. This pass computes the spans, gives
every buffer a byte offset so that buffers live at the same time never
overlap, and replaces the allocations with views of a single arena:

    %arena = memref.alloc() {alignment = 64 : i64} : memref<ARENAxi8>
    %a = memref.view %arena[%offset][] : memref<ARENAxi8> to memref<4x4xf32>
    ...
    memref.dealloc %arena : memref<ARENAxi8>

One arena means one allocation per call instead of one per buffer, and
reused bytes stay warm in cache.

A buffer is planned when it is a statically shaped, identity-layout
`memref.alloc` at the top level, asking for no more than the arena's
alignment and freed by one `memref.dealloc` at the top level; it is live from its allocation to its deallocation, both included.
Allocations inside loops, any the function does not free itself and arenas
(buffers already carved up by `memref.view`) are left alone, so planning
twice changes nothing.

Offsets come from the classic greedy placement: buffers are placed one by
one, each in the tightest gap (aligned) between the buffers already placed
that are live at the same time, else above them all. A few placement orders
are tried and the smallest arena kept. The function records the arena size
(`loom.arena_bytes`), the bytes the separate allocations took
(`loom.unplanned_bytes`) and the most bytes live at any one point
(`loom.max_live_bytes`), a lower bound no placement can beat.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, func, memref
from xdsl.dialects.builtin import (
    IndexType,
    IntegerAttr,
    MemRefType,
    ModuleOp,
    NoneAttr,
    i8,
    i64,
)
from xdsl.ir import Block
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

from passes.memory_liveness import LiveRange, max_live_bytes, shaped_bytes

ARENA_BYTES_ATTR = "loom.arena_bytes"
UNPLANNED_BYTES_ATTR = "loom.unplanned_bytes"
MAX_LIVE_BYTES_ATTR = "loom.max_live_bytes"


@dataclass(frozen=True)
class PlannedBuffer:
    alloc: memref.AllocOp
    dealloc: memref.DeallocOp
    live: LiveRange


def _plannable_type(alloc: memref.AllocOp, alignment: int) -> MemRefType | None:
    t = alloc.memref.type
    if (
        not isinstance(t, MemRefType)
        or alloc.dynamic_sizes
        or alloc.symbol_operands
        or any(d < 0 for d in t.get_shape())
        or not isinstance(t.layout, NoneAttr)
        or not isinstance(t.memory_space, NoneAttr)
        or (alloc.alignment is not None and alloc.alignment.value.data > alignment)
    ):
        return None
    return t


def planned_buffers(block: Block, alignment: int) -> list[PlannedBuffer]:
    """The allocations of `block` that an arena aligned to `alignment` can
    hold, with their spans."""
    position = {op: i for i, op in enumerate(block.ops)}
    buffers: list[PlannedBuffer] = []
    for op in block.ops:
        if not isinstance(op, memref.AllocOp) or (t := _plannable_type(op, alignment)) is None:
            continue
        users = [use.operation for use in op.memref.uses]
        deallocs = [user for user in users if isinstance(user, memref.DeallocOp)]
        if len(deallocs) != 1 or deallocs[0] not in position or any(isinstance(u, memref.ViewOp) for u in users):
            continue  # not freed here, or already an arena
        (dealloc,) = deallocs
        assert isinstance(dealloc, memref.DeallocOp)
        buffers.append(PlannedBuffer(op, dealloc, LiveRange(position[op], position[dealloc], shaped_bytes(t))))
    return buffers


def _align(offset: int, alignment: int) -> int:
    return -(-offset // alignment) * alignment


def _tightest_gap(taken: list[tuple[int, int]], size: int, alignment: int) -> int:
    """The lowest aligned offset of the smallest gap among the byte ranges
    `taken` that holds `size` bytes, or the first aligned offset above them."""
    best: tuple[int, int] | None = None  # (gap, offset)
    offset = 0
    for low, high in sorted(taken):
        if offset + size <= low and (best is None or low - offset < best[0]):
            best = (low - offset, offset)
        offset = max(offset, _align(high, alignment))
    return best[1] if best is not None else offset


def _place(ranges: Sequence[LiveRange], order: Sequence[int], alignment: int) -> list[int]:
    offsets: dict[int, int] = {}
    for i in order:
        taken = [(offsets[j], offsets[j] + ranges[j].size) for j in offsets if ranges[j].overlaps(ranges[i])]
        offsets[i] = _tightest_gap(taken, ranges[i].size, alignment)
    return [offsets[i] for i in range(len(ranges))]


# Orders to place buffers in: biggest first, then the buffers that occupy
# the most bytes for the longest, then in allocation order.
_PLACEMENT_ORDERS: tuple[Callable[[LiveRange], tuple[int, ...]], ...] = (
    lambda r: (-r.size, r.start),
    lambda r: (-r.size * (r.end - r.start + 1), r.start),
    lambda r: (r.start, -r.size),
)


def arena_bytes(ranges: Sequence[LiveRange], offsets: Sequence[int]) -> int:
    return max((offset + r.size for r, offset in zip(ranges, offsets, strict=True)), default=0)


def assign_offsets(ranges: Sequence[LiveRange], alignment: int = 64) -> list[int]:
    """Aligned byte offsets such that buffers live at the same time do not overlap."""
    placements = [
        _place(ranges, sorted(range(len(ranges)), key=lambda i: key(ranges[i])), alignment)
        for key in _PLACEMENT_ORDERS
    ]
    return min(placements, key=lambda offsets: arena_bytes(ranges, offsets))


def plan_function(function: func.FuncOp, alignment: int) -> None:
    if len(function.body.blocks) != 1:
        return
    block = function.body.block
    buffers = planned_buffers(block, alignment)
    if not buffers:
        return
    ranges = [b.live for b in buffers]
    offsets = assign_offsets(ranges, alignment)
    size = arena_bytes(ranges, offsets)

    arena = memref.AllocOp([], [], MemRefType(i8, [size]), IntegerAttr(alignment, i64))
    arena.memref.name_hint = "arena"
    shifts = {offset: arith.ConstantOp(IntegerAttr(offset, IndexType())) for offset in sorted(set(offsets))}
    Rewriter.insert_op([arena, *shifts.values()], InsertPoint.at_start(block))
    for buffer, offset in zip(buffers, offsets, strict=True):
        view = memref.ViewOp(arena, shifts[offset], [], buffer.alloc.memref.type)
        view.result.name_hint = buffer.alloc.memref.name_hint
        Rewriter.replace_op(buffer.alloc, view)
        Rewriter.erase_op(buffer.dealloc)
    terminator = block.last_op
    assert terminator is not None
    Rewriter.insert_op(memref.DeallocOp.get(arena), InsertPoint.before(terminator))

    function.attributes[ARENA_BYTES_ATTR] = IntegerAttr(size, i64)
    function.attributes[UNPLANNED_BYTES_ATTR] = IntegerAttr(sum(r.size for r in ranges), i64)
    function.attributes[MAX_LIVE_BYTES_ATTR] = IntegerAttr(max_live_bytes(ranges), i64)


@dataclass(frozen=True)
class PlanMemoryPass(ModulePass):
    """Place top-level buffers with disjoint lifetimes in one shared arena."""

    name = "plan-memory"

    alignment: int = 64

    def __post_init__(self):
        if self.alignment < 1 or self.alignment & (self.alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {self.alignment}")

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for function in op.ops:
            if isinstance(function, func.FuncOp) and not function.is_declaration:
                plan_function(function, self.alignment)
