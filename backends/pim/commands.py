"""The command set of the PIM stack: what a memory controller sends down one channel.

Each channel (an HBM2 pseudo-channel) receives its own in-order stream. A
command is one 64-bit word, so a small Verilog bank unit can decode it with
fixed bit slices:

    bits  0-3   opcode      ACT PRE RD WR REF BCAST MAC RDACC
    bits  4-11  unit        0..254, or 255 = every unit of the channel (all-bank mode)
    bits 12-19  bank        bank within the unit, or 255 = every bank (PRE, REF)
    bits 20-39  row
    bits 40-47  column
    bits 48-51  reg         input register (BCAST destination, MAC source)
    bits 52-55  acc         accumulator (MAC destination, RDACC source)
    bits 56-59  part        which column-wide part of an accumulator RDACC reads
    bit  60     first       MAC overwrites the accumulator instead of adding to it

Data travels beside the commands, in order: each BCAST and WR takes the next
column-wide word from the host, each RD and RDACC returns one. In the
simulator a command's `data` field numbers that word in the kernel's tables;
it is not part of the encoding.

Semantics (one unit u owns banks u * banks_per_unit .. + banks_per_unit - 1):

- ACT / PRE open / close `row` of the addressed bank(s); RD / WR move one
  column between an open row and the host.
- BCAST writes one column of input values into register `reg` of the
  addressed unit(s).
- MAC reads column `col` of the open row of bank `bank` of the addressed
  unit(s) and, lane by lane, adds its product with register `reg` to
  accumulator `acc` (or stores it, with `first`).
- RDACC returns part `part` of accumulator `acc` of one unit to the host.
- REF refreshes every bank of the channel; all banks must be closed.
"""

from __future__ import annotations

import numpy as np

OPCODES = ("NOP", "ACT", "PRE", "RD", "WR", "REF", "BCAST", "MAC", "RDACC")
NOP, ACT, PRE, RD, WR, REF, BCAST, MAC, RDACC = range(len(OPCODES))
ALL = 0xFF
COLUMN_COMMANDS = (RD, WR, BCAST, MAC, RDACC)
BUS_COMMANDS = (RD, WR, BCAST, RDACC)  # the ones whose data crosses the channel's external bus

COMMAND = np.dtype([("op", np.uint8), ("unit", np.uint8), ("bank", np.uint8), ("row", np.uint32),
                    ("col", np.uint8), ("reg", np.uint8), ("acc", np.uint8), ("part", np.uint8),
                    ("first", np.uint8), ("data", np.int32)])

# (field, first bit, width) of the 64-bit encoding
FIELDS = (("op", 0, 4), ("unit", 4, 8), ("bank", 12, 8), ("row", 20, 20), ("col", 40, 8), ("reg", 48, 4),
          ("acc", 52, 4), ("part", 56, 4), ("first", 60, 1))


def command(op: int, unit: int = 0, bank: int = 0, row: int = 0, col: int = 0, reg: int = 0, acc: int = 0,
            part: int = 0, first: int = 0, data: int = -1) -> tuple:
    """One command as a record tuple (see `COMMAND`)."""
    return op, unit, bank, row, col, reg, acc, part, first, data


def stream(commands: list[tuple]) -> np.ndarray:
    return np.array(commands, dtype=COMMAND)


def encode(commands: np.ndarray) -> np.ndarray:
    """Commands -> 64-bit words (uint64), vectorised."""
    words = np.zeros(len(commands), np.uint64)
    for name, shift, width in FIELDS:
        values = commands[name].astype(np.uint64)
        if np.any(values >= (1 << width)):
            raise ValueError(f"a command's {name} does not fit in {width} bits")
        words |= values << np.uint64(shift)
    return words


def decode(words: np.ndarray) -> np.ndarray:
    """64-bit words -> commands (with `data` -1), vectorised."""
    words = np.asarray(words, np.uint64)
    out = np.zeros(len(words), COMMAND)
    for name, shift, width in FIELDS:
        out[name] = (words >> np.uint64(shift)) & np.uint64((1 << width) - 1)
    out["data"] = -1
    return out


def describe(record) -> str:
    """One command as text: `MAC unit=all bank=0 row=3 col=5 reg=5 acc=0`."""
    op = int(record["op"])
    unit = "all" if record["unit"] == ALL else str(int(record["unit"]))
    bank = "all" if record["bank"] == ALL else str(int(record["bank"]))
    parts = [OPCODES[op]]
    if op != REF:
        parts.append(f"unit={unit}")
    if op in (ACT, PRE, RD, WR, MAC):
        parts.append(f"bank={bank}")
    if op in (ACT, RD, WR, MAC):
        parts.append(f"row={int(record['row'])}")
    if op in (RD, WR, MAC):
        parts.append(f"col={int(record['col'])}")
    if op in (BCAST, MAC):
        parts.append(f"reg={int(record['reg'])}")
    if op in (MAC, RDACC):
        parts.append(f"acc={int(record['acc'])}")
    if op == RDACC:
        parts.append(f"part={int(record['part'])}")
    if op == MAC and record["first"]:
        parts.append("first")
    return " ".join(parts)
