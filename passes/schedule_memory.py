"""Order the ops of model functions to lower their peak memory.

nn ops are pure, so any topological order of a model function computes the
same results, but the order decides how many intermediate tensors are live
at once. This pass picks an order that minimises the peak of the bytes held
by intermediate tensors, measured the way `bufferize` will allocate them:

* an op's result gets a buffer when the op runs, and the buffer is freed
  after the last op that reads it (or a reshape of it);
* a reshape is a view of its operand's buffer: it costs nothing and keeps
  that buffer alive while the view is used;
* model inputs, constants and results computed straight into an output are
  in memory the caller owns, so they do not count; a buffer reached through
  a returned reshape is copied out at the end, so it lives to the end.

Internal scratch buffers of an op's lowering (a softmax's running maximum,
say) are not known at this level and are not counted.

The search walks schedules one op at a time. A partial schedule is summed up
by the set of ops it has run: that set alone fixes which buffers are live, so
of two schedules reaching the same set only the one with the lower peak so
far matters. Keeping every set makes the search exact, which is affordable
for small functions (and for any function whose dependences leave few
choices); beyond that only the `beam_width` most promising sets are kept at
each step. The original order wins ties, so the pass never makes a function
worse, and it leaves one alone unless it strictly improves it.

Each op it orders gets `loom.order` (its step), and the function
`loom.peak_bytes_before` and `loom.peak_bytes_after`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, TensorType, i64
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter
from xdsl.traits import IsTerminator

from dialects import nn
from passes.memory_liveness import shaped_bytes

ORDER_ATTR = "loom.order"
PEAK_BEFORE_ATTR = "loom.peak_bytes_before"
PEAK_AFTER_ATTR = "loom.peak_bytes_after"

# Functions with at most this many ops to order are always solved exactly.
EXACT_OPS = 16

# Ops whose result is a view of their first operand, as bufferize lowers them.
_VIEW_OPS = (nn.ReshapeOp,)


@dataclass
class MemoryGraph:
    """What ordering needs to know about a straight-line function.

    Ops are numbered in their original order; sets of ops are bit masks.
    `releases[i]` lists the buffers op `i` may be the last to need, as
    (mask of the ops that need it, bytes): the buffer is freed once all of
    them have run.
    """

    ops: list[Operation]
    predecessors: list[int]
    successors: list[list[int]]
    allocated: list[int]
    releases: list[list[tuple[int, int]]]

    @property
    def size(self) -> int:
        return len(self.ops)


def _is_ordered(op: Operation) -> bool:
    """Ops without operands (constants) depend on nothing and stay put."""
    return bool(op.operands) and not op.has_trait(IsTerminator)


@dataclass
class _Buffer:
    """An intermediate buffer: the op that allocates it, its size (0 when
    it is an output) and the ops that read it or a view of it."""

    producer: int
    size: int
    needed_by: int = 0
    kept_to_end: bool = False


def memory_graph(block: Block) -> MemoryGraph:
    """The dependences and buffer lifetimes of the ops of `block`."""
    ops = [op for op in block.ops if _is_ordered(op)]
    index = {op: i for i, op in enumerate(ops)}
    predecessors = [0] * len(ops)
    successors: list[list[int]] = [[] for _ in ops]
    owned: list[_Buffer] = []
    buffer_of: dict[SSAValue, _Buffer] = {}  # a value's own buffer, or the one it views
    for i, op in enumerate(ops):
        for operand in op.operands:
            producer = index.get(operand.owner)  # pyright: ignore[reportArgumentType]
            if producer is not None and not predecessors[i] >> producer & 1:
                predecessors[i] |= 1 << producer
                successors[producer].append(i)
            if operand in buffer_of:
                buffer_of[operand].needed_by |= 1 << i
        for result in op.results:
            if isinstance(op, _VIEW_OPS):
                if op.operands[0] in buffer_of:
                    buffer_of[result] = buffer_of[op.operands[0]]
            elif isinstance(result.type, TensorType):
                buffer_of[result] = _Buffer(i, shaped_bytes(result.type), 1 << i)
                owned.append(buffer_of[result])
    terminator = block.last_op
    if terminator is not None and terminator.has_trait(IsTerminator):
        for value in terminator.operands:
            if (buffer := buffer_of.get(value)) is not None:
                if value.owner is ops[buffer.producer]:
                    buffer.size = 0  # computed straight into an output
                else:
                    buffer.kept_to_end = True  # a view of it is copied out at the end
    allocated = [0] * len(ops)
    releases: list[list[tuple[int, int]]] = [[] for _ in ops]
    for buffer in owned:
        allocated[buffer.producer] += buffer.size
        if buffer.size and not buffer.kept_to_end:
            for i in _members(buffer.needed_by):
                releases[i].append((buffer.needed_by, buffer.size))
    return MemoryGraph(ops, predecessors, successors, allocated, releases)


def _members(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


@dataclass(eq=False)
class _Partial:
    """A partial schedule: the ops it ran, the bytes live after them, the
    highest live count so far, and how it got here. Which ops are ready to
    run next is worked out only for partial schedules the search extends."""

    done: int
    live: int
    peak: int
    previous: _Partial | None = field(default=None, repr=False)
    last: int = -1
    _ready: frozenset[int] | None = field(default=None, repr=False)

    def then(self, graph: MemoryGraph, op: int) -> _Partial:
        """This schedule followed by `op`."""
        done = self.done | 1 << op
        during = self.live + graph.allocated[op]
        freed = sum(size for needed_by, size in graph.releases[op] if not needed_by & ~done)
        return _Partial(done, during - freed, max(self.peak, during), self, op)

    def ready(self, graph: MemoryGraph) -> frozenset[int]:
        if self._ready is None:
            if self.previous is None:
                self._ready = frozenset(i for i, p in enumerate(graph.predecessors) if not p)
            else:
                now_ready = (j for j in graph.successors[self.last] if not graph.predecessors[j] & ~self.done)
                self._ready = self.previous.ready(graph) - {self.last} | frozenset(now_ready)
        return self._ready

    def order(self) -> tuple[int, ...]:
        steps: list[int] = []
        partial: _Partial | None = self
        while partial is not None and partial.previous is not None:
            steps.append(partial.last)
            partial = partial.previous
        return tuple(reversed(steps))


def peak_bytes(graph: MemoryGraph, order: tuple[int, ...]) -> int:
    """The peak live bytes of running the ops in `order`."""
    partial = _Partial(0, 0, 0)
    for op in order:
        assert op in partial.ready(graph), f"op {op} scheduled before its operands"
        partial = partial.then(graph, op)
    return partial.peak


@dataclass(frozen=True)
class Schedule:
    order: tuple[int, ...]
    peak: int
    exact: bool


def best_schedule(graph: MemoryGraph, beam_width: int | None) -> Schedule:
    """The order with the lowest peak found keeping at most `beam_width`
    partial schedules per step (all of them when None: exact)."""
    level = [_Partial(0, 0, 0)]
    exact = True
    for _ in range(graph.size):
        following: dict[int, _Partial] = {}
        for partial in level:
            for op in sorted(partial.ready(graph)):
                known = following.get(partial.done | 1 << op)
                if known is None or max(partial.peak, partial.live + graph.allocated[op]) < known.peak:
                    candidate = partial.then(graph, op)
                    following[candidate.done] = candidate
        level = list(following.values())
        if beam_width is not None and len(level) > beam_width:
            exact = False
            level = sorted(level, key=lambda p: (p.peak, p.live, p.done))[:beam_width]
    (final,) = level
    return Schedule(final.order(), final.peak, exact)


def _reorder(block: Block, ops: list[Operation]) -> None:
    terminator = block.last_op
    assert terminator is not None
    for op in ops:
        op.detach()
        Rewriter.insert_op(op, InsertPoint.before(terminator))


def schedule_function(function: func.FuncOp, beam_width: int) -> None:
    block = function.body.block
    graph = memory_graph(block)
    original = tuple(range(graph.size))
    before = peak_bytes(graph, original)
    found = best_schedule(graph, None if graph.size <= EXACT_OPS else beam_width)
    order = found.order if found.peak < before else original
    if order != original:
        _reorder(block, [graph.ops[i] for i in order])
    for step, i in enumerate(order):
        graph.ops[i].attributes[ORDER_ATTR] = IntegerAttr(step, i64)
    function.attributes[PEAK_BEFORE_ATTR] = IntegerAttr(before, i64)
    function.attributes[PEAK_AFTER_ATTR] = IntegerAttr(min(found.peak, before), i64)


@dataclass(frozen=True)
class ScheduleMemoryPass(ModulePass):
    """Reorder the ops of model functions to minimise peak intermediate memory."""

    name = "schedule-memory"

    beam_width: int = 64

    def __post_init__(self):
        if self.beam_width < 1:
            raise ValueError(f"beam_width must be positive, got {self.beam_width}")

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for function in op.ops:
            if isinstance(function, func.FuncOp) and nn.MODEL_ATTR in function.attributes:
                schedule_function(function, self.beam_width)
