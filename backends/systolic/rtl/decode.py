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

    def opcode(self) -> Signal:
        return self.word[0:8]

    def retyped(self, mnemonic: str) -> Fields:
        """The same word read as a `mnemonic` instruction."""
        return Fields(self.word, mnemonic)

    def is_op(self, mnemonic: str) -> Signal:
        return self.opcode().eq(isa.BY_MNEMONIC[mnemonic].opcode)


class SelectedFields(Fields):
    """The fields of `if_true` or of `if_false`, chosen field by field: a unit
    that reads a few fields of one of two words, without a mux of whole words
    whose other bits nothing reads."""

    def __init__(self, select: Signal, if_true: Fields, if_false: Fields):
        super().__init__(if_true.word, if_true.mnemonic)
        self.select, self.if_true, self.if_false = select, if_true, if_false

    def __getitem__(self, name: str) -> Signal:
        return self.select.mux(self.if_true[name], self.if_false[name])

    def opcode(self) -> Signal:
        return self.select.mux(self.if_true.opcode(), self.if_false.opcode())

    def retyped(self, mnemonic: str) -> SelectedFields:
        return SelectedFields(self.select, self.if_true.retyped(mnemonic), self.if_false.retyped(mnemonic))


def opcode(word: Signal) -> Signal:
    return word[0:8]


def is_op(word: Signal, mnemonic: str) -> Signal:
    return opcode(word).eq(isa.BY_MNEMONIC[mnemonic].opcode)
