"""The datapath of one scheduled loop nest: address walkers, loads, the body per lane, stores.

Every body op starts at the cycle `hls.cycle` gives it, counted from the
iteration's issue, and its result is ready `latency` cycles later (the
device's table: 0 chains combinationally, otherwise the op is followed by
that many registers). A value needed later than it is ready passes through
delay registers, so each lane is a pipeline whose stages are exactly the
schedule's. Loads present their row at their cycle; a block-RAM load's data
is registered once (the memory's read latency), a register array's is used
in the same cycle, with the nest's own same-cycle store forwarded to it.
The store writes at its cycle when the valid bit says the iteration is real.

Integer ops only: i8/i32/i64 wrap as the simulator's numpy arrays do, and
multipliers are built as wide as the bits their operands can hold (the
figure the DSP estimate uses), then sign-extended. A multiplier of two or
more cycles spends its first cycle on one side of the DSP blocks: after
them when it takes several (each block's product registered, their sum in
the next cycle), else before (its operands registered).
"""

from __future__ import annotations

import functools
import math
import operator
from dataclasses import dataclass

from xdsl.dialects import arith, hw
from xdsl.dialects.builtin import IntegerAttr, IntegerType
from xdsl.dialects.linalg import ops as linalg
from xdsl.ir import Operation, SSAValue

from backends.fpga.device import constant_int, value_bits
from backends.fpga.hls_model import NestSchedule
from backends.fpga.rtl.control import NestControl
from backends.fpga.rtl.layout import AccessPlan, UnsupportedDesign
from backends.fpga.rtl.wiring import BankPorts
from backends.rtl.netlist import Backedge, ModuleBuilder, Signal, bits_for


@dataclass
class Position:
    """Where one lane position of an access is at a pipeline stage: its row and its bank."""

    row: Signal
    coords: tuple[Signal | int, ...]  # bank coordinate per physical dim (ints: fixed)

    def targets(self, m: ModuleBuilder, bank_coords: tuple[int, ...]) -> Signal | bool:
        """Whether this position is in the bank with `bank_coords` (True/False when fixed)."""
        conditions = []
        for mine, theirs in zip(self.coords, bank_coords):
            if isinstance(mine, int):
                if mine != theirs:
                    return False
            else:
                conditions.append(mine.eq(theirs))
        return m.all_of(conditions) if conditions else True


def _bank_coords(plan: AccessPlan, bank: int) -> tuple[int, ...]:
    return tuple((bank // s) % d.factor for d, s in zip(plan.layout.dims, plan.layout.bank_strides()))


class Walker:
    """The row and bank of every lane position of one access, one iteration per issue.

    Positions whose bank never moves and that start on the same row (lanes
    spread over the banks of one row) share one row register."""

    def __init__(self, m: ModuleBuilder, name: str, plan: AccessPlan, control: NestControl):
        self.m, self.plan = m, plan
        layout = plan.layout
        self.row_bits = bits_for(layout.depth - 1)
        moving = [plan.moving_bank(a) for a in range(len(layout.dims))]
        self.positions: list[Position] = []
        self.delayed: dict[int, list[Position]] = {}
        shared_rows: dict[int, Signal] = {}  # first row -> its walker, for positions whose bank stays
        for number, lane in enumerate(plan.positions):
            quotients = [s // d.factor for s, d in zip(lane.start, layout.dims)]
            rests = [s % d.factor for s, d in zip(lane.start, layout.dims)]
            first_row = sum(q * s for q, s in zip(quotients, layout.row_strides())) % (1 << self.row_bits)
            if not any(moving) and first_row in shared_rows:  # same start, same steps: the same walker
                self.positions.append(Position(shared_rows[first_row], tuple(rests)))
                continue
            row = m.reg(f"{name}_p{number}_row", self.row_bits, init=first_row)
            residues: list[Signal | int] = []
            registers = {}
            for a, (dim, rest) in enumerate(zip(layout.dims, rests)):
                if moving[a]:
                    registers[a] = m.reg(f"{name}_p{number}_bank{a}", bits_for(2 * dim.factor), init=rest)
                    residues.append(registers[a].q)
                else:
                    residues.append(rest)
            for level, advancing in control.carry.items():
                deltas = plan.carry_deltas(level)
                step = 0
                wraps: list[Signal] = []
                for a, (dim, delta, stride) in enumerate(zip(layout.dims, deltas, layout.row_strides())):
                    step += (delta // dim.factor) * stride
                    if a in registers:
                        moved = registers[a].q + delta % dim.factor
                        wrap = moved.uge(dim.factor)
                        registers[a].set(m.mux(wrap, moved - dim.factor, moved), when=control.issue & advancing)
                        wraps.append(m.mux(wrap, m.const(stride % (1 << self.row_bits), self.row_bits),
                                           m.const(0, self.row_bits)))
                next_row = row.q + (step % (1 << self.row_bits))
                for extra in wraps:
                    next_row = next_row + extra
                row.set(next_row, when=control.issue & advancing)
            shared_rows[first_row] = row.q
            self.positions.append(Position(row.q, tuple(residues)))

    def at(self, stage: int) -> list[Position]:
        """The positions as seen `stage` cycles after issue."""
        if stage not in self.delayed:
            self.delayed[stage] = self._delayed(stage)
        return self.delayed[stage]

    def _delayed(self, stage: int) -> list[Position]:
        return [Position(self.m.delay(p.row, stage),
                         tuple(c if isinstance(c, int) else self.m.delay(c, stage) for c in p.coords))
                for p in self.positions]

    def bank_targets(self, positions: list[Position]) -> dict[int, list[tuple[int, Signal | bool]]]:
        """Per bank, the positions that may be in it and the condition that they are."""
        out: dict[int, list[tuple[int, Signal | bool]]] = {}
        for bank in range(self.plan.layout.banks):
            coords = _bank_coords(self.plan, bank)
            for number, position in enumerate(positions):
                hit = position.targets(self.m, coords)
                if hit is not False:
                    out.setdefault(bank, []).append((number, hit))
        return out


class NestDatapath:
    """All lanes of one nest, reading and writing the buffers' banks."""

    def __init__(self, m: ModuleBuilder, name: str, ns: NestSchedule, plans: list[AccessPlan | None],
                 banks: dict[str, list[BankPorts]], control: NestControl, constants: dict[int, int], dsp_width: int):
        self.m, self.name, self.ns, self.plans, self.banks, self.control = m, name, ns, plans, banks, control
        self.dsp_width = dsp_width
        self.walkers = [Walker(m, f"{name}_a{k}", plan, control) if plan else None for k, plan in enumerate(plans)]
        self.constants = constants  # operand -> value, for scalar operands (a fill's value)
        self.output = len(plans) - 1
        self.forwards: dict[int, tuple[Backedge, Backedge, Backedge]] = {}
        self.loaded: dict[tuple[int, int], list[Signal]] = {}  # (operand, stage) -> per lane position
        start = ns.schedule.start
        lane_values = [self.lane(lane) for lane in range(ns.lanes)]
        self.store(start["store"], lane_values)

    # -- one lane's body --------------------------------------------------------------

    def lane(self, lane: int) -> Signal:
        """The value lane `lane` stores, at the store's stage."""
        ns, m = self.ns, self.m
        start = ns.schedule.start
        ready: dict[SSAValue, tuple[Signal, int]] = {}
        body = ns.op.body.block if isinstance(ns.op, linalg.GenericOp) else None
        if body is None:  # linalg.fill: the scalar operand, every iteration
            width = self.plans[self.output].layout.width  # type: ignore[union-attr]
            return m.const(self.constants[0], width)
        for index, arg in enumerate(body.args):
            if arg.uses:
                node = f"load{index}"
                ready[arg] = (self.load(index, lane, start[node]), start[node] + ns.graph.nodes[node].latency)
        names = {op: name for name, op in ns.body_ops}
        bits: dict[SSAValue, int] = {}
        for op in body.ops:
            if isinstance(op, linalg.YieldOp):
                value, at = ready[op.operands[0]]
                return self.at(value, at, start["store"])
            name = names[op]
            stage = start[name]
            latency = ns.graph.nodes[name].latency
            operands = [self.at(*ready[v], stage) for v in op.operands]
            if isinstance(op, arith.MuliOp) and latency > 1:
                # one of the multiplier's registers moves inside it: after its DSP blocks' products
                # when it needs several (their sum is then a cycle of its own), else on its inputs
                # (so no path runs from a memory's read mux through the DSP block in one cycle)
                blocks = self.dsp_products(op, operands, bits)
                if blocks is None:
                    operands = [v if isinstance(v.value.owner, hw.ConstantOp) else m.delay(v, 1) for v in operands]
                    result = self.operation(op, operands, bits)
                else:
                    result = self.registered_sum(blocks, op.results[0].type.width.data)  # type: ignore[attr-defined]
                latency -= 1
            else:
                result = self.operation(op, operands, bits)
            ready[op.results[0]] = (m.delay(result, latency), stage + ns.graph.nodes[name].latency)
        raise UnsupportedDesign("a loop body without linalg.yield")

    def at(self, value: Signal, ready: int, stage: int) -> Signal:
        if stage < ready:
            raise UnsupportedDesign(f"{self.name}: a value is used before the schedule makes it ready")
        return self.m.delay(value, stage - ready)

    def operation(self, op: Operation, operands: list[Signal], bits: dict[SSAValue, int]) -> Signal:
        m = self.m
        result_type = op.results[0].type
        if not isinstance(result_type, IntegerType):
            raise UnsupportedDesign(f"the RTL builds integer datapaths; {op.name} gives {result_type}")
        width = result_type.width.data
        if isinstance(op, arith.ConstantOp):
            assert isinstance(op.value, IntegerAttr)
            return m.const(op.value.value.data, width)
        if isinstance(op, arith.ExtSIOp):
            return operands[0].sext(width)
        if isinstance(op, arith.ExtUIOp):
            return operands[0].zext(width)
        if isinstance(op, arith.TruncIOp):
            return operands[0].trunc(width)
        a, b = (operands + [operands[0]])[:2]
        if isinstance(op, arith.MuliOp):
            a_bits, b_bits = (value_bits(v, bits) for v in op.operands)
            product_bits = min(width, a_bits + b_bits)
            product = a.trunc(a_bits).sext(product_bits) * b.trunc(b_bits).sext(product_bits)
            return product.sext(width)
        amount = constant_int(op.operands[1]) if len(op.operands) > 1 else None
        if amount is not None and 0 < amount < width and isinstance(op, arith.ShRSIOp | arith.ShRUIOp | arith.ShLIOp):
            # shifts by constants are wiring: slices, so later registers keep only the bits used
            if isinstance(op, arith.ShLIOp):
                return m.concat(a[0:width - amount], m.const(0, amount))
            kept = a[amount:width]
            return kept.sext(width) if isinstance(op, arith.ShRSIOp) else kept.zext(width)
        simple = {arith.AddiOp: lambda: a + b, arith.SubiOp: lambda: a - b, arith.AndIOp: lambda: a & b,
                  arith.OrIOp: lambda: a | b, arith.XOrIOp: lambda: a ^ b, arith.ShLIOp: lambda: a << b,
                  arith.ShRSIOp: lambda: a.ashr(b), arith.ShRUIOp: lambda: a >> b,
                  arith.MaxSIOp: lambda: m.mux(a.slt(b), b, a), arith.MinSIOp: lambda: m.mux(a.slt(b), a, b)}
        if type(op) in simple:
            return simple[type(op)]()
        raise UnsupportedDesign(f"the RTL generator does not build {op.name}")

    def dsp_products(self, op: Operation, operands: list[Signal],
                     bits: dict[SSAValue, int]) -> list[tuple[Signal, int]] | None:
        """A product wider than one DSP block as each block's product and its shift: operands cut
        into unsigned low pieces of `dsp_width - 1` bits and a signed top piece. None for a
        one-block product, or one the pieces would take more blocks for than the estimate counts."""
        w = self.dsp_width
        sizes = [value_bits(v, bits) for v in op.operands]
        counts = [1 if n <= w else 1 + math.ceil((n - w) / (w - 1)) for n in sizes]
        if counts == [1, 1] or counts != [math.ceil(n / w) for n in sizes]:
            return None
        a_pieces, b_pieces = (_dsp_pieces(v, n, count, w) for v, n, count in zip(operands, sizes, counts))
        return [(a.sext(2 * w) * b.sext(2 * w), a_shift + b_shift)
                for a, a_shift in a_pieces for b, b_shift in b_pieces]

    def registered_sum(self, blocks: list[tuple[Signal, int]], width: int) -> Signal:
        """The `width`-bit sum of the shifted block products, each registered first with
        only the bits that reach the sum."""
        m, terms = self.m, []
        for product, shift in blocks:
            if shift >= width:
                continue
            kept = m.delay(product.trunc(min(product.width, width - shift)), 1).sext(width - shift)
            terms.append(m.concat(kept, m.const(0, shift)) if shift else kept)
        return functools.reduce(operator.add, terms)

    # -- memory --------------------------------------------------------------------------

    def load(self, operand: int, lane: int, stage: int) -> Signal:
        """Lane `lane`'s element of `operand`, ready at `stage` + the load's latency."""
        if (operand, stage) not in self.loaded:
            self.loaded[operand, stage] = self._loads(operand, stage)
        return self.loaded[operand, stage][self.plans[operand].lane_position[lane]]  # type: ignore[union-attr]

    def _loads(self, operand: int, stage: int) -> list[Signal]:
        m, plan, walker = self.m, self.plans[operand], self.walkers[operand]
        assert plan is not None and walker is not None
        access = self.ns.accesses[operand]
        latency = self.ns.graph.nodes[f"load{operand}"].latency
        positions = walker.at(stage)
        banks = self.banks[plan.layout.name]
        data: dict[int, Signal] = {}
        forward = access.in_registers and self._writes_same_buffer(operand)
        for bank, hits in walker.bank_targets(positions).items():
            row = _route(m, [(positions[p].row, hit) for p, hit in hits])
            word = banks[bank].memory.read(row)
            if forward:
                enable, store_row, store_data = self._forward(bank)
                word = m.mux(enable.signal & store_row.signal.eq(row), store_data.signal, word)
            data[bank] = m.delay(word, min(latency, 1), f"{self.name}_l{operand}_b{bank}")
        coords_stage = walker.at(stage + min(latency, 1))
        by_coords = {_bank_coords(plan, bank): word for bank, word in data.items()}
        values = []
        for position in coords_stage:
            values.append(m.delay(_bank_word(m, plan, position.coords, by_coords), max(0, latency - 1)))
        return values

    def _writes_same_buffer(self, operand: int) -> bool:
        return self.plans[operand].layout.name == self.plans[self.output].layout.name  # type: ignore[union-attr]

    def _forward(self, bank: int) -> tuple[Backedge, Backedge, Backedge]:
        if bank not in self.forwards:
            layout = self.plans[self.output].layout  # type: ignore[union-attr]
            self.forwards[bank] = (Backedge(self.m, 1), Backedge(self.m, bits_for(layout.depth - 1)),
                                   Backedge(self.m, layout.width))
        return self.forwards[bank]

    def store(self, stage: int, lane_values: list[Signal]) -> None:
        m, plan, walker = self.m, self.plans[self.output], self.walkers[self.output]
        assert plan is not None and walker is not None
        valid = self.control.valid[stage]
        positions = walker.at(stage)
        by_position = {plan.lane_position[lane]: value for lane, value in enumerate(lane_values)}
        banks = self.banks[plan.layout.name]
        for bank, hits in walker.bank_targets(positions).items():
            row = _route(m, [(positions[p].row, hit) for p, hit in hits])
            data = _route(m, [(by_position[p], hit) for p, hit in hits])
            enable = valid & m.any_of(m.const(1, 1) if hit is True else hit for _, hit in hits)
            banks[bank].writes.append((enable, row, data))
            if bank in self.forwards:
                for edge, signal in zip(self.forwards.pop(bank), (enable, row, data)):
                    edge.resolve(signal)
        for bank, edges in self.forwards.items():  # banks this nest never writes: nothing to forward
            for edge in edges:
                edge.resolve(m.const(0, edge.signal.width))


def _dsp_pieces(value: Signal, bits: int, count: int, width: int) -> list[tuple[Signal, int]]:
    """`value` (`bits` signed bits) as `count` signed `width`-bit pieces and their shifts."""
    low = width - 1
    pieces = [(value[k * low:(k + 1) * low].zext(width), k * low) for k in range(count - 1)]
    top = (count - 1) * low
    return [*pieces, (value[top:bits].sext(width), top)]


def _bank_word(m: ModuleBuilder, plan: AccessPlan, coords: tuple[Signal | int, ...],
               words: dict[tuple[int, ...], Signal]) -> Signal:
    """The word of the bank at `coords`: a mux tree on each bank coordinate that moves."""
    for a, coord in enumerate(coords):
        if not isinstance(coord, int):
            options = [_bank_word(m, plan, coords[:a] + (value,) + coords[a + 1:], words)
                       for value in range(plan.layout.dims[a].factor)]
            return _tree(m, coord, options)
    return words[coords]  # type: ignore[index]


def _tree(m: ModuleBuilder, index: Signal, choices: list[Signal]) -> Signal:
    """`choices[index]` as a balanced tree of 2:1 muxes on the bits of `index` (below len(choices))."""
    level, bit = list(choices), 0
    while len(level) > 1:
        level = [m.mux(index[bit], level[k + 1], level[k]) if k + 1 < len(level) else level[k]
                 for k in range(0, len(level), 2)]
        bit += 1
    return level[0]


def _route(m: ModuleBuilder, choices: list[tuple[Signal, Signal | bool]]) -> Signal:
    """The first choice whose condition holds (the last one when none does)."""
    value = choices[-1][0]
    for candidate, hit in reversed(choices[:-1]):
        value = candidate if hit is True else m.mux(hit, candidate, value)  # type: ignore[arg-type]
    return value
