"""Byte-addressed memories made of interleaved block-RAM banks.

A block RAM has one read and one write port (an ECP5 DP16KD two of either),
so a client that moves several elements per cycle needs them in different
banks. A `Banked` memory spreads 32-bit words over `banks` banks, word `w` in
bank `w mod banks` at row `w div banks`: a run of `n` consecutive bytes
touches at most ceil((n + 3) / 4) banks once each (`banks_for`), and so does
a column of words whose pitch is odd.

Every access is a list of `Access` lanes. Lanes of one access that meet in a
bank must want the same row there (whoever generates the accesses proves
it; the systolic program checker does); the bank takes the row of the first
enabled lane that hits it, and writes merge the lanes' bytes with the
word's byte mask. Reads are synchronous: the element of a lane addressed in
cycle t arrives in cycle t + 1, through a register on the bank's output
that synthesis folds into a block RAM (a read in the cycle of a write to the
same word sees the old word). Copies of a memory are written together and each has its own
read port: the way to give a memory more readers than a bank has ports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from backends.rtl.netlist import ModuleBuilder, Signal, bits_for

WORD_BYTES = 4


def banks_for(*spans: int, words: int = 0) -> int:
    """The fewest banks, a power of two, that serve runs of each of `spans`
    consecutive bytes at any address and runs of `words` aligned words."""
    need = max([words, *(-(-(span + WORD_BYTES - 1) // WORD_BYTES) for span in spans), 1])
    return 1 << (need - 1).bit_length()


@dataclass(frozen=True)
class Access:
    """One lane: a byte address, whether the lane is active, and whether it
    moves an aligned i32 word rather than one byte (None: always a byte)."""

    address: Signal
    enable: Signal
    word: Signal | None = None


def element(m: ModuleBuilder, word: Signal, byte_address: Signal, is_word: Signal | None) -> Signal:
    """The i8 (sign-extended to 32 bits) or i32 element at `byte_address` of a 32-bit word."""
    byte = m.select(byte_address[0:2], [word[8 * k:8 * k + 8] for k in range(WORD_BYTES)]).sext(32)
    return byte if is_word is None else m.mux(is_word, word, byte)


def _bits(signal: Signal, low: int, width: int) -> Signal:
    """`width` bits of `signal` from bit `low`, zeros above its top."""
    return signal[low:min(signal.width, low + width)].zext(width)


@dataclass(frozen=True)
class BankLayout:
    """Where each byte of a `size`-byte memory of `banks` banks lives, and the
    `$readmemh` files (`{name}_b{bank}.hex`) that load it."""

    name: str
    size: int
    banks: int

    @property
    def depth(self) -> int:
        """Words per bank, a power of two."""
        return 1 << max(1, (math.ceil(self.size / (WORD_BYTES * self.banks)) - 1).bit_length())

    def file(self, bank: int) -> str:
        return f"{self.name}_b{bank}.hex"

    def image(self, data: np.ndarray) -> dict[str, str]:
        """The files holding `data` (bytes from address 0): one 32-bit word per line."""
        size = self.depth * self.banks * WORD_BYTES
        padded = np.zeros(size, np.uint8)
        padded[:min(size, data.size)] = data[:size]
        words = padded.view("<u4").reshape(self.depth, self.banks)
        return {self.file(bank): "".join(f"{word:08x}\n" for word in words[:, bank].tolist())
                for bank in range(self.banks)}


class Banked:
    """A memory laid out as `layout` says, `copies` times over; with `init`,
    loaded from the layout's files."""

    def __init__(self, m: ModuleBuilder, layout: BankLayout, copies: int = 1, init: bool = False):
        self.m, self.layout, self.banks = m, layout, layout.banks
        self.bank_bits = layout.banks.bit_length() - 1
        self.row_bits = bits_for(layout.depth - 1)
        self.copies = [[m.memory(f"{layout.name}{copy if copies > 1 else ''}_b{bank}", layout.depth, 8 * WORD_BYTES,
                                 mask=WORD_BYTES, init_file=layout.file(bank) if init else None)
                        for bank in range(layout.banks)] for copy in range(copies)]

    def _bank(self, lane: Access) -> Signal | None:
        return _bits(lane.address, 2, self.bank_bits) if self.bank_bits else None

    def _row(self, lane: Access) -> Signal:
        return _bits(lane.address, 2 + self.bank_bits, self.row_bits)

    def _hits(self, lanes: list[Access], bank: int) -> list[Signal]:
        return [lane.enable if self.bank_bits == 0 else lane.enable & self._bank(lane).eq(bank)  # type: ignore[union-attr]
                for lane in lanes]

    @staticmethod
    def _first(m: ModuleBuilder, hits: list[Signal], values: list[Signal]) -> Signal:
        """The value of the first lane that hits (the last lane's when none does)."""
        chosen = values[-1]
        for hit, value in zip(reversed(hits[:-1]), reversed(values[:-1])):
            chosen = m.mux(hit, value, chosen)
        return chosen

    def read(self, copy: int, lanes: list[Access]) -> list[Signal]:
        """Each lane's element (32 bits: an i8 sign-extended, or an i32), one cycle later."""
        m = self.m
        rows = [self._row(lane) for lane in lanes]
        words = [m.delay(memory.read(self._first(m, self._hits(lanes, bank), rows)), name=memory.op.memory.name_hint)
                 for bank, memory in enumerate(self.copies[copy])]
        out = []
        for lane in lanes:
            word = words[0] if self.bank_bits == 0 else m.select(m.delay(self._bank(lane)), words)  # type: ignore[arg-type]
            out.append(element(m, word, m.delay(lane.address[0:2]),
                               None if lane.word is None else m.delay(lane.word)))
        return out

    def write(self, lanes: list[tuple[Access, Signal]]) -> None:
        """Store each enabled lane's element (the low byte of its value, or the
        whole 32-bit value for a word lane) into every copy."""
        m = self.m
        accesses = [access for access, _ in lanes]
        rows = [self._row(access) for access in accesses]
        # Per byte of a word: whether each lane writes it, and the byte it writes there.
        covering = [[access.address[0:2].eq(position) if access.word is None else
                     access.word | access.address[0:2].eq(position) for access in accesses]
                    for position in range(WORD_BYTES)]
        placed = [[value[0:8] if access.word is None else
                   m.mux(access.word, value[8 * position:8 * position + 8], value[0:8])
                   for access, value in lanes] for position in range(WORD_BYTES)]
        for bank in range(self.banks):
            hits = self._hits(accesses, bank)
            data, mask = [], []
            for covers_position, values in zip(covering, placed):
                covers = [hit & cover for hit, cover in zip(hits, covers_position)]
                data.append(self._first(m, covers, values))
                mask.append(m.any_of(covers))
            row = self._first(m, hits, rows)
            for memories in self.copies:
                memories[bank].write(row, m.concat(*reversed(data)), m.any_of(hits), m.concat(*reversed(mask)))
