"""The mem dialect: printed form round-trips, builders, and every verifier error."""

from __future__ import annotations

import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, f32, i8
from xdsl.ir import Block, Region

from compiler.diagnostics import LoomError
from compiler.mlir import parse_mlir
from compiler.targets import load_target
from dialects import mem

LEVELS = "{L1 = 32768 : i64, L2 = 1048576 : i64, DRAM = 8589934592 : i64}"

ROUND_TRIP = f"""\
builtin.module attributes {{mem.target = {LEVELS}}} {{
  func.func @copy_in(%src : memref<64x64xf32, #mem.space<"DRAM">>) {{
    %buf = mem.alloc {{alignment = 64 : i64}} : memref<16x16xf32, #mem.space<"L1">>
    %tile = memref.subview %src[16, 0] [16, 16] [1, 1] : memref<64x64xf32, #mem.space<"DRAM">> to memref<16x16xf32, strided<[64, 1], offset: 1024>, #mem.space<"DRAM">>
    %t = mem.dma_start %tile, %buf : memref<16x16xf32, strided<[64, 1], offset: 1024>, #mem.space<"DRAM">> to memref<16x16xf32, #mem.space<"L1">>
    mem.dma_wait %t
    %back = mem.dma_start %buf, %tile : memref<16x16xf32, #mem.space<"L1">> to memref<16x16xf32, strided<[64, 1], offset: 1024>, #mem.space<"DRAM">>
    mem.dma_wait %back
    mem.dealloc %buf : memref<16x16xf32, #mem.space<"L1">>
    func.return
  }}
}}
"""


def test_printed_form_round_trips() -> None:
    module = parse_mlir(ROUND_TRIP)
    printed = str(module)
    assert str(parse_mlir(printed)) == printed
    assert '%t = mem.dma_start %tile, %buf : memref<16x16xf32, strided<[64, 1], offset: 1024>, #mem.space<"DRAM">>' in printed
    assert 'mem.alloc {alignment = 64 : i64} : memref<16x16xf32, #mem.space<"L1">>' in printed
    alloc = next(op for op in module.walk() if isinstance(op, mem.AllocOp))
    assert alloc.memref.type.memory_space == mem.MemSpaceAttr("L1")
    assert isinstance(next(op for op in module.walk() if isinstance(op, mem.DmaStartOp)).token.type, mem.TokenType)


def test_builders_from_a_target_description() -> None:
    target = load_target("systolic-16x16")
    dram_tile = mem.memref_in("DRAM", [64, 64], i8)
    body = Block(arg_types=[dram_tile])
    alloc = mem.AllocOp(mem.memref_in("sram", [64, 64], i8), alignment=16)
    start = mem.DmaStartOp(body.args[0], alloc)
    body.add_ops([alloc, start, mem.DmaWaitOp(start), mem.DeallocOp(alloc), func.ReturnOp()])
    function = func.FuncOp("load", ((dram_tile,), ()), Region(body))
    module = ModuleOp([function])
    module.attributes[mem.TARGET_ATTR] = mem.target_attr({l.name: l.capacity_bytes for l in target.memory})
    module.verify()
    assert mem.buffer_bytes(alloc.memref.type) == 64 * 64
    assert str(parse_mlir(str(module))) == str(module)


def module_with(body: str, arg: str = 'memref<8x8xf32, #mem.space<"DRAM">>', levels: str | None = LEVELS) -> str:
    attributes = f" attributes {{mem.target = {levels}}}" if levels else ""
    return f"""
builtin.module{attributes} {{
  func.func @f(%src : {arg}) {{
{body}
    func.return
  }}
}}
"""


def dma(src: str, dst_type: str) -> str:
    return f"""    %dst = mem.alloc : {dst_type}
    %t = mem.dma_start %src, %dst : {src} to {dst_type}
    mem.dma_wait %t"""


DRAM_8x8 = 'memref<8x8xf32, #mem.space<"DRAM">>'


@pytest.mark.parametrize(
    "text, message",
    [
        (
            module_with(dma(DRAM_8x8, 'memref<8x4xf32, #mem.space<"L1">>')),
            "mem.dma_start: source shape [8, 8] differs from destination shape [8, 4]",
        ),
        (
            module_with(dma(DRAM_8x8, 'memref<8x8xi32, #mem.space<"L1">>')),
            "mem.dma_start: source element type f32 differs from destination element type i32",
        ),
        (
            module_with(dma(DRAM_8x8, 'memref<8x8xf32, #mem.space<"DRAM">>')),
            "mem.dma_start: source and destination are both in level 'DRAM'",
        ),
        (
            module_with(dma(DRAM_8x8, 'memref<8x8xf32, #mem.space<"L3">>')),
            "mem.alloc: unknown memory level 'L3' (levels: L1, L2, DRAM)",
        ),
        (
            module_with(dma("memref<8x8xf32>", 'memref<8x8xf32, #mem.space<"L1">>'), arg="memref<8x8xf32>"),
            "mem.dma_start: the source must be in a #mem.space memory space",
        ),
        (
            module_with('    %big = mem.alloc : memref<128x128xf32, #mem.space<"L1">>'),
            "mem.alloc: a 65536-byte buffer does not fit in level 'L1' (32768 bytes)",
        ),
        (
            module_with('    %b = mem.alloc : memref<8x8xf32, #mem.space<"L1">>', levels=None),
            "mem.alloc: no enclosing module has a 'mem.target' attribute naming the levels",
        ),
        (
            module_with('    %b = mem.alloc : memref<8x8xf32, #mem.space<"L1">>', levels='"host"'),
            "mem.target must map level names to integer capacities in bytes",
        ),
        (
            module_with('    %b = mem.alloc {alignment = 24 : i64} : memref<8x8xf32, #mem.space<"L1">>'),
            "mem.alloc: alignment must be a positive power of two, got 24",
        ),
        (
            module_with('    %b = mem.alloc : memref<?x8xf32, #mem.space<"L1">>'),
            "mem.alloc: buffers have static shapes",
        ),
        (
            module_with("    mem.dealloc %src : memref<8x8xf32, #mem.space<\"HBM\">>", arg='memref<8x8xf32, #mem.space<"HBM">>'),
            "mem.dealloc: unknown memory level 'HBM'",
        ),
    ],
)
def test_verifier_errors(text: str, message: str) -> None:
    with pytest.raises(LoomError) as info:
        parse_mlir(text)
    assert message in info.value.message


def test_capacity_is_per_level_and_inclusive() -> None:
    exactly_full = module_with('    %b = mem.alloc : memref<64x128xf32, #mem.space<"L1">>')  # 32768 bytes
    parse_mlir(exactly_full)
    in_l2 = module_with('    %b = mem.alloc : memref<128x128xf32, #mem.space<"L2">>')
    parse_mlir(in_l2)


def test_nearest_module_with_a_target_wins() -> None:
    text = f"""
builtin.module attributes {{mem.target = {LEVELS}}} {{
  builtin.module attributes {{mem.target = {{L1 = 64 : i64, DRAM = 4096 : i64}}}} {{
    func.func @f() {{
      %b = mem.alloc : memref<8x8xf32, #mem.space<"L1">>
      func.return
    }}
  }}
}}
"""
    with pytest.raises(LoomError, match="a 256-byte buffer does not fit in level 'L1' \\(64 bytes\\)"):
        parse_mlir(text)


def test_memory_space_attribute_prints_and_compares_by_level() -> None:
    assert str(mem.MemSpaceAttr("L2")) == '#mem.space<"L2">'
    assert mem.MemSpaceAttr("L2") == mem.MemSpaceAttr("L2") != mem.MemSpaceAttr("L1")
    assert str(mem.memref_in("L2", [4, 4], f32)) == 'memref<4x4xf32, #mem.space<"L2">>'
