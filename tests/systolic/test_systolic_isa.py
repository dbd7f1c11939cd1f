"""The instruction encodings: text and binary round trips, limits, diagnostics."""

from __future__ import annotations

import pytest

from backends.systolic import isa
from compiler.diagnostics import InternalError, LoomError
from systolic_models import compiled_int8, compiled_sample


def _extreme(fmt: isa.Format, high: bool) -> isa.Instruction:
    values = {}
    for field in fmt.fields:
        if field.signed:
            values[field.name] = (1 << (field.bits - 1)) - 1 if high else -(1 << (field.bits - 1))
        else:
            values[field.name] = (1 << field.bits) - 1 if high else 0
    return isa.make(fmt.mnemonic, **values)


@pytest.mark.parametrize("fmt", isa.FORMATS, ids=lambda f: f.mnemonic)
def test_every_format_round_trips_at_its_limits(fmt: isa.Format) -> None:
    for high in (False, True):
        instruction = _extreme(fmt, high)
        raw = isa.encode(instruction)
        assert len(raw) == isa.INSTRUCTION_BYTES and raw[0] == fmt.opcode
        assert isa.decode(raw) == instruction
        assert isa.assemble(isa.format_instruction(instruction)) == [instruction]


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_compiled_programs_round_trip(dataflow: str) -> None:
    for artifact in (compiled_sample("resblock.loom", "16x16", dataflow), compiled_int8("8x8", dataflow)):
        program = artifact.compiled.program
        text = isa.disassemble(program)
        binary = isa.to_binary(program)
        assert isa.assemble(text) == program
        assert isa.from_binary(binary) == program
        assert isa.disassemble(isa.from_binary(binary)) == text
        assert isa.to_binary(isa.assemble(text)) == binary
        assert len(binary) == isa.HEADER.size + len(program) * isa.INSTRUCTION_BYTES


def test_text_form_is_readable() -> None:
    instruction = isa.make("dma.load", tag=3, spad=1, spad_addr=64, dram_addr=4096, rows=2, row_bytes=16,
                           dram_stride=32, spad_stride=16)
    text = isa.format_instruction(instruction)
    assert text == ("dma.load tag=3 spad=filter spad_addr=64 dram_addr=4096 rows=2 row_bytes=16 "
                    "dram_stride=32 spad_stride=16")
    # Enumerations take names or numbers, fields any order, numbers in any base.
    assert isa.assemble("dma.load spad_stride=0x10 tag=3 spad=1 spad_addr=64 dram_addr=0x1000 rows=2 "
                        "row_bytes=16 dram_stride=32  # a comment") == [instruction]


def test_signed_fields_keep_their_sign() -> None:
    post = isa.make("post", tag=1, bias=0, relu=1, mode=2, out_dtype=0, multiplier=3, shift=4, zero_point=-7)
    assert isa.decode(isa.encode(post))["zero_point"] == -7
    assert "zero_point=-7" in isa.format_instruction(post)


def test_values_that_do_not_fit_are_refused() -> None:
    with pytest.raises(InternalError, match="tag=65536 does not fit in 16 bits"):
        isa.make("wait", tag=1 << 16)
    with pytest.raises(InternalError, match="missing fields"):
        isa.make("wait")


@pytest.mark.parametrize(
    "line, message, column",
    [
        ("jump to=3", "unknown instruction 'jump'", 1),
        ("wait tag=3 slot=1", "'slot=1' is not a field of wait (fields: tag)", 12),
        ("wait tag=70000", "wait: tag=70000 does not fit in 16 bits", 6),
        ("wait tag=three", "tag takes a number, got 'three'", 6),
        ("config rows=4 cols=4 dataflow=xs in_dtype=i8 acc_dtype=i32",
         "dataflow takes a number or one of ws, os, is, got 'xs'", 22),
        ("  preload\nstream", "stream is missing top", 1),
    ],
)
def test_assembler_errors_point_at_the_field(line: str, message: str, column: int) -> None:
    with pytest.raises(LoomError) as caught:
        isa.assemble(line, "prog.s")
    error = caught.value
    assert message in error.message
    assert error.location is not None and error.location.path == "prog.s"
    assert error.location.column == column
    assert error.render().startswith(f"prog.s:{error.location.line}:{column}: error:")


def test_binary_errors() -> None:
    with pytest.raises(LoomError, match="unknown opcode 0xff"):
        isa.decode(b"\xff" + bytes(isa.INSTRUCTION_BYTES - 1))
    with pytest.raises(LoomError, match="bits above its last field"):
        isa.decode(bytes([0x12, 1, 0, 1]) + bytes(isa.INSTRUCTION_BYTES - 4))
    with pytest.raises(LoomError, match="not a version 1 systolic program"):
        isa.from_binary(b"ELF\x00" + bytes(12))
    good = isa.to_binary([isa.make("halt")])
    with pytest.raises(LoomError, match="announces 1 instructions"):
        isa.from_binary(good[:-1])
