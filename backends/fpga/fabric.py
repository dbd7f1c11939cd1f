"""The LUTs a design spends around its operators: control, addresses, bank routing, LUT RAM.

A nest's operators (`hls_model`) are only part of its logic. Every nest
also has its controller: a cycle counter compared against the cycles where
its FSM changes state, an II slot counter and one counter per loop the
issue walks. Every access has address walkers: a row register per
distinct row the lanes start on (per lane where banks move), advanced by
one adder per loop that moves it (selected by which loop carries). A lane whose bank changes from one
iteration to the next needs a crossbar: each bank picks its row among the
lanes that can reach it and each lane picks its word among the banks (a
mux tree on its bank coordinate). A
bank written by more than one nest merges their write ports with muxes.
Banks small enough for LUT RAM (`register_bits` or fewer) are LUTs, in
blocks of `lut_ram_shape` once per read port, instead of EBR; blocks
stacked in depth (LUT RAM or EBR) are joined by a mux per read port.

The figures are built from the device's per-bit operation costs
(`int_add` for counters and adders, `int_eq` for comparisons with a
constant, `mux` per input bit of a k:1 multiplexer, `lut_ram` per
distributed RAM block), so they follow the structure the RTL generator builds, not a per
engine constant.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from xdsl.dialects.builtin import TensorType
from xdsl.dialects.linalg import ops as linalg
from xdsl.ir import Operation, SSAValue

from backends.fpga.device import FpgaDevice, type_bits
from backends.fpga.hls_model import NestSchedule, bank_key, lane_offsets
from dialects import hls

FSM_STATES = 4  # IDLE, ENTER, ISSUE, DRAIN (backends/fpga/rtl/control.py)


def _bits(value: int) -> int:
    return max(1, int(value).bit_length())


@dataclass(frozen=True)
class Buffer:
    """A buffer's banks as the RTL lays it out: partitioned as its most partitioned access asks."""

    shape: tuple[int, ...]
    width: int
    partitions: tuple[hls.PartitionAttr, ...]

    @property
    def factors(self) -> tuple[int, ...]:
        factors = [1] * len(self.shape)
        for p in self.partitions:
            factors[p.dim] = p.banks(self.shape[p.dim])
        return tuple(factors)

    @property
    def banks(self) -> int:
        return math.prod(self.factors)

    @property
    def depth(self) -> int:
        return math.ceil(math.prod(self.shape) / self.banks)


@dataclass(frozen=True)
class AccessShape:
    """Where one access's lanes go: their distinct rows and addresses, whether their banks move
    from one iteration to the next, the banks they can be in, the loops that move their rows."""

    rows: int
    positions: int
    moving: bool
    banks_hit: set[tuple[int, ...]]
    row_levels: int


def _coefficients(amap, rank: int) -> list[list[int]]:
    """[result][loop dim] of an affine index map."""
    zero = amap.eval([0] * rank, [])
    columns = []
    for d in range(rank):
        unit = [0] * rank
        unit[d] = 1
        columns.append([a - z for a, z in zip(amap.eval(unit, []), zero)])
    return [[columns[d][r] for d in range(rank)] for r in range(len(zero))]


def access_shape(ns: NestSchedule, operand: int, buffer: Buffer) -> AccessShape:
    """The lanes' addresses at the first iteration and how the issue steps move them."""
    nest, factors = ns.nest, ns.directives.factors
    amap, view = nest.maps[operand], tuple(nest.shapes[operand])
    addresses = {tuple(amap.eval(list(offset), [])) for offset in lane_offsets(factors)}
    levels = [d for d, (t, f) in enumerate(zip(nest.trips, factors)) if math.ceil(t / f) > 1]
    coefficients = _coefficients(amap, len(factors))
    if view != buffer.shape or buffer.banks == 1:  # one bank, addressed by the flat index
        moves_row = [d for d in levels if any(row[d] for row in coefficients)]
        return AccessShape(len(addresses), len(addresses), False, {()}, len(moves_row))
    bank_factors = buffer.factors
    steps = [[row[d] * factors[d] for d in range(len(factors))] for row in coefficients]
    moving = any(steps[r][d] % bank_factors[r] for d in levels for r in range(len(view)))
    rows = {tuple(a // f for a, f in zip(address, bank_factors)) for address in addresses}
    if moving:
        banks = set(itertools.product(*(range(p.banks(view[p.dim])) for p in buffer.partitions)))
    else:
        banks = {bank_key(buffer.partitions, view, a) for a in addresses}
    moves_row = [d for d in levels if any(steps[r][d] for r in range(len(view)))]
    # positions whose bank stays and that start on one row share a walker; moving ones have their own
    return AccessShape(len(addresses) if moving else len(rows), len(addresses), moving, banks, len(moves_row))


def buffers_of(nests: list[NestSchedule], root_of) -> dict[SSAValue, Buffer]:
    """Every buffer the nests touch through an array (not a scalar), laid out by its most partitioned access."""
    widest: dict[SSAValue, tuple[int, NestSchedule, int]] = {}
    for ns in nests:
        operands = list(ns.op.operands)
        for access in ns.accesses:
            if not access.shape:
                continue
            root = root_of(operands[access.operand])
            if root not in widest or access.banks() > widest[root][0]:
                widest[root] = (access.banks(), ns, access.operand)
    buffers = {}
    for root, (_, ns, operand) in widest.items():
        t = root.type
        assert isinstance(t, TensorType)
        shape = tuple(t.get_shape())
        parts = ns.accesses[operand].partitions if tuple(ns.nest.shapes[operand]) == shape else ()
        buffers[root] = Buffer(shape, type_bits(t), tuple(parts))
    return buffers


@dataclass
class FabricLuts:
    """LUTs beyond the operators, by where they go."""

    per_nest: dict[Operation, int]  # control, walkers and crossbars of each nest
    storage: dict[SSAValue, int]  # buffer -> LUT RAM and the muxes joining blocks stacked in depth
    write_merges: int  # muxes in front of banks several nests write

    @property
    def total(self) -> int:
        return sum(self.per_nest.values()) + sum(self.storage.values()) + self.write_merges


def in_lut_ram(buffer: Buffer, device: FpgaDevice) -> bool:
    """Whether a bank is small enough to be LUT RAM (`register_bits`), not EBR."""
    return buffer.depth * buffer.width <= device.register_bits


@dataclass
class Costs:
    """Per-bit costs of the building blocks, from the device's operation table."""

    device: FpgaDevice

    def adder(self, bits: int) -> int:
        return self.device.cost("int_add", bits=bits).luts

    def compare(self, bits: int) -> int:
        return self.device.cost("int_eq", bits=bits).luts

    def mux(self, inputs: int, bits: int) -> int:
        return self.device.cost("mux", bits=inputs * bits).luts if inputs > 1 else 0

    def counter(self, bits: int, compares: int = 1) -> int:
        """An incrementer with a clear (a 2:1 select per bit) and its terminal comparisons."""
        return self.adder(bits) + self.mux(2, bits) + compares * self.compare(bits)

    def storage(self, buffer: Buffer, read_ports: int) -> int:
        """A buffer's banks: LUT RAM blocks (and the mux joining those stacked in depth) per read
        port, or for EBR banks the mux joining the blocks stacked in depth."""
        device = self.device
        if in_lut_ram(buffer, device):
            depth, width = device.lut_ram_shape
            stacked = math.ceil(buffer.depth / depth)
            per_port = stacked * math.ceil(buffer.width / width) * device.cost("lut_ram").luts
        else:
            depth, _ = device.ebr_shape_for(buffer.depth, buffer.width)
            stacked, per_port = math.ceil(buffer.depth / depth), 0
        return buffer.banks * read_ports * (per_port + self.mux(stacked, buffer.width))


def fabric_luts(nests: list[NestSchedule], device: FpgaDevice, root_of) -> FabricLuts:
    """The control, address, routing and storage LUTs of `nests` built side by side
    (`root_of`: the buffer behind a value, `design.buffer_root`)."""
    costs = Costs(device)
    buffers = buffers_of(nests, root_of)
    per_nest: dict[Operation, int] = {}
    readers: dict[SSAValue, int] = {}
    writers: dict[tuple[SSAValue, tuple[int, ...]], int] = {}
    for ns in nests:
        luts = _control(ns, device, costs)
        operands = list(ns.op.operands)
        output = len(ns.nest.maps) - 1
        body = ns.op.body.block if isinstance(ns.op, linalg.GenericOp) else None
        for access in ns.accesses:
            if not access.shape:
                continue
            if body is not None and access.operand != output and not body.args[access.operand].uses:
                continue  # a shape-only operand (a pooling window)
            root = root_of(operands[access.operand])
            buffer = buffers[root]
            shape = access_shape(ns, access.operand, buffer)
            row_bits = _bits(buffer.depth - 1)
            luts += shape.rows * (shape.row_levels * costs.adder(row_bits) + costs.mux(shape.row_levels, row_bits))
            if shape.moving:
                bank_bits = _bits(buffer.banks - 1)
                luts += shape.positions * buffer.banks * costs.compare(bank_bits)  # which bank each lane is in
                luts += buffer.banks * costs.mux(shape.positions, row_bits)  # each bank's row
                word = buffer.width if access.operand != output else buffer.width + 1
                if access.operand == output:  # each bank's data and enable
                    luts += buffer.banks * costs.mux(shape.positions, word)
                else:  # each lane's word
                    luts += shape.positions * costs.mux(buffer.banks, buffer.width)
            if access.operand == output:
                for bank in shape.banks_hit:
                    writers[root, bank] = writers.get((root, bank), 0) + 1
            if access.operand != output or (body is not None and body.args[output].uses):  # an accumulator reads too
                readers[root] = readers.get(root, 0) + 1
        per_nest[ns.op] = luts
    storage = {root: costs.storage(buffer, readers.get(root, 1)) for root, buffer in buffers.items()}
    merges = sum(costs.mux(count, buffers[root].width + _bits(buffers[root].depth - 1) + 1)
                 for (root, _), count in writers.items())
    return FabricLuts(per_nest, storage, merges)


def _control(ns: NestSchedule, device: FpgaDevice, costs: Costs) -> int:
    """The nest's FSM, its cycle counter (compared where the FSM changes state), II slot and loop counters."""
    interval = ns.ii or ns.depth
    total = device.loop_overhead + (ns.iterations - 1) * interval + ns.depth
    luts = costs.counter(_bits(total), compares=3) + costs.mux(FSM_STATES, _bits(FSM_STATES - 1))
    if interval > 1:
        luts += costs.counter(_bits(interval - 1))
    for trip, factor in zip(ns.nest.trips, ns.directives.factors):
        if trip // factor > 1:
            luts += costs.counter(_bits(trip // factor - 1))
    return luts
