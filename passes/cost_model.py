"""Analytical cost model for tiling structured loop nests on a cache hierarchy.

A loop nest is the iteration domain of a `linalg.generic` and the affine
index each operand is read or written at. A schedule tiles it at several
levels, outermost first; every tile must fit the memory level it is meant to
live in, and the data of each tile is fetched from wherever the enclosing
tile lives. The predicted time is the larger of the compute time (at the
peak rate the micro-kernel can sustain) and, per memory level, the traffic it
serves divided by its bandwidth. For contractions (matmul, convolution) the
schedule is chosen analytically, inside out, in the manner of BLIS:

* a register tile of `rows` x `vectors * lanes` accumulators, as many
  independent FMAs as the FMA pipes need to stay busy, without exceeding
  the vector register file;
* a reduction block `kc` such that the `kc` vectors of the vector input a
  kernel call reads, which the kernels of the next rows read again, stay
  in L1;
* row and column blocks (`mc`, `nc`) such that the block of the output and
  the two input panels it needs stay in L2, with at least one row block per
  core so the outer loop can run on every core; among those, the one with
  the least predicted time and traffic.

All functions here are pure; `passes.tile` turns a schedule into loops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.ir.affine import AffineBinaryOpExpr, AffineBinaryOpKind, AffineConstantExpr, AffineDimExpr, AffineExpr

from compiler.targets import MemoryLevel, TargetDescription

# The share of L2 and beyond a tile may fill; the rest absorbs conflict
# misses and the data around the tile (the other operands' next tiles, the
# stack). A micro-kernel's tile may fill L1: it streams through it in order.
UTILISATION = 0.5
# The share of L1 for the vector-input panel the kernels of successive row
# tiles reuse; the other half holds the broadcast input and accumulators
# streaming past it (the BLIS rule for kc).
PANEL_SHARE = 0.5
# Cycles from an FMA's issue to its result being usable by the next FMA on
# the same accumulator (4 on current x86 and Arm cores).
FMA_LATENCY_CYCLES = 4
# Register tiles with more rows than this stop paying off: each row is one
# more stream of scalar loads of the broadcast operand.
MAX_KERNEL_ROWS = 8
MAX_KERNEL_VECTORS = 4
# The narrowest vector a kernel uses, and the fewest columns worth one (a
# single column runs as well in scalar code).
MIN_VECTOR_LANES = 4
MIN_VECTOR_COLUMNS = 2


# --------------------------------------------------------------------------
# Machines
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Machine:
    """What the tiler needs to know of a target, for one element type."""

    lanes: int
    vector_registers: int
    macs_per_second: float  # one core, all its FMA pipes busy
    fma_pipes: int
    cores: int
    clock_hz: float
    memory: tuple[MemoryLevel, ...]  # fastest first; the last is main memory

    @staticmethod
    def from_target(target: TargetDescription, dtype: str = "f32") -> Machine:
        units = [unit for unit in target.compute if unit.supports(dtype)] or target.compute
        unit = max(units, key=lambda u: u.ops_per_cycle)
        lanes = max(1, unit.vector_lanes(dtype) or unit.lanes)
        return Machine(
            lanes=lanes,
            # 512-bit SIMD (AVX-512, SVE-512) comes with 32 registers; narrower x86 SIMD with 16.
            vector_registers=32 if lanes * 32 >= 512 else 16,
            macs_per_second=unit.ops_per_cycle * target.clock_hz,
            fma_pipes=max(1, round(unit.ops_per_cycle / lanes)),
            cores=max(1, unit.count),
            clock_hz=target.clock_hz,
            memory=tuple(target.memory),
        )

    def bytes_per_second(self, level: int) -> float:
        return self.memory[level].bandwidth_bytes_per_cycle * self.clock_hz

    def usable_bytes(self, level: int) -> float:
        if level == len(self.memory) - 1:
            return math.inf
        return self.memory[level].capacity_bytes * (UTILISATION if level else 1.0)


# --------------------------------------------------------------------------
# Loop nests
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearIndex:
    """One operand index as `constant + sum(coefficients[d] * d)` over loop dims."""

    coefficients: tuple[int, ...]
    constant: int

    def uses(self, dim: int) -> bool:
        return self.coefficients[dim] != 0

    def extent(self, tile: Sequence[int]) -> int:
        """How many consecutive positions this index covers over a tile."""
        return sum(c * (t - 1) for c, t in zip(self.coefficients, tile)) + 1


def _is_linear(expr: AffineExpr) -> bool:
    if isinstance(expr, AffineDimExpr | AffineConstantExpr):
        return True
    if isinstance(expr, AffineBinaryOpExpr):
        if expr.kind == AffineBinaryOpKind.Add:
            return _is_linear(expr.lhs) and _is_linear(expr.rhs)
        if expr.kind == AffineBinaryOpKind.Mul:
            constant = isinstance(expr.lhs, AffineConstantExpr) or isinstance(expr.rhs, AffineConstantExpr)
            return constant and _is_linear(expr.lhs) and _is_linear(expr.rhs)
    return False


def linear_index(expr: AffineExpr, num_dims: int) -> LinearIndex | None:
    """`expr` as a linear index with non-negative coefficients, or None when it
    is not one (mod, division, symbols, negative strides)."""
    if not _is_linear(expr):
        return None
    constant = expr.eval([0] * num_dims, [])
    coefficients = tuple(
        expr.eval([int(d == dim) for d in range(num_dims)], []) - constant for dim in range(num_dims)
    )
    if constant < 0 or any(c < 0 for c in coefficients):
        return None
    return LinearIndex(coefficients, constant)


@dataclass(frozen=True)
class Access:
    """How one operand is indexed by the loop dims."""

    indices: tuple[LinearIndex, ...]
    element_bytes: int
    written: bool = False

    def uses(self, dim: int) -> bool:
        return any(index.uses(dim) for index in self.indices)

    def elements(self, tile: Sequence[int]) -> int:
        return math.prod(index.extent(tile) for index in self.indices)


@dataclass(frozen=True)
class LoopNest:
    """An iteration domain, which dims reduce, and the operands (inputs, then outputs)."""

    sizes: tuple[int, ...]
    reductions: frozenset[int]
    accesses: tuple[Access, ...]

    @property
    def rank(self) -> int:
        return len(self.sizes)

    @property
    def points(self) -> int:
        return math.prod(self.sizes)

    @property
    def inputs(self) -> tuple[Access, ...]:
        return tuple(a for a in self.accesses if not a.written)

    @property
    def output(self) -> Access:
        return next(a for a in self.accesses if a.written)


def footprint(nest: LoopNest, tile: Sequence[int]) -> int:
    """Bytes of every operand a tile of the domain touches."""
    return sum(access.elements(tile) * access.element_bytes for access in nest.accesses)


# --------------------------------------------------------------------------
# Contractions
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Contraction:
    """The roles of a multiply-accumulate nest's dims for a vector kernel.

    The output's last index walks `vector_dim` contiguously, and so does the
    last index of `vector_input`; `broadcast_input` does not depend on it, so
    one of its elements multiplies a whole vector. `row_dim` indexes the
    broadcast input and the output but not the vector input: the kernel keeps
    several rows of accumulators and reuses each vector load for all of them.
    `reduction_dim` is the reduction blocked for the L1 cache.
    """

    vector_dim: int
    row_dim: int | None
    reduction_dim: int
    vector_input: int
    broadcast_input: int


def _unit_last_index(access: Access, dim: int) -> bool:
    *outer, last = access.indices
    return last.coefficients[dim] == 1 and not any(index.uses(dim) for index in outer)


def contraction_roles(nest: LoopNest) -> Contraction | None:
    """The vector-kernel roles of a two-input, one-output reduction nest, or
    None when no dim can be vectorised that way."""
    inputs = nest.inputs
    if len(inputs) != 2 or len(nest.accesses) != 3 or not nest.reductions:
        return None
    out = nest.output
    if not out.indices or any(sum(i.coefficients) != 1 or i.constant for i in out.indices):
        return None  # the output must be a plain projection of the parallel dims
    vector_dim = out.indices[-1].coefficients.index(1)
    if vector_dim in nest.reductions:
        return None
    for vector_input in (0, 1):
        broadcast_input = 1 - vector_input
        if _unit_last_index(inputs[vector_input], vector_dim) and not inputs[broadcast_input].uses(vector_dim):
            break
    else:
        return None
    rows = [
        d for d in range(nest.rank)
        if d != vector_dim and d not in nest.reductions and out.uses(d)
        and inputs[broadcast_input].uses(d) and not inputs[vector_input].uses(d)
    ]
    row_dim = max(rows, key=lambda d: nest.sizes[d]) if rows else None
    reduction_dim = min(nest.reductions, key=lambda d: (nest.sizes[d] == 1, d))
    return Contraction(vector_dim, row_dim, reduction_dim, vector_input, broadcast_input)


@dataclass(frozen=True)
class Kernel:
    """A register tile: `rows` x `vectors` vectors of `lanes` accumulators."""

    rows: int
    vectors: int
    lanes: int

    @property
    def columns(self) -> int:
        return self.vectors * self.lanes

    @property
    def registers(self) -> int:
        """Accumulators, one vector of the vector input per column, one broadcast."""
        return self.rows * self.vectors + self.vectors + 1


@dataclass(frozen=True)
class VectorSlices:
    """How vectors of `width` lanes cover `count` x `width` columns; the last
    vector has only its first `tail` lanes active (masked loads and stores)
    unless `tail` is 0."""

    width: int
    count: int
    tail: int


def vector_slices(columns: int, lanes: int) -> VectorSlices | None:
    """Full-width vectors when there are at least `lanes` columns, else the
    narrowest vector (of at least MIN_VECTOR_LANES) holding them all: the
    fewest vectors, so a row of 10 is one masked vector of 16 rather than 8
    lanes and 2 scalar columns. None below MIN_VECTOR_COLUMNS."""
    if columns < MIN_VECTOR_COLUMNS:
        return None
    width = lanes if columns >= lanes else max(MIN_VECTOR_LANES, 1 << (columns - 1).bit_length())
    count = -(-columns // width)
    return VectorSlices(width, count, columns % width)


def kernel_efficiency(rows: int, columns: int, machine: Machine) -> float:
    """Share of peak FMA throughput an accumulator tile of rows x columns reaches:
    vector code needs FMA_LATENCY_CYCLES x pipes independent accumulators to
    keep the pipes busy, and masked or narrower vectors leave lanes idle; a
    tile too narrow for vectors runs scalar."""
    slices = vector_slices(columns, machine.lanes)
    if slices is None:
        return 1 / machine.lanes
    accumulators = rows * slices.count
    busy = min(1.0, accumulators / (FMA_LATENCY_CYCLES * machine.fma_pipes))
    return busy * columns / (slices.count * machine.lanes)


def _split_efficiency(extent: int, tile: int, efficiency) -> float:
    """Average of `efficiency(size)` over the full tiles and the remainder of `extent`."""
    full, rest = divmod(extent, tile)
    total = full * tile * efficiency(tile) + (rest * efficiency(rest) if rest else 0)
    return total / extent


def compute_efficiency(nest: LoopNest, roles: Contraction | None, kernel: Kernel | None,
                       machine: Machine) -> float:
    if roles is None or kernel is None:
        return 1 / machine.lanes
    rows = nest.sizes[roles.row_dim] if roles.row_dim is not None else 1
    columns = nest.sizes[roles.vector_dim]

    def by_rows(r: int) -> float:
        return _split_efficiency(columns, kernel.columns, lambda c: kernel_efficiency(r, c, machine))

    return _split_efficiency(rows, kernel.rows, by_rows)


# --------------------------------------------------------------------------
# Schedules and their cost
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class TileLevel:
    """Tile sizes per dim (a size at least the enclosing extent leaves the dim
    untiled at this level) and the order of this level's loops, outermost first."""

    sizes: tuple[int, ...]
    order: tuple[int, ...]


@dataclass(frozen=True)
class Schedule:
    levels: tuple[TileLevel, ...]  # outermost first, each tiling the previous level's tile
    roles: Contraction | None = None
    kernel: Kernel | None = None


@dataclass(frozen=True)
class Loop:
    dim: int
    trips: int


def loops_and_tiles(nest: LoopNest, levels: Sequence[TileLevel]) -> list[tuple[list[Loop], tuple[int, ...]]]:
    """For each level: every tile loop enclosing its tiles (all levels so far,
    outermost first) and its tile shape."""
    extents = nest.sizes
    loops: list[Loop] = []
    result = []
    for level in levels:
        tile = tuple(min(size, extent) for size, extent in zip(level.sizes, extents))
        loops = loops + [Loop(d, -(-extents[d] // tile[d])) for d in level.order if tile[d] < extents[d]]
        result.append((loops, tile))
        extents = tile
    return result


def reloads(access: Access, loops: Sequence[Loop]) -> int:
    """How many times an operand's tile is fetched: once per iteration of
    every loop out to the innermost one that moves it; loops inside that
    reuse it."""
    deepest = max((i for i, loop in enumerate(loops) if access.uses(loop.dim)), default=-1)
    return math.prod(loop.trips for loop in loops[:deepest + 1])


def traffic(nest: LoopNest, loops: Sequence[Loop], tile: Sequence[int]) -> int:
    """Bytes fetched into the memory holding tiles of shape `tile` over the
    whole nest; outputs count twice (read, then written back)."""
    total = 0
    for access in nest.accesses:
        moved = access.elements(tile) * access.element_bytes * reloads(access, loops)
        total += moved * (2 if access.written else 1)
    return total


def register_level(nest: LoopNest, roles: Contraction, kernel: Kernel) -> TileLevel:
    """The tile the micro-kernel holds in registers: its accumulators, one
    reduction step at a time, reductions looping in domain order inside
    whatever loops over accumulator tiles the levels above leave."""
    sizes = [1] * nest.rank
    sizes[roles.vector_dim] = kernel.columns
    rows = (roles.row_dim,) if roles.row_dim is not None else ()
    for d in rows:
        sizes[d] = kernel.rows
    others = tuple(d for d in range(nest.rank) if d not in nest.reductions and d not in (roles.vector_dim, *rows))
    return TileLevel(tuple(sizes), others + (roles.vector_dim, *rows) + tuple(sorted(nest.reductions)))


@dataclass(frozen=True)
class LevelTraffic:
    memory: str
    bytes: int
    seconds: float


@dataclass(frozen=True)
class Prediction:
    time_s: float
    compute_s: float
    levels: tuple[LevelTraffic, ...]  # innermost (register) traffic first

    @property
    def main_memory_bytes(self) -> int:
        return self.levels[-1].bytes


def home_level(machine: Machine, bytes_needed: int, innermost: int) -> int:
    """The first memory level from `innermost` outwards a tile of `bytes_needed` fits."""
    for level in range(innermost, len(machine.memory)):
        if bytes_needed <= machine.usable_bytes(level):
            return level
    return len(machine.memory) - 1


def predict(nest: LoopNest, schedule: Schedule, machine: Machine, workers: int = 1) -> Prediction:
    """Predicted time of the scheduled nest: the slowest of compute and the
    traffic each memory level serves. Levels are meant to live, inside out,
    in registers, L1, L2, ...; a tile too large for its level lives further
    out, and the tiles inside it are then fed from there. With `workers`
    cores, compute and every level but main memory scale with their number."""
    levels = list(schedule.levels)
    if schedule.roles is not None and schedule.kernel is not None:
        levels.append(register_level(nest, schedule.roles, schedule.kernel))
    tiled = [([], nest.sizes)] + loops_and_tiles(nest, levels)
    homes = [0] * len(tiled)
    for i in range(len(tiled) - 2, -1, -1):  # the register tile (last) lives in registers
        wanted = min(len(tiled) - 2 - i, len(machine.memory) - 1)
        homes[i] = home_level(machine, footprint(nest, tiled[i][1]), wanted)
    main = len(machine.memory) - 1
    flows: list[LevelTraffic] = []
    for i in range(len(tiled) - 1, -1, -1):
        source = homes[i - 1] if i else main
        loops, tile = tiled[i]
        moved = traffic(nest, loops, tile) if i else footprint(nest, tile)
        speedup = workers if source != main else 1
        flows.append(LevelTraffic(machine.memory[source].name, moved,
                                  moved / machine.bytes_per_second(source) / speedup))
    efficiency = compute_efficiency(nest, schedule.roles, schedule.kernel, machine)
    compute = nest.points / (machine.macs_per_second * efficiency) / workers
    return Prediction(max(compute, *(f.seconds for f in flows)), compute, tuple(flows))


# --------------------------------------------------------------------------
# Choosing a schedule
# --------------------------------------------------------------------------


def balanced(extent: int, limit: int, multiple: int = 1) -> int:
    """The tile size, a multiple of `multiple` and at most `limit` (but at
    least `multiple`), that splits `extent` into the fewest, most even tiles."""
    limit = max(multiple, limit)
    if extent <= limit:
        return extent
    blocks = -(-extent // limit)
    while True:
        size = -(-extent // blocks)
        size = -(-size // multiple) * multiple
        if size <= limit:
            return size
        blocks += 1


def divisor_or_balanced(extent: int, limit: int, multiple: int = 1) -> int:
    """A tile size of at most `limit` (in multiples of `multiple`): the largest
    one dividing `extent` if that is at least half the limit (no remainder
    tile), else the balanced one."""
    if extent <= limit:
        return extent
    for size in range(limit - limit % multiple, max(multiple, limit // 2) - 1, -multiple):
        if size and extent % size == 0:
            return size
    return balanced(extent, limit, multiple)


def choose_kernel(nest: LoopNest, roles: Contraction, machine: Machine) -> Kernel | None:
    """The register tile with the best predicted compute rate over the whole
    nest, then the fewest remainder tiles, the fewest L1 loads per FMA and
    the fewest registers; None when the vector dim is too short for vectors."""
    columns = nest.sizes[roles.vector_dim]
    slices = vector_slices(columns, machine.lanes)
    if slices is None:
        return None
    max_rows = nest.sizes[roles.row_dim] if roles.row_dim is not None else 1
    candidates = [
        Kernel(rows, vectors, slices.width)
        for vectors in range(1, min(MAX_KERNEL_VECTORS, slices.count) + 1)
        for rows in range(1, min(MAX_KERNEL_ROWS, max_rows) + 1)
    ]

    def rank(kernel: Kernel) -> tuple[float, int, float, int]:
        efficiency = compute_efficiency(nest, roles, kernel, machine)
        # Every dim the tile does not divide needs a second copy of the kernel.
        remainders = (columns > kernel.columns and columns % kernel.columns != 0) + (max_rows % kernel.rows != 0)
        loads_per_fma = (kernel.rows + kernel.columns) / (kernel.rows * kernel.columns)
        return (-efficiency, remainders, loads_per_fma, kernel.registers)

    fitting = [k for k in candidates if k.registers <= machine.vector_registers]
    return min(fitting, key=rank) if fitting else None


def _tile(nest: LoopNest, assign: dict[int, int]) -> tuple[int, ...]:
    """A tile shape: the `assign`ed dims as given, other parallel dims 1 and
    other reductions whole."""
    return tuple(
        assign.get(d, size if d in nest.reductions else 1) for d, size in enumerate(nest.sizes)
    )


def _largest(extent: int, fits) -> int:
    """The largest size in 1..extent that `fits` (a monotone predicate); 1 if none does."""
    low, high = 1, extent
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def _divisions(extent: int, multiple: int) -> list[int]:
    """Balanced tile sizes of `extent` in multiples of `multiple`, largest first."""
    sizes = {divisor_or_balanced(extent, limit, multiple) for limit in range(multiple, extent + multiple, multiple)}
    return sorted(sizes, reverse=True)


def outer_tile(nest: LoopNest, roles: Contraction, kernel: Kernel, machine: Machine) -> tuple[int, ...]:
    """The cache-level tile around `kernel`. The reduction block `kc` is the
    largest for which the panel of the vector input one kernel call reads
    (`kc` x `nr`) fits half of L1 and the whole kernel tile fits L1: the
    kernels down a column of row tiles all reuse that panel, while their
    accumulators live in registers and the broadcast input streams past. Among output blocks
    of `mc` rows by `nc` columns whose input panels and accumulators fit L2,
    with at least one row block per core, the one with the least predicted
    time, then the least time spent moving data, wins: the most reuse."""
    v, r, k = roles.vector_dim, roles.row_dim, roles.reduction_dim
    rows = nest.sizes[r] if r is not None else 1
    columns, depth = nest.sizes[v], nest.sizes[k]
    nr, mr = min(kernel.columns, columns), min(kernel.rows, rows)
    with_rows = (lambda m: {r: m}) if r is not None else (lambda m: {})

    def panel_fits(kc: int) -> bool:
        micro = _tile(nest, {v: nr, k: kc} | with_rows(mr))
        panel = nest.inputs[roles.vector_input]
        return (panel.elements(micro) * panel.element_bytes <= machine.memory[0].capacity_bytes * PANEL_SHARE
                and footprint(nest, micro) <= machine.usable_bytes(0))

    kc = divisor_or_balanced(depth, _largest(depth, panel_fits))
    row_cap = rows if rows < machine.cores * mr else divisor_or_balanced(rows, -(-rows // machine.cores), mr)
    row_sizes = [m for m in _divisions(rows, mr) if m <= row_cap] or [mr]

    def cost(tile: tuple[int, ...]) -> tuple[float, float, int]:
        prediction = predict(nest, contraction_schedule(nest, roles, kernel, tile), machine)
        return prediction.time_s, sum(level.seconds for level in prediction.levels), -math.prod(tile)

    candidates = [_tile(nest, {v: nr, k: kc} | with_rows(mr))]
    for nc in _divisions(columns, nr):
        for mc in row_sizes:
            tile = _tile(nest, {v: nc, k: kc} | with_rows(mc))
            if footprint(nest, tile) <= machine.usable_bytes(1):
                candidates.append(tile)
                break  # row sizes run largest first: the largest that fits
    return min(candidates, key=cost)


def contraction_schedule(nest: LoopNest, roles: Contraction, kernel: Kernel,
                         outer: tuple[int, ...]) -> Schedule:
    """Two tile levels around `kernel`: `outer`, looping over the other
    parallel dims, rows, columns, then reductions; inside it, register
    tiles, columns outside rows, so the vector input's panel stays in L1
    while the kernel walks down the broadcast input."""
    v, r = roles.vector_dim, roles.row_dim
    rows = [r] if r is not None else []
    others = [d for d in range(nest.rank) if d not in (v, *rows) and d not in nest.reductions]
    outer_level = TileLevel(outer, tuple(others + rows + [v] + sorted(nest.reductions)))
    inner = _tile(nest, {v: kernel.columns} | ({r: kernel.rows} if r is not None else {}))
    inner = tuple(outer[d] if d in nest.reductions else min(size, outer[d]) for d, size in enumerate(inner))
    return Schedule((outer_level, TileLevel(inner, tuple(others + [v] + rows))), roles, kernel)


def choose_schedule(nest: LoopNest, machine: Machine) -> Schedule | None:
    """The schedule for a contraction nest, or None when it has no vector
    kernel (the tiler then leaves the op alone)."""
    roles = contraction_roles(nest) if nest.points else None
    if roles is None:
        return None
    kernel = choose_kernel(nest, roles, machine)
    if kernel is None:
        return None
    return contraction_schedule(nest, roles, kernel, outer_tile(nest, roles, kernel, machine))
