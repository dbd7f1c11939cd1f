"""Instruction fields as bit slices of the 256-bit instruction word.

The positions come from `isa.FORMATS`, the same table the assembler and the
simulator use, so the RTL decoder cannot drift from the encoding.
"""

from __future__ import annotations

from backends.rtl.netlist import Signal
from backends.systolic import isa


def field_position(mnemonic: str, name: str) -> tuple[int, int]:
    """(lowest bit, width) of a field in the instruction word."""
    position = 8
    for field in isa.BY_MNEMONIC[mnemonic].fields:
        if field.name == name:
            return position, field.bits
        position += field.bits
    raise KeyError(f"{mnemonic} has no field {name}")


def used_bits(*mnemonics: str) -> int:
    """How many low bits of the word hold every field of these formats."""
    return max(8 + sum(f.bits for f in isa.BY_MNEMONIC[m].fields) for m in mnemonics)


class Fields:
    """Read the fields of one format out of a word: `Fields(word, "view")["rows"]`."""

    def __init__(self, word: Signal, mnemonic: str):
        self.word = word
        self.mnemonic = mnemonic

    def __getitem__(self, name: str) -> Signal:
        low, bits = field_position(self.mnemonic, name)
        return self.word[low:low + bits]


def opcode(word: Signal) -> Signal:
    return word[0:8]


def is_op(word: Signal, mnemonic: str) -> Signal:
    return opcode(word).eq(isa.BY_MNEMONIC[mnemonic].opcode)
