"""Plan which tensors stay in an on-chip scratchpad and which are spilled.

A scratchpad accelerator runs the model's nn ops one after another, in the
order they appear. While an op runs, its operands and its result must all be
on chip, and everything on chip at that moment must fit in the scratchpad.
Between ops the plan may drop tensors; a tensor produced on chip that is
dropped while still needed (or that is a model output) must first be
written off chip, and any tensor needed again must be read back. The goal,
as in COSMA (combined scheduling, memory allocation and tensor replacement
for DNN accelerators), is the fewest off-chip bytes: the unavoidable reads
of inputs and weights and writes of outputs, plus spill writes and reloads.

The model, stated over a `SpillProblem`:

* a plan is, for every op, the set of tensors resident while it runs;
  `evaluate` derives the traffic from consecutive sets, so both solvers are
  costed (and checked) by one function;
* loads happen just before the op that needs them: loading earlier moves
  the same bytes and only takes space;
* a dirty tensor (produced on chip, never written) costs its size when
  dropped while still live; once written it stays clean, so dropping and
  reloading it again costs only the read.

`solve_exact` is a dynamic program over the resident set and its dirty
subset, step by step: at each step it keeps the current op's resident
operands (dropping and reloading one is never cheaper) and tries every
subset of the other live residents, keeping the cheapest way to reach each
(resident, dirty) state. It is exact for this model and exponential in the
number of simultaneously live tensors, so it runs on graphs of at most
`EXACT_MAX_TENSORS` tensors. `solve_heuristic` is Belady's rule made aware
of write-backs: when over capacity, evict the resident tensor used again
furthest in the future, preferring clean ones on ties.

The pass annotates each nn op with `loom.mem` and the function with totals;
it changes no semantics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import combinations

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    i64,
)
from xdsl.ir import Block, BlockArgument, OpResult, SSAValue
from xdsl.passes import ModulePass

from compiler.diagnostics import LoomError
from compiler.targets import load_target
from dialects import nn

EXACT_MAX_TENSORS = 12
NEVER = math.inf


# --------------------------------------------------------------------------
# The problem and its cost model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One op: the distinct tensors it reads and the tensor it produces."""

    operands: tuple[int, ...]
    result: int
    label: str = ""


@dataclass(frozen=True)
class SpillProblem:
    sizes: tuple[int, ...]  # bytes per tensor
    offchip: frozenset[int]  # tensors that start off chip (inputs, weights)
    outputs: frozenset[int]  # tensors that must end up off chip
    steps: tuple[Step, ...]
    capacity: int

    def need(self, step: Step) -> int:
        return sum(self.sizes[t] for t in step.operands) + self.sizes[step.result]

    def bytes_of(self, tensors: frozenset[int] | set[int]) -> int:
        return sum(self.sizes[t] for t in tensors)

    def uses(self) -> list[list[int]]:
        """Step indices at which each tensor is read, ascending."""
        uses: list[list[int]] = [[] for _ in self.sizes]
        for index, step in enumerate(self.steps):
            for t in step.operands:
                uses[t].append(index)
        return uses

    def everything_offchip_bytes(self) -> int:
        """Traffic without a scratchpad: every op reads its operands and writes its result."""
        return sum(self.need(step) for step in self.steps)

    def check_fits(self) -> None:
        for step in self.steps:
            need = self.need(step)
            if need > self.capacity:
                raise LoomError(
                    f"plan-spills: {step.label or 'an op'} needs {need} bytes on chip for its operands"
                    f" and result, but the scratchpad holds {self.capacity} bytes"
                )


@dataclass(frozen=True)
class StepTraffic:
    loads: tuple[int, ...]  # first reads of inputs and weights
    reloads: tuple[int, ...]  # reads of tensors that were on chip before
    spills: tuple[int, ...]  # dirty tensors written off chip to make room before this step
    offchip_bytes: int  # bytes of the three above
    resident_bytes: int


@dataclass(frozen=True)
class Schedule:
    resident: tuple[frozenset[int], ...]
    steps: tuple[StepTraffic, ...]
    stores: tuple[int, ...]  # outputs written off chip after the last step
    offchip_bytes: int
    peak_bytes: int
    solver: str = ""


def _next_use_after(uses: list[int], step: int) -> float:
    return next((u for u in uses if u > step), NEVER)


def evaluate(problem: SpillProblem, resident: Sequence[frozenset[int]], solver: str = "") -> Schedule:
    """Cost a plan given as the resident set of every step; ValueError if it is infeasible."""
    uses = problem.uses()
    on_chip: frozenset[int] = frozenset()
    dirty: set[int] = set()
    copies = set(problem.offchip)  # tensors with a valid off-chip copy
    seen = set()  # tensors that have been on chip
    traffic: list[StepTraffic] = []
    for index, (step, now) in enumerate(zip(problem.steps, resident, strict=True)):
        if not set(step.operands) | {step.result} <= now:
            raise ValueError(f"step {index}: operands and result must be resident")
        if step.result in on_chip or step.result in copies:
            raise ValueError(f"step {index}: tensor {step.result} is produced twice")
        if problem.bytes_of(now) > problem.capacity:
            raise ValueError(f"step {index}: {problem.bytes_of(now)} bytes exceed the capacity")
        spills = []
        for t in sorted(on_chip - now):
            still_needed = _next_use_after(uses[t], index - 1) != NEVER or t in problem.outputs
            if t in dirty and still_needed:
                spills.append(t)
                copies.add(t)
            dirty.discard(t)
        brought = sorted(now - on_chip - {step.result})
        if any(t not in copies for t in brought):
            raise ValueError(f"step {index}: a tensor is loaded that has no off-chip copy")
        loads = tuple(t for t in brought if t not in seen)
        reloads = tuple(t for t in brought if t in seen)
        seen.update(now)
        dirty.add(step.result)
        moved = problem.bytes_of(set(spills)) + problem.bytes_of(set(brought))
        traffic.append(StepTraffic(loads, reloads, tuple(spills), moved, problem.bytes_of(now)))
        on_chip = now
    stores = tuple(sorted(t for t in problem.outputs if t in dirty))
    if any(t not in copies and t not in dirty for t in problem.outputs):
        raise ValueError("an output is never produced")
    total = sum(s.offchip_bytes for s in traffic) + problem.bytes_of(set(stores))
    peak = max((s.resident_bytes for s in traffic), default=0)
    return Schedule(tuple(resident), tuple(traffic), stores, total, peak, solver)


# --------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------


def _read_after(uses: list[list[int]], step: int) -> frozenset[int]:
    """Tensors read by some step after `step`."""
    return frozenset(t for t, reads in enumerate(uses) if _next_use_after(reads, step) != NEVER)


def _subsets(items: Sequence[int]) -> Iterator[tuple[int, ...]]:
    for size in range(len(items) + 1):
        yield from combinations(items, size)


def solve_exact(problem: SpillProblem) -> Schedule:
    """The cheapest plan, by dynamic programming over (resident, dirty) states."""
    if len(problem.sizes) > EXACT_MAX_TENSORS:
        raise ValueError(f"the exact solver handles at most {EXACT_MAX_TENSORS} tensors")
    problem.check_fits()
    uses = problem.uses()
    State = tuple[frozenset[int], frozenset[int]]  # (resident, dirty)
    # state -> (cost so far, previous state)
    layers: list[dict[State, tuple[int, State | None]]] = [{(frozenset(), frozenset()): (0, None)}]
    for index, step in enumerate(problem.steps):
        read_later = _read_after(uses, index - 1)
        operands = set(step.operands)
        base = frozenset(operands | {step.result})
        room = problem.capacity - problem.bytes_of(base)
        layer: dict[State, tuple[int, State | None]] = {}
        for state, (cost, _) in layers[-1].items():
            resident, dirty = state
            # Worth keeping: read later, or an output not yet written.
            worth = (resident & read_later) | (resident & dirty & problem.outputs)
            cost += problem.bytes_of(operands - resident)
            optional = sorted(worth - operands)
            for keep in _subsets(optional):
                kept = frozenset(keep)
                if problem.bytes_of(kept) > room:
                    continue
                spilled = problem.bytes_of((worth - operands - kept) & dirty)
                new_dirty = (dirty & (kept | operands)) | {step.result}
                new_state = (base | kept, frozenset(new_dirty))
                if new_state not in layer or cost + spilled < layer[new_state][0]:
                    layer[new_state] = (cost + spilled, state)
        layers.append(layer)
    final = {
        state: cost + problem.bytes_of(state[1] & problem.outputs) for state, (cost, _) in layers[-1].items()
    }
    state = min(final, key=lambda s: (final[s], sorted(s[0])))
    resident: list[frozenset[int]] = []
    for layer in reversed(layers[1:]):
        resident.append(state[0])
        state = layer[state][1]  # type: ignore[assignment]
    schedule = evaluate(problem, resident[::-1], "exact")
    assert schedule.offchip_bytes == min(final.values()), "exact solver disagrees with its cost model"
    return schedule


def solve_heuristic(problem: SpillProblem) -> Schedule:
    """Belady's furthest-next-use eviction, preferring clean tensors on ties."""
    problem.check_fits()
    uses = problem.uses()
    on_chip: set[int] = set()
    dirty: set[int] = set()
    resident: list[frozenset[int]] = []
    for index, step in enumerate(problem.steps):
        on_chip &= _read_after(uses, index - 1) | (dirty & problem.outputs)
        dirty &= on_chip
        needed = set(step.operands) | {step.result}
        while problem.bytes_of(on_chip | needed) > problem.capacity:
            victim = max(
                on_chip - needed,
                key=lambda t: (_next_use_after(uses[t], index - 1), t not in dirty, problem.sizes[t], -t),
            )
            on_chip.discard(victim)
            dirty.discard(victim)
        on_chip |= needed
        dirty.add(step.result)
        resident.append(frozenset(on_chip))
    return evaluate(problem, resident, "heuristic")


def solve(problem: SpillProblem, solver: str = "auto") -> Schedule:
    if solver == "exact" or (solver == "auto" and len(problem.sizes) <= EXACT_MAX_TENSORS):
        try:
            return solve_exact(problem)
        except ValueError as e:
            raise LoomError(f"plan-spills: {e}; use solver=heuristic") from None
    if solver in ("auto", "heuristic"):
        return solve_heuristic(problem)
    raise LoomError(f"plan-spills: unknown solver '{solver}' (auto, exact, heuristic)")


# --------------------------------------------------------------------------
# From IR to problem and back
# --------------------------------------------------------------------------


def tensor_bytes(value: SSAValue) -> int:
    t = value.type
    assert isinstance(t, TensorType)
    return t.element_count() * ((t.element_type.bitwidth + 7) // 8)  # type: ignore[attr-defined]


def describe_op(op: nn.NNOperation, position: int) -> str:
    """How errors name an op: by the DSL name of its result, else by its position."""
    hint = op.result.name_hint
    return f"{op.name} producing %{hint}" if hint else f"{op.name} (nn op {position} of the model)"


@dataclass
class ModelProblem:
    """A function body as a spill problem, remembering which value is which tensor."""

    ops: list[nn.NNOperation]
    values: list[SSAValue] = field(default_factory=list)
    index: dict[SSAValue, int] = field(default_factory=dict)

    def tensor(self, value: SSAValue) -> int:
        if value not in self.index:
            self.index[value] = len(self.values)
            self.values.append(value)
        return self.index[value]

    @classmethod
    def of_block(cls, block: Block, capacity: int) -> tuple[ModelProblem, SpillProblem]:
        model = cls([op for op in block.ops if isinstance(op, nn.NNOperation)])
        steps = []
        for position, op in enumerate(model.ops):
            operands = tuple(dict.fromkeys(model.tensor(v) for v in op.operands))
            steps.append(Step(operands, model.tensor(op.result), describe_op(op, position)))
        terminator = block.last_op
        returned = terminator.operands if isinstance(terminator, func.ReturnOp) else ()
        outputs = frozenset(model.tensor(v) for v in returned)
        produced = {id(op) for op in model.ops}
        offchip = frozenset(
            i
            for i, v in enumerate(model.values)
            if isinstance(v, BlockArgument) or (isinstance(v, OpResult) and id(v.op) not in produced)
        )
        sizes = tuple(tensor_bytes(v) for v in model.values)
        return model, SpillProblem(sizes, offchip, outputs, tuple(steps), capacity)


def _positions(op: nn.NNOperation, tensors: Sequence[int], model: ModelProblem) -> ArrayAttr:
    """Operand positions (first occurrence) of the given tensors."""
    values = [model.values[t] for t in tensors]
    positions = sorted({list(op.operands).index(v) for v in values if v in op.operands})
    return ArrayAttr([IntegerAttr(p, i64) for p in positions])


def _result_fate(tensor: int, schedule: Schedule) -> str:
    if any(tensor in s.spills for s in schedule.steps):
        return "spilled"
    if tensor in schedule.stores:
        return "stored"
    return "kept"


def annotate(model: ModelProblem, schedule: Schedule) -> None:
    for op, traffic in zip(model.ops, schedule.steps, strict=True):
        op.attributes["loom.mem"] = DictionaryAttr(
            {
                "load": _positions(op, traffic.loads, model),
                "reload": _positions(op, traffic.reloads, model),
                "result": StringAttr(_result_fate(model.index[op.result], schedule)),
                "offchip_bytes": IntegerAttr(traffic.offchip_bytes, i64),
                "resident_bytes": IntegerAttr(traffic.resident_bytes, i64),
            }
        )


# --------------------------------------------------------------------------
# The pass
# --------------------------------------------------------------------------


def scratchpad_capacity(capacity: int | None, target_config: str | None, level: str | None) -> int:
    if capacity is not None and target_config is not None:
        raise LoomError("plan-spills: give capacity or target-config, not both")
    if level is not None and target_config is None:
        raise LoomError("plan-spills: level names a level of target-config, which is missing")
    if capacity is not None:
        if capacity <= 0:
            raise LoomError(f"plan-spills: capacity must be a positive number of bytes, got {capacity}")
        return capacity
    if target_config is None:
        raise LoomError("plan-spills needs capacity=BYTES or target-config=NAME")
    target = load_target(target_config)
    return (target.level(level) if level else target.scratchpad()).capacity_bytes


@dataclass(frozen=True)
class PlanSpillsPass(ModulePass):
    """Plan scratchpad residency and spills of nn tensors to minimise off-chip traffic.

    `capacity` is the scratchpad size in bytes; alternatively `target-config`
    names a hardware description whose largest on-chip level (or `level`) is
    the scratchpad. `solver` is auto (exact on small graphs), exact or
    heuristic.
    """

    name = "plan-spills"

    capacity: int | None = None
    target_config: str | None = None
    level: str | None = None
    solver: str = "auto"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        capacity = scratchpad_capacity(self.capacity, self.target_config, self.level)
        for function in op.walk():
            if not isinstance(function, func.FuncOp) or not function.body.blocks:
                continue
            block = function.body.blocks[0]
            model, problem = ModelProblem.of_block(block, capacity)
            if not problem.steps:
                continue
            schedule = solve(problem, self.solver)
            annotate(model, schedule)
            function.attributes["loom.offchip_bytes_before"] = IntegerAttr(problem.everything_offchip_bytes(), i64)
            function.attributes["loom.offchip_bytes_after"] = IntegerAttr(schedule.offchip_bytes, i64)
            function.attributes["loom.peak_onchip_bytes"] = IntegerAttr(schedule.peak_bytes, i64)
            function.attributes["loom.scratchpad_bytes"] = IntegerAttr(capacity, i64)
            function.attributes["loom.spill_solver"] = StringAttr(schedule.solver)
