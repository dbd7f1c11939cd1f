"""The systolic accelerator's instruction set: encodings, assembler, disassembler.

A program is a flat stream of fixed-size instructions, 32 bytes each, that a
sequencer issues in order; the simulator (`simulator.py`) and the RTL execute
the same stream. Byte 0 is the opcode; the fields follow from bit 8 upwards,
each packed little-endian in the width the table below gives it, so an
instruction is one 256-bit word whose low byte says how to slice the rest.

Machine model, in short (docs/targets/systolic.md has the full semantics):

- Three scratchpads (`ifmap`, `filter`, `ofmap`), byte addressed. DRAM is
  byte addressed too.
- `dma.load` / `dma.store` copy `rows` rows of `row_bytes` bytes between
  DRAM and a scratchpad, each side with its own row stride. They are queued
  to the DMA engine and complete in the background; `wait tag=T` stalls the
  sequencer until the transfer (or `post`) tagged T has finished.
- `view` and `view.im2col` load one of eight view registers (slots), which
  say where an array op finds a matrix: 0 preload, 1 stream (left),
  2 stream (top), 3 drain, 4 post accumulator, 5 post bias, 6 post output,
  7 post scales (per-column requantization multipliers and shifts).
- `preload`, `stream` and `drain` run on the array and hold the sequencer
  until they finish; `post` runs on the output unit beside it.
- `layer` marks where a layer starts (for statistics); `host` hands DRAM to
  the host, which runs host op number `op` before the program continues.

The text form is one instruction per line, `mnemonic field=value ...`, with
every field spelled out; `#` starts a comment. Enumerated fields take names
(`spad=ifmap`, `dtype=f32`) or numbers. Fields added to a format after its
first version have a default (the old behaviour), which `make` and the
assembler fill in when the field is not given.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from compiler.diagnostics import InternalError, LoomError, SourceLocation

INSTRUCTION_BYTES = 32
MAGIC = b"LSYS"
VERSION = 1
HEADER = struct.Struct("<4sHHII")  # magic, version, instruction bytes, count, reserved

SPADS = ("ifmap", "filter", "ofmap")
DTYPES = ("i8", "i32", "f32")
DATAFLOWS = ("ws", "os", "is")
POST_MODES = ("none", "wrap", "requant")

# View register slots.
VIEW_SLOTS = 8
SLOT_PRELOAD, SLOT_LEFT, SLOT_TOP, SLOT_DRAIN, SLOT_ACC, SLOT_BIAS, SLOT_OUT, SLOT_SCALES = range(VIEW_SLOTS)


@dataclass(frozen=True)
class Field:
    name: str
    bits: int
    signed: bool = False
    names: tuple[str, ...] = ()  # symbolic values of an enumerated field
    default: int | None = None  # for fields added later: the value that keeps the old meaning

    def check(self, value: int) -> None:
        low, high = (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if self.signed else (0, (1 << self.bits) - 1)
        if not low <= value <= high:
            raise ValueError(f"{self.name}={value} does not fit in {self.bits} {'signed ' if self.signed else ''}bits")


@dataclass(frozen=True)
class Format:
    opcode: int
    mnemonic: str
    fields: tuple[Field, ...]


def _dma(opcode: int, mnemonic: str) -> Format:
    return Format(opcode, mnemonic, (
        Field("tag", 16), Field("spad", 2, names=SPADS), Field("spad_addr", 24), Field("dram_addr", 40),
        Field("rows", 16), Field("row_bytes", 24), Field("dram_stride", 32), Field("spad_stride", 24)))


_VIEW_HEAD = (Field("slot", 3), Field("spad", 2, names=SPADS), Field("dtype", 4, names=DTYPES),
              Field("offset", 24), Field("rows", 16), Field("cols", 16))

FORMATS: tuple[Format, ...] = (
    Format(0x00, "nop", ()),
    Format(0x01, "config", (Field("rows", 16), Field("cols", 16), Field("dataflow", 2, names=DATAFLOWS),
                            Field("in_dtype", 4, names=DTYPES), Field("acc_dtype", 4, names=DTYPES))),
    Format(0x02, "layer", (Field("id", 16),)),
    Format(0x03, "halt", ()),
    Format(0x04, "host", (Field("op", 16),)),
    _dma(0x10, "dma.load"),
    _dma(0x11, "dma.store"),
    Format(0x12, "wait", (Field("tag", 16),)),
    Format(0x20, "view", _VIEW_HEAD + (Field("row_stride", 24), Field("col_stride", 24))),
    Format(0x21, "view.im2col", _VIEW_HEAD + (
        Field("oh0", 20), Field("ow0", 12), Field("c0", 20), Field("kh0", 4), Field("kw0", 4), Field("out_w", 12), Field("kernel_h", 4), Field("kernel_w", 4),
        Field("stride_h", 4), Field("stride_w", 4), Field("dilation_h", 4), Field("dilation_w", 4),
        Field("row0", 13), Field("col0", 8), Field("band_h", 12), Field("band_w", 12),
        Field("channel_stride", 24), Field("transpose", 1), Field("pad_value", 8, signed=True, default=0))),
    Format(0x30, "preload", ()),
    Format(0x31, "stream", (Field("top", 1),)),
    Format(0x32, "drain", (Field("accumulate", 1),)),
    Format(0x33, "post", (Field("tag", 16), Field("bias", 1), Field("relu", 1), Field("mode", 2, names=POST_MODES),
                          Field("out_dtype", 4, names=DTYPES), Field("multiplier", 32), Field("shift", 6),
                          Field("zero_point", 16, signed=True), Field("per_channel", 1, default=0))),
)

BY_MNEMONIC = {f.mnemonic: f for f in FORMATS}
BY_OPCODE = {f.opcode: f for f in FORMATS}
for _format in FORMATS:
    assert 8 + sum(f.bits for f in _format.fields) <= INSTRUCTION_BYTES * 8, _format.mnemonic


@dataclass(frozen=True)
class Instruction:
    """One instruction: its mnemonic and every field's value, in format order."""

    mnemonic: str
    values: tuple[int, ...]

    @property
    def format(self) -> Format:
        return BY_MNEMONIC[self.mnemonic]

    def __getitem__(self, name: str) -> int:
        for field, value in zip(self.format.fields, self.values):
            if field.name == name:
                return value
        raise KeyError(f"{self.mnemonic} has no field '{name}'")

    def fields(self) -> dict[str, int]:
        return {f.name: v for f, v in zip(self.format.fields, self.values)}


def _with_defaults(fmt: Format, given: dict[str, int]) -> dict[str, int]:
    return {f.name: f.default for f in fmt.fields if f.default is not None} | given


def make(mnemonic: str, **fields: int) -> Instruction:
    """Build an instruction; every field without a default must be given, and all must fit."""
    fmt = BY_MNEMONIC[mnemonic]
    names = [f.name for f in fmt.fields]
    fields = _with_defaults(fmt, fields)
    if set(fields) != set(names):
        missing, extra = set(names) - set(fields), set(fields) - set(names)
        raise InternalError(f"{mnemonic}: missing fields {sorted(missing)}, unknown fields {sorted(extra)}")
    values = tuple(int(fields[n]) for n in names)
    for field, value in zip(fmt.fields, values):
        try:
            field.check(value)
        except ValueError as e:
            raise InternalError(f"{mnemonic}: {e}") from None
    return Instruction(mnemonic, values)


# --------------------------------------------------------------------------
# Binary
# --------------------------------------------------------------------------


def encode(instruction: Instruction) -> bytes:
    fmt = instruction.format
    word, position = fmt.opcode, 8
    for field, value in zip(fmt.fields, instruction.values):
        word |= (value & ((1 << field.bits) - 1)) << position
        position += field.bits
    return word.to_bytes(INSTRUCTION_BYTES, "little")


def decode(raw: bytes) -> Instruction:
    if len(raw) != INSTRUCTION_BYTES:
        raise LoomError(f"an instruction is {INSTRUCTION_BYTES} bytes, got {len(raw)}")
    word = int.from_bytes(raw, "little")
    fmt = BY_OPCODE.get(word & 0xFF)
    if fmt is None:
        raise LoomError(f"unknown opcode 0x{word & 0xFF:02x}")
    values, position = [], 8
    for field in fmt.fields:
        value = (word >> position) & ((1 << field.bits) - 1)
        if field.signed and value >> (field.bits - 1):
            value -= 1 << field.bits
        values.append(value)
        position += field.bits
    if word >> position:
        raise LoomError(f"{fmt.mnemonic}: bits above its last field are set")
    return Instruction(fmt.mnemonic, tuple(values))


def to_binary(program: list[Instruction]) -> bytes:
    return HEADER.pack(MAGIC, VERSION, INSTRUCTION_BYTES, len(program), 0) + b"".join(map(encode, program))


def from_binary(data: bytes) -> list[Instruction]:
    if len(data) < HEADER.size:
        raise LoomError("not a systolic program: the file is shorter than its header")
    magic, version, size, count, _ = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION or size != INSTRUCTION_BYTES:
        raise LoomError(f"not a version {VERSION} systolic program (magic {magic!r}, version {version})")
    body = data[HEADER.size:]
    if len(body) != count * INSTRUCTION_BYTES:
        raise LoomError(f"the header announces {count} instructions but the file holds {len(body) / size:g}")
    return [decode(body[i:i + size]) for i in range(0, len(body), size)]


# --------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------


def _spell(field: Field, value: int) -> str:
    if field.names and 0 <= value < len(field.names):
        return field.names[value]
    return str(value)


def format_instruction(instruction: Instruction) -> str:
    parts = [instruction.mnemonic]
    parts += [f"{f.name}={_spell(f, v)}" for f, v in zip(instruction.format.fields, instruction.values)]
    return " ".join(parts)


def disassemble(program: list[Instruction]) -> str:
    header = f"# loom systolic program, version {VERSION}, {len(program)} instructions\n"
    return header + "".join(format_instruction(i) + "\n" for i in program)


_TOKEN = re.compile(r"(\S+?)=(\S+)")


def assemble(text: str, path: str = "<program>") -> list[Instruction]:
    """Parse the text form; errors point at the offending line and field."""
    program = []
    for number, line in enumerate(text.splitlines(), 1):
        code = line.split("#", 1)[0]
        if not code.strip():
            continue
        column = len(code) - len(code.lstrip()) + 1

        def error(message: str, at: int = column, length: int = 1) -> LoomError:
            return LoomError(message, SourceLocation(path, number, at, text, length))

        mnemonic, *tokens = code.split()
        fmt = BY_MNEMONIC.get(mnemonic)
        if fmt is None:
            raise error(f"unknown instruction '{mnemonic}'", length=len(mnemonic))
        given: dict[str, int] = {}
        for token in tokens:
            at = code.index(token) + 1
            match = _TOKEN.fullmatch(token)
            field = next((f for f in fmt.fields if match and f.name == match.group(1)), None)
            if match is None or field is None:
                known = ", ".join(f.name for f in fmt.fields) or "none"
                raise error(f"'{token}' is not a field of {mnemonic} (fields: {known})", at, len(token))
            raw = match.group(2)
            if raw in field.names:
                value = field.names.index(raw)
            else:
                try:
                    value = int(raw, 0)
                except ValueError:
                    raise error(f"{field.name} takes a number"
                                + (f" or one of {', '.join(field.names)}" if field.names else "")
                                + f", got '{raw}'", at, len(token)) from None
            try:
                field.check(value)
            except ValueError as e:
                raise error(f"{mnemonic}: {e}", at, len(token)) from None
            given[field.name] = value
        given = _with_defaults(fmt, given)
        missing = [f.name for f in fmt.fields if f.name not in given]
        if missing:
            raise error(f"{mnemonic} is missing {', '.join(missing)}", length=len(mnemonic))
        program.append(Instruction(mnemonic, tuple(given[f.name] for f in fmt.fields)))
    return program
