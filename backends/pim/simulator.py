"""Command-level simulator of the PIM stack: DRAM timing, bank state, functional MACs.

Each channel has a `ChannelTimer`, a per-bank state machine (open row, last
ACT / PRE / RD / WR) plus the channel-wide history the timing rules need
(last column command per bank group and per unit, the data bus, the last
activations for tRRD and tFAW, refresh). Commands are issued in stream
order, each at the earliest cycle every rule allows and at most one per
cycle, so the simulator steps from command to command, never cycle by cycle.
When a refresh falls due, the timer closes the open rows, issues REF and
reopens them, and it refreshes through idle gaps between kernels; every
command it adds goes into the trace like the program's own.

The functional side executes the same commands on numpy arrays: the banks'
bytes, each unit's input registers and accumulators, vectorised over the
units one command addresses. A MAC multiplies a column of the open row lane
by lane with an input register: f16 x f16 products are exact in f32 and
accumulate in f32; f32 products round to f32; i8 x i8 products accumulate
in wrapping i32.

Rules, in command-clock cycles (what `checker.py` verifies independently):
ACT->column tRCD, PRE->ACT tRP, ACT->PRE tRAS, RD->PRE tRTP, WR->PRE tWR,
column->column tCCD_L when the two share a bank group or a unit, else
tCCD_S; bus commands one burst apart; ACT->ACT tRRD_L in the same bank
group, else tRRD_S; at most four activations in any tFAW window (an
all-bank ACT counts as four); REF only with every bank closed and tRP
after its precharge, nothing opens within tRFC of a REF, and the k-th REF
comes no later than (k + refresh_postpone) * tREFI.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from backends.pim.codegen import Kernel
from backends.pim.commands import (
    ACT,
    ALL,
    BCAST,
    BUS_COMMANDS,
    COMMAND,
    MAC,
    OPCODES,
    PRE,
    RD,
    RDACC,
    REF,
    WR,
    command,
)
from compiler.diagnostics import InternalError
from dialects.pim import Layout, PimConfig, matrix_kn, unit_numpy_dtype

NEVER = -(1 << 40)
TRACE = np.dtype([("cycle", np.int64), ("channel", np.uint16)] + [(n, COMMAND.fields[n][0]) for n in COMMAND.names])


class Geometry:
    """Which banks, bank groups and tCCD resources a command addresses,
    worked out once per (opcode, unit, bank) and remembered."""

    def __init__(self, config: PimConfig):
        self.config = config
        self._banks: dict[tuple[int, int], tuple[int, ...]] = {}
        self._groups: dict[tuple[int, int], tuple[int, ...]] = {}
        self._resources: dict[tuple[int, int, int], tuple[tuple[str, int], ...]] = {}

    def banks(self, unit: int, bank: int) -> tuple[int, ...]:
        key = (unit, bank)
        if key not in self._banks:
            c = self.config
            units = range(c.units) if unit == ALL else (unit,)
            within = range(c.banks_per_unit) if bank == ALL else (bank,)
            self._banks[key] = tuple(u * c.banks_per_unit + b for u in units for b in within)
        return self._banks[key]

    def groups(self, unit: int, bank: int) -> tuple[int, ...]:
        key = (unit, bank)
        if key not in self._groups:
            self._groups[key] = tuple(sorted({self.config.bank_group(b) for b in self.banks(unit, bank)}))
        return self._groups[key]

    def resources(self, op: int, unit: int, bank: int) -> tuple[tuple[str, int], ...]:
        """What a column command occupies for tCCD: its banks' groups and the units it drives."""
        key = (op, unit, bank)
        if key not in self._resources:
            keys = [("group", g) for g in self.groups(unit, bank)] if op in (RD, WR, MAC) else []
            if op in (BCAST, MAC, RDACC):
                keys += [("unit", u) for u in (range(self.config.units) if unit == ALL else (unit,))]
            self._resources[key] = tuple(keys)
        return self._resources[key]


@dataclass
class Counters:
    cycles: int = 0
    commands: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    row_hits: int = 0
    row_misses: int = 0
    macs: int = 0
    bus_bytes: int = 0
    energy_pj: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def as_dict(self) -> dict:
        return {"row_hits": self.row_hits, "row_misses": self.row_misses, "pim_macs": self.macs,
                "bus_bytes": self.bus_bytes, "commands": dict(sorted(self.commands.items())),
                "energy_breakdown_pj": {k: round(v, 3) for k, v in sorted(self.energy_pj.items())}}


class ChannelTimer:
    """Timing state of one channel; `issue` places a command and records it."""

    def __init__(self, geometry: Geometry, channel: int, trace: list[tuple], counters: Counters):
        config = geometry.config
        self.config, self.geometry, self.channel, self.trace, self.counters = config, geometry, channel, trace, counters
        banks = config.banks
        self.open_row = [-1] * banks
        self.used = [False] * banks  # a column of the open row has been accessed
        self.act, self.pre, self.rd, self.wr = ([NEVER] * banks for _ in range(4))
        self.last_act = NEVER
        self.group_act = [NEVER] * config.bank_groups
        self.window: list[tuple[int, int]] = []  # recent (ACT cycle, weight) for tFAW
        self.last_column = NEVER
        self.column_by_resource: dict[tuple[str, int], int] = {}
        self.last_bus = NEVER
        self.last_ref = NEVER
        self.next_refresh = config.trefi
        self.now = -1

    # -- when may a command go? ------------------------------------------

    def earliest(self, op: int, unit: int, bank: int, row: int) -> int:
        c = self.config
        banks = self.geometry.banks(unit, bank)
        t = self.now + 1
        if op == ACT:
            for b in banks:
                if self.open_row[b] != -1:
                    raise InternalError(f"pim: ACT to open bank {b} of channel {self.channel}")
                t = max(t, self.pre[b] + c.trp)
            t = max(t, self.last_ref + c.trfc, self.last_act + c.trrd_s,
                    *(self.group_act[g] + c.trrd_l for g in self.geometry.groups(unit, bank)))
            t = max(t, self._faw_ready(min(4, len(banks))))
        elif op == PRE:
            for b in banks:
                if self.open_row[b] != -1:
                    t = max(t, self.act[b] + c.tras, self.rd[b] + c.trtp, self.wr[b] + c.twr)
        elif op == REF:
            if any(r != -1 for r in self.open_row):
                raise InternalError(f"pim: REF with open banks on channel {self.channel}")
            t = max(t, self.last_ref + c.trfc, *(p + c.trp for p in self.pre))
        else:
            if op in (RD, WR, MAC):
                for b in banks:
                    if self.open_row[b] != row:
                        raise InternalError(f"pim: {OPCODES[op]} to row {row} of bank {b} (channel "
                                            f"{self.channel}), which has row {self.open_row[b]} open")
                    t = max(t, self.act[b] + c.trcd)
            t = max(t, self.last_column + c.tccd_s,
                    *(self.column_by_resource.get(k, NEVER) + c.tccd_l for k in self.geometry.resources(op, unit, bank)))
            if op in BUS_COMMANDS:
                t = max(t, self.last_bus + c.burst_cycles)
        return t

    def _faw_ready(self, weight: int) -> int:
        """Earliest cycle at which `weight` more activations keep four per tFAW."""
        total = weight
        for cycle, w in reversed(self.window):
            total += w
            if total > 4:
                return cycle + self.config.tfaw
        return NEVER

    # -- issuing ---------------------------------------------------------

    def issue(self, record: tuple, at: int) -> None:
        c = self.config
        op, unit, bank, row = record[0], record[1], record[2], record[3]
        banks = self.geometry.banks(unit, bank)
        if op == ACT:
            for b in banks:
                self.open_row[b], self.act[b], self.used[b] = row, at, False
            for g in self.geometry.groups(unit, bank):
                self.group_act[g] = at
            self.last_act = at
            self.window = [(t, w) for t, w in self.window if t > at - c.tfaw] + [(at, min(4, len(banks)))]
            self.counters.energy_pj["activate"] += c.activate_pj * len(banks)
        elif op == PRE:
            for b in banks:
                if self.open_row[b] != -1:
                    self.open_row[b], self.pre[b] = -1, at
        elif op == REF:
            self.last_ref = at
            self.next_refresh += c.trefi
            self.counters.energy_pj["refresh"] += c.refresh_pj
        else:
            self.last_column = at
            for key in self.geometry.resources(op, unit, bank):
                self.column_by_resource[key] = at
            if op in BUS_COMMANDS:
                self.last_bus = at
                self.counters.bus_bytes += c.column_bytes
            if op in (RD, WR, MAC):
                for b in banks:
                    if self.used[b]:
                        self.counters.row_hits += 1
                    else:
                        self.counters.row_misses += 1
                        self.used[b] = True
                    if op == RD:
                        self.rd[b] = at
                    elif op == WR:
                        self.wr[b] = at
        self.counters.commands[OPCODES[op]] += 1
        self.now = at
        self.trace.append((at, self.channel, *record))

    def refresh(self) -> None:
        """Close open rows, refresh, reopen them (all-bank where every unit had the same row open)."""
        c = self.config
        reopen: dict[tuple[int, int], list[int]] = defaultdict(list)
        for b, row in enumerate(self.open_row):
            if row != -1:
                reopen[(b % c.banks_per_unit, row)].append(b // c.banks_per_unit)
        if reopen:
            self.issue(command(PRE, ALL, ALL), self.earliest(PRE, ALL, ALL, 0))
        self.issue(command(REF), self.earliest(REF, 0, 0, 0))
        for (bank, row), units in sorted(reopen.items()):
            for unit in [ALL] if len(units) == c.units else units:
                self.issue(command(ACT, unit, bank, row), self.earliest(ACT, unit, bank, row))

    def schedule(self, record: tuple) -> int:
        """Issue one program command at its earliest cycle, refreshing first when due."""
        op, unit, bank, row = record[0], record[1], record[2], record[3]
        at = self.earliest(op, unit, bank, row)
        while at >= self.next_refresh:
            self.refresh()
            at = self.earliest(op, unit, bank, row)
        self.issue(record, at)
        return at

    def idle_until(self, cycle: int) -> None:
        """Keep refreshing through an idle stretch that ends at `cycle`."""
        while self.next_refresh <= cycle:
            self.now = max(self.now, self.next_refresh - 1)
            self.refresh()
        self.now = max(self.now, cycle - 1)


@dataclass
class BusLog:
    """The data words one channel's bus carried, in order: `sent` (host to
    units, one per BCAST) and `returned` (to the host: the unit that sent
    it and the word, one per RD and RDACC)."""

    sent: list[np.ndarray] = field(default_factory=list)
    returned: list[tuple[int, np.ndarray]] = field(default_factory=list)


@dataclass
class KernelRun:
    start: int
    end: int
    commands: int


class Stack:
    """The banks' contents, the units' registers and the timers of every channel."""

    def __init__(self, config: PimConfig, rows: int):
        self.config = config
        self.memory = np.zeros((config.channels, config.banks, max(rows, 1), config.row_bytes), np.uint8)
        self.trace: list[tuple] = []
        self.counters = Counters()
        self.geometry = Geometry(config)
        self.timers = [ChannelTimer(self.geometry, ch, self.trace, self.counters) for ch in range(config.channels)]
        self.sim_seconds = 0.0
        # The units' register files as raw bytes, kept from kernel to kernel as the
        # hardware keeps them: input registers one column wide, accumulators one
        # 32-bit lane per element of a column (four columns for i8 units).
        lanes = config.column_bytes  # at most, for i8
        self.registers = np.zeros((config.channels, config.units, config.grf_registers, config.column_bytes), np.uint8)
        self.accumulators = np.zeros((config.channels, config.units, config.acc_registers, 4 * lanes), np.uint8)
        self.bus = [BusLog() for _ in range(config.channels)]
        self.returned_override: dict[tuple[int, int], Iterator[np.ndarray]] | None = None

    def write_matrix(self, layout: Layout, w: np.ndarray) -> None:
        """Store a resident matrix in its layout (not timed: it was written before the run)."""
        values = np.ascontiguousarray(matrix_kn(np.asarray(w), layout).astype(unit_numpy_dtype(layout)))
        raw = values.view(np.uint8).reshape(layout.k, layout.n, layout.elem_bytes)
        p = layout.placement
        for b in range(layout.elem_bytes):
            self.memory[p.channel, p.bank, p.row, p.byte + b] = raw[..., b]

    def read_matrix(self, layout: Layout, image: np.ndarray) -> np.ndarray:
        """The [K, N] matrix as stored in a bank image (the stack's or the host's copy)."""
        p = layout.placement
        raw = np.stack([image[p.channel, p.bank, p.row, p.byte + b] for b in range(layout.elem_bytes)], axis=-1)
        return np.ascontiguousarray(raw).view(unit_numpy_dtype(layout))[..., 0]

    def run(self, kernel: Kernel, start: int, inputs: np.ndarray | None = None) -> tuple[KernelRun, np.ndarray]:
        """Execute a kernel from cycle `start`: the accumulators read out
        ([m, splits, n, lanes]) for a PIM kernel, the matrix for a host read."""
        wall = time.perf_counter()
        layout, c = kernel.layout, self.config
        acc_dtype = np.int32 if layout.unit_dtype == "i8" else np.float32
        unit_dtype = unit_numpy_dtype(layout)
        per_part = c.column_bytes // 4
        readout = np.zeros(layout.accumulator_shape(), acc_dtype)
        host_image = np.zeros_like(self.memory) if kernel.mode == "host" else None
        end = start
        for channel, program in enumerate(kernel.streams):
            if not len(program):
                continue
            timer = self.timers[channel]
            timer.idle_until(start)
            registers = self.registers[channel, :, :layout.grf].view(unit_dtype)
            accumulators = self.accumulators[channel, :, :layout.accs, :4 * layout.lanes].view(acc_dtype)
            bus = self.bus[channel]
            banks = self.memory[channel]
            for record in program.tolist():
                timer.schedule(record)
                op, unit, bank, row, col, reg, acc, _, first, data = record
                units = slice(None) if unit == ALL else slice(unit, unit + 1)
                if op == MAC:
                    physical = self.geometry.banks(unit, bank)
                    column = banks[physical, row, col * c.column_bytes:(col + 1) * c.column_bytes]
                    products = column.view(unit_dtype).astype(acc_dtype) * registers[units, reg].astype(acc_dtype)
                    if first:
                        accumulators[units, acc] = products
                    else:
                        accumulators[units, acc] += products
                    self.counters.macs += len(physical) * layout.lanes
                    self.counters.energy_pj["read"] += len(physical) * c.column_bytes * 8 * c.read_bit_pj
                    self.counters.energy_pj["mac"] += len(physical) * layout.lanes * c.mac_pj(layout.unit_dtype)
                elif op == BCAST:
                    m, offset = kernel.payload[data]
                    registers[units, reg] = inputs[m, offset:offset + layout.lanes]
                    bus.sent.append(registers[units, reg][0].view(np.uint8).copy())
                    self._bus_energy()
                elif op == RDACC:
                    m, split, n, part_index = kernel.readback[data]
                    lanes = slice(part_index * per_part, (part_index + 1) * per_part)
                    word = self._returned(channel, unit, accumulators[unit, acc, lanes].view(np.uint8))
                    readout[m, split, n, lanes] = word.view(acc_dtype)
                    self._bus_energy()
                elif op == RD:
                    physical = self.geometry.banks(unit, bank)[0]
                    span = slice(col * c.column_bytes, (col + 1) * c.column_bytes)
                    host_image[channel, physical, row, span] = self._returned(channel, unit, banks[physical, row, span])
                    self.counters.energy_pj["read"] += c.column_bytes * 8 * c.read_bit_pj
                    self._bus_energy()
            end = max(end, timer.now + c.burst_cycles)
        self.counters.cycles = max(self.counters.cycles, end)
        self.sim_seconds += time.perf_counter() - wall
        run = KernelRun(start, end, kernel.commands)
        if kernel.mode == "host":
            return run, self.read_matrix(layout, host_image)
        return run, readout

    def finish(self, cycle: int) -> None:
        """Refresh every channel, busy or not, up to `cycle` (the end of the run)."""
        for timer in self.timers:
            timer.idle_until(cycle)
        self.counters.cycles = max(self.counters.cycles, cycle)

    def _returned(self, channel: int, unit: int, word: np.ndarray) -> np.ndarray:
        """A word a unit or bank returns to the host, logged; with `returned_override`
        the word the host receives comes from there instead (an RTL run's read-out)."""
        self.bus[channel].returned.append((unit, word.copy()))
        override = self.returned_override
        return next(override[channel, unit]) if override is not None else word

    def _bus_energy(self) -> None:
        """One column between a bank or unit and the host: across the die, then the I/O."""
        bits = self.config.column_bytes * 8
        self.counters.energy_pj["move"] += bits * self.config.move_bit_pj
        self.counters.energy_pj["io"] += bits * self.config.io_bit_pj

    def trace_array(self) -> np.ndarray:
        return np.array(self.trace, dtype=TRACE)
