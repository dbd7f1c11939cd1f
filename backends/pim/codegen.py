"""Command streams for one placed product: a PIM kernel or a host read.

A PIM kernel walks, per input row and per group of accumulators, the chunks
of K its channel's split covers: it broadcasts the chunk to the input
registers, then visits the rows holding the group's weights for that chunk
(row activate, a MAC per column, precharge) and finally reads the group's
accumulators out. A host read visits every row the matrix occupies and
returns each column over the bus.

Visits are software-pipelined: the next visit's rows are activated before the
current visit's columns when the two touch different banks (the unit's two
banks alternate), so tRCD hides behind the MACs; the simulator then places
every command at the earliest cycle the timing allows, in stream order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from backends.pim.commands import ACT, ALL, BCAST, MAC, PRE, RD, RDACC, command, stream
from dialects.pim import Layout, PimConfig


@dataclass
class Visit:
    """Rows opened together, the column commands that use them, and their closing."""

    banks: list[tuple[int, int]]  # (unit or ALL, bank within unit)
    row: int
    columns: list[tuple]


@dataclass
class Kernel:
    """One stream per channel and the tables its data words refer to.

    `payload[i]` = (m, offset): BCAST word i is inputs[m, offset : offset + lanes].
    `readback[i]` = (m, split, n, part): RDACC word i is part `part` of the lanes of output n.
    RD words are copied into the host's image of the banks (see the simulator).
    """

    layout: Layout
    mode: str
    streams: list[np.ndarray]
    payload: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    readback: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))

    @property
    def commands(self) -> int:
        return sum(len(s) for s in self.streams)


def emit_visits(visits: list[Visit | list[tuple]]) -> list[tuple]:
    """Visits (and plain command lists between them) in stream order, with
    each visit's activation hoisted above the previous visit's columns when
    their banks differ."""
    out: list[tuple] = []
    opened: set[int] = set()
    real = [i for i, v in enumerate(visits) if isinstance(v, Visit)]
    following = dict(itertools.pairwise(real))

    def activate(index: int) -> None:
        visit = visits[index]
        assert isinstance(visit, Visit)
        opened.add(index)
        out.extend(command(ACT, unit, bank, visit.row) for unit, bank in visit.banks)

    for index, visit in enumerate(visits):
        if not isinstance(visit, Visit):
            out.extend(visit)
            continue
        if index not in opened:
            activate(index)
        nxt = following.get(index)
        if nxt is not None and not set(visit.banks) & set(visits[nxt].banks):  # type: ignore[union-attr]
            activate(nxt)
        out.extend(visit.columns)
        out.extend(command(PRE, unit, bank) for unit, bank in visit.banks)
    return out


def busy_units(layout: Layout, channel_offset: int, slot: int) -> list[int]:
    """Units of a channel holding output column `slot` of their sequence."""
    return [u for u in range(layout.units)
            if slot * layout.outputs_per_slot + u * layout.channels_per_split + channel_offset < layout.n]


def output_column(layout: Layout, channel_offset: int, unit: int, slot: int) -> int:
    return slot * layout.outputs_per_slot + unit * layout.channels_per_split + channel_offset


def pim_kernel(layout: Layout, mode: str, config: PimConfig) -> Kernel:
    """The streams of a product on the units (`mode` all-bank or per-bank)."""
    payload: list[tuple[int, int]] = []
    readback: list[tuple[int, int, int, int]] = []
    parts = -(-layout.lanes * 4 // config.column_bytes)  # 32-bit lanes of one accumulator, in columns
    streams = []
    for channel in range(config.channels):
        split, offset = divmod(channel, layout.channels_per_split)
        units = busy_units(layout, offset, 0) if split < layout.splits else []
        if not units:
            streams.append(stream([]))
            continue
        targets = [ALL] if mode == "all-bank" else units
        visits: list[Visit | list[tuple]] = []
        for m in range(layout.m):
            for group in range(layout.groups):
                slots = range(group * layout.group_size, min((group + 1) * layout.group_size, layout.slots))
                for local in range(layout.chunks_per_split):
                    base = (split * layout.chunks_per_split + local) * layout.chunk
                    words = []
                    for reg in range(layout.grf):
                        for unit in targets:
                            words.append(command(BCAST, unit, reg=reg, data=len(payload)))
                            payload.append((m, base + reg * layout.lanes))
                    visits.append(words)
                    block = (group * layout.chunks_per_split + local) * layout.rows_per_block
                    for position in range(layout.rows_per_block):
                        row_in_unit = block + position
                        bank = row_in_unit % layout.banks_per_unit
                        row = layout.row_base + row_in_unit // layout.banks_per_unit
                        accs = [i for i in range(position * layout.segments_per_row,
                                                 (position + 1) * layout.segments_per_row)
                                if i < len(slots)]
                        columns = [command(MAC, unit, bank, row, (i % layout.segments_per_row) * layout.grf + reg,
                                           reg, i, first=int(local == 0 and reg == 0))
                                   for i in accs for reg in range(layout.grf) for unit in targets]
                        visits.append(Visit([(unit, bank) for unit in targets], row, columns))
                words = []
                for i, slot in enumerate(slots):
                    for part in range(parts):
                        for unit in busy_units(layout, offset, slot):
                            words.append(command(RDACC, unit, acc=i, part=part, data=len(readback)))
                            readback.append((m, split, output_column(layout, offset, unit, slot), part))
                visits.append(words)
        streams.append(stream(emit_visits(visits)))
    return Kernel(layout, mode, streams, np.array(payload, np.int64).reshape(-1, 2),
                  np.array(readback, np.int64).reshape(-1, 4))


def host_read_kernel(layout: Layout, config: PimConfig) -> Kernel:
    """The streams that return every column holding part of the matrix to the
    host: row by row, in waves of one bank per bank group so that columns of
    different groups alternate on the bus at tCCD_S."""
    p = layout.placement
    occupied = np.unique(np.stack([p.channel, p.row, p.bank, p.byte // config.column_bytes]).reshape(4, -1), axis=1)
    per_group = config.banks // config.bank_groups
    streams = []
    for channel in range(config.channels):
        mine = occupied[1:, occupied[0] == channel]
        visits: list[Visit | list[tuple]] = []
        for row in np.unique(mine[0]):
            in_row = mine[1:, mine[0] == row]
            banks = sorted(np.unique(in_row[0]).tolist(), key=lambda b: (b % per_group, config.bank_group(b)))
            for first in range(0, len(banks), config.bank_groups):
                wave = banks[first:first + config.bank_groups]
                columns = {b: in_row[1, in_row[0] == b].tolist() for b in wave}
                reads = [command(RD, *divmod(b, config.banks_per_unit), int(row), col)
                         for index in range(max(len(c) for c in columns.values()))
                         for b in wave for col in columns[b][index:index + 1]]
                visits.append(Visit([divmod(b, config.banks_per_unit) for b in wave], int(row), reads))
        streams.append(stream(emit_visits(visits)))
    return Kernel(layout, "host", streams)
