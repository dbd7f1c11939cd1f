"""Where every element of a buffer lives in the RTL, and how a nest's lanes find it.

A *buffer* is what `design.buffer_root` names: the storage behind a tensor
and every view, channel and destination operand of it. In hardware it is a
set of banks (`seq.firmem` memories), cyclically partitioned as the nest
that spreads the most lanes over it asked (`#hls.partition`): element
index `i` along a partitioned dim of factor `F` sits in bank `i mod F` at
row `i div F`. Unpartitioned buffers are one bank addressed by the flat
(row-major) element index, so views of another shape (a flatten) address
them too.

A nest's access is affine in the loop indices. With lanes taken `u_d` at a
time along dim `d`, iteration `j` and lane offset `o` touch index
`sum_d c_d (u_d j_d + o_d) + k` on every physical dim: a constant per lane
plus a step per issue dim. The datapath walks these indices incrementally
(`AccessPlan.carry_deltas`), so no address needs a multiplier or divider.
A lane's bank is *static* when every step is a multiple of the partition
factor; otherwise it moves and a crossbar routes it. Every iteration's
accesses are checked here: two lanes may share a bank only at the same row
(the RTL gives each access one port per bank).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.ir.affine import AffineMap

from backends.fpga.device import type_bits
from backends.fpga.hls_model import NestSchedule, lane_offsets
from compiler.diagnostics import LoomError


class UnsupportedDesign(LoomError):
    """The schedule asks for something the RTL generator does not build."""


@dataclass(frozen=True)
class PhysicalDim:
    extent: int
    factor: int  # banks along this dim (1: not partitioned)

    @property
    def rows(self) -> int:
        return math.ceil(self.extent / self.factor)


@dataclass(frozen=True)
class Layout:
    """The banks of one buffer."""

    name: str
    shape: tuple[int, ...]  # the root tensor's
    width: int  # element bits
    dims: tuple[PhysicalDim, ...]
    flat: bool  # one physical dim: the row-major element index

    @property
    def banks(self) -> int:
        return math.prod(d.factor for d in self.dims)

    @property
    def depth(self) -> int:
        return math.prod(d.rows for d in self.dims)

    def row_strides(self) -> tuple[int, ...]:
        return _strides(tuple(d.rows for d in self.dims))

    def bank_strides(self) -> tuple[int, ...]:
        return _strides(tuple(d.factor for d in self.dims))

    def place(self, flat_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(bank, row) of row-major element indices."""
        index = [flat_index] if self.flat else list(np.unravel_index(flat_index, self.shape))
        bank = sum(((i % d.factor) * s for i, d, s in zip(index, self.dims, self.bank_strides())), np.zeros_like(flat_index))
        row = sum(((i // d.factor) * s for i, d, s in zip(index, self.dims, self.row_strides())), np.zeros_like(flat_index))
        return bank, row

    def images(self, array: np.ndarray) -> list[np.ndarray]:
        """The contents of every bank (rows past the end stay zero)."""
        flat = np.asarray(array).reshape(-1)
        bank, row = self.place(np.arange(flat.size))
        out = [np.zeros(self.depth, np.int64) for _ in range(self.banks)]
        for b in range(self.banks):
            chosen = bank == b
            out[b][row[chosen]] = flat[chosen]
        return out


def _strides(extents: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for extent in reversed(extents):
        strides.append(step)
        step *= extent
    return tuple(reversed(strides))


def make_layout(name: str, root: SSAValue, accesses: list[tuple[NestSchedule, int]]) -> Layout:
    """The banks of `root` from the access that partitions it most."""
    t = root.type
    assert isinstance(t, TensorType)
    shape = tuple(t.get_shape())
    width = type_bits(t)
    widest = max(accesses, key=lambda a: a[0].accesses[a[1]].banks(), default=None)
    parts = widest[0].accesses[widest[1]].partitions if widest else ()
    if not parts or math.prod(shape) <= 1:
        return Layout(name, shape, width, (PhysicalDim(max(1, math.prod(shape)), 1),), True)
    ns, operand = widest  # type: ignore[misc]
    if tuple(ns.nest.shapes[operand]) != shape:
        raise UnsupportedDesign(f"buffer {name} is partitioned through a view of another shape")
    factors = [1] * len(shape)
    for p in parts:
        if p.kind == "block":
            raise UnsupportedDesign(f"buffer {name}: block partitions are not built")
        factors[p.dim] = p.banks(shape[p.dim])
    return Layout(name, shape, width, tuple(PhysicalDim(e, f) for e, f in zip(shape, factors)), False)


def _affine(amap: AffineMap, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(coefficients [results x dims], constants [results]) of an affine map, checked at a few points."""
    zero = np.array(amap.eval([0] * rank, []), np.int64)
    coefficients = np.zeros((len(amap.results), rank), np.int64)
    for d in range(rank):
        unit = [0] * rank
        unit[d] = 1
        coefficients[:, d] = np.array(amap.eval(unit, []), np.int64) - zero
    rng = np.random.default_rng(0)
    for _ in range(3):
        point = rng.integers(0, 7, rank)
        if not np.array_equal(np.array(amap.eval(point.tolist(), []), np.int64), coefficients @ point + zero):
            raise UnsupportedDesign(f"the index map {amap} is not affine")
    return coefficients, zero


@dataclass(frozen=True)
class LaneIndex:
    """One distinct lane position of an access: its index on every physical dim at the first iteration."""

    start: tuple[int, ...]
    lanes: tuple[int, ...]  # lane numbers that touch this position


@dataclass(frozen=True)
class AccessPlan:
    """How one operand of one nest walks its buffer."""

    layout: Layout
    steps: np.ndarray  # [physical dims x loop dims]: index change per issue step along each loop dim
    issue_trips: tuple[int, ...]
    positions: tuple[LaneIndex, ...]
    lane_position: tuple[int, ...]  # lane -> its position

    def carry_deltas(self, level: int) -> tuple[int, ...]:
        """Index change on each physical dim when loop dim `level` advances and the dims inside it wrap."""
        inner = range(level + 1, len(self.issue_trips))
        return tuple(int(self.steps[a, level] - sum(self.steps[a, d] * (self.issue_trips[d] - 1) for d in inner))
                     for a in range(len(self.layout.dims)))

    def carry_levels(self) -> list[int]:
        return [d for d, trip in enumerate(self.issue_trips) if trip > 1]

    def moving_bank(self, dim: int) -> bool:
        """Whether the bank along physical `dim` changes from one iteration to the next."""
        factor = self.layout.dims[dim].factor
        return factor > 1 and any(self.carry_deltas(c)[dim] % factor for c in self.carry_levels())


def plan_access(ns: NestSchedule, operand: int, layout: Layout) -> AccessPlan:
    """The access of `operand` in nest `ns` on `layout`; raises UnsupportedDesign on port conflicts."""
    nest, factors = ns.nest, ns.directives.factors
    rank = len(nest.trips)
    coefficients, constants = _affine(nest.maps[operand], rank)
    view = nest.shapes[operand]
    if layout.flat:  # the flat element index through the view's row-major strides
        strides = np.array(_strides(tuple(view)), np.int64)
        coefficients, constants = strides @ coefficients, np.array([strides @ constants])
        coefficients = coefficients.reshape(1, rank)
    issue_trips = tuple(t // f for t, f in zip(nest.trips, factors))
    steps = coefficients * np.array(factors, np.int64)
    offsets = lane_offsets(factors)
    starts = [tuple(int(v) for v in coefficients @ np.array(o, np.int64) + constants) for o in offsets]
    positions: dict[tuple[int, ...], list[int]] = {}
    for lane, start in enumerate(starts):
        positions.setdefault(start, []).append(lane)
    order = list(positions)
    plan = AccessPlan(layout, steps, issue_trips, tuple(LaneIndex(s, tuple(positions[s])) for s in order),
                      tuple(order.index(s) for s in starts))
    if layout.banks > 1 and len(order) > 1:
        _check_conflicts(plan, ns.op, operand)
    return plan


def _check_conflicts(plan: AccessPlan, op: Operation, operand: int) -> None:
    """Every iteration: positions sharing a bank must share its row."""
    layout = plan.layout
    issue = np.indices(plan.issue_trips).reshape(len(plan.issue_trips), -1)
    base = plan.steps @ issue  # [physical dims x issues]
    banks, rows = [], []
    for position in plan.positions:
        index = base + np.array(position.start, np.int64)[:, None]
        bank = sum((index[a] % d.factor) * s for a, (d, s) in enumerate(zip(layout.dims, layout.bank_strides())))
        row = sum((index[a] // d.factor) * s for a, (d, s) in enumerate(zip(layout.dims, layout.row_strides())))
        banks.append(bank)
        rows.append(row)
    bank_grid, row_grid = np.stack(banks), np.stack(rows)
    for p in range(len(plan.positions)):
        for q in range(p + 1, len(plan.positions)):
            clash = (bank_grid[p] == bank_grid[q]) & (row_grid[p] != row_grid[q])
            if clash.any():
                raise UnsupportedDesign(
                    f"{op.name} {op.attributes.get('loom.op', '')}: lanes of operand {operand} read two rows of one "
                    f"bank of {layout.name} in one iteration; the RTL gives each access one port per bank")
