"""What the RTL needs from a compiled program: its memory images, its
hardware parameters, and a check that it stays within what the RTL runs.

The RTL implements the int8 weight-stationary machine: i8 operands and i32
accumulators (f32 models stay simulator-only), matrix and im2col views in
their weight-stationary roles, bias, relu, wrap and per-tensor requant in
the output unit. Host ops are not run (the program must have none).
"""

from __future__ import annotations

import functools

import numpy as np

from backends.systolic import isa
from backends.systolic.codegen import Compiled
from backends.systolic.rtl.design import (
    SPADS,
    TAG_BITS,
    RtlConfig,
    power_of_two_at_least,
)
from compiler.diagnostics import LoomError

MIN_PROGRAM_WORDS = 1024
MIN_DRAM_BYTES = 1 << 16

# The scratchpad each view slot is wired to.
SLOT_SPADS = {isa.SLOT_PRELOAD: "filter", isa.SLOT_LEFT: "ifmap", isa.SLOT_DRAIN: "ofmap",
              isa.SLOT_ACC: "ofmap", isa.SLOT_BIAS: "filter", isa.SLOT_OUT: "ofmap"}


class UnsupportedProgram(LoomError):
    """The program uses something the RTL does not implement."""


def rtl_config(compiled: Compiled) -> RtlConfig:
    """The RTL's parameters for a program. Memory sizes are rounded up (and to
    at least a common minimum) so programs for the same array share one design."""
    config = compiled.config
    if config.dram_bytes_per_cycle != int(config.dram_bytes_per_cycle) or config.dram_bytes_per_cycle < 1:
        raise UnsupportedProgram(f"the RTL moves whole bytes per cycle; the description says "
                                 f"{config.dram_bytes_per_cycle:g}")
    return RtlConfig(config.rows, config.cols, (config.ifmap_bytes, config.filter_bytes, config.ofmap_bytes),
                     max(MIN_DRAM_BYTES, power_of_two_at_least(compiled.dram_bytes)),
                     max(MIN_PROGRAM_WORDS, power_of_two_at_least(len(compiled.program))),
                     int(config.dram_bytes_per_cycle), config.dram_latency)


def check_program(compiled: Compiled) -> None:
    """Raise UnsupportedProgram naming the first instruction the RTL cannot run."""
    program = compiled.program
    if compiled.config.dataflow != "ws":
        raise UnsupportedProgram(f"the RTL implements the weight-stationary dataflow, not "
                                 f"'{compiled.config.dataflow}'")
    outstanding: dict[int, int] = {}  # tag slot -> tag issued into it and not yet waited for
    streaming = False
    for position, ins in enumerate(program):
        fail = functools.partial(_unsupported, position, ins)
        op = ins.mnemonic
        if op == "host":
            raise fail("the RTL does not run host ops; compile a model whose ops all run on the array")
        if op == "config" and (isa.DTYPES[ins["in_dtype"]], isa.DTYPES[ins["acc_dtype"]]) != ("i8", "i32"):
            raise fail("the RTL's datapath is i8 x i8 -> i32")
        if op in ("view", "view.im2col"):
            slot = ins["slot"]
            expected = SLOT_SPADS.get(slot)
            if expected is None:
                raise fail(f"view slot {slot} is not wired in the weight-stationary RTL")
            if SPADS[ins["spad"]] != expected:
                raise fail(f"view slot {slot} reads the {expected} scratchpad in the RTL")
            if op == "view.im2col" and (slot != isa.SLOT_LEFT or ins["transpose"]):
                raise fail("im2col views feed the stream, untransposed")
        if op in ("preload", "stream") and streaming:
            raise fail("a stream must be drained before the next preload or stream")
        if op == "stream":
            streaming = True
        if op == "drain":
            streaming = False
        if op == "post" and (ins["per_channel"] or isa.DTYPES[ins["out_dtype"]] == "f32"):
            raise fail("the RTL's output unit requantizes per tensor into i8 or i32")
        if op in ("dma.load", "dma.store", "post"):
            slot = ins["tag"] % (1 << TAG_BITS)
            if slot in outstanding:
                raise fail(f"tag {ins['tag']} shares a slot of the RTL's tag table with tag "
                           f"{outstanding[slot]}, which is still outstanding")
            outstanding[slot] = ins["tag"]
        if op == "wait":
            outstanding.pop(ins["tag"] % (1 << TAG_BITS), None)


def _unsupported(position: int, ins: isa.Instruction, reason: str) -> UnsupportedProgram:
    return UnsupportedProgram(f"instruction {position} ({isa.format_instruction(ins)}): {reason}")


def program_hex(program: list[isa.Instruction], words: int) -> str:
    """$readmemh image of the program memory: one 256-bit word per line."""
    lines = [int.from_bytes(isa.encode(ins), "little") for ins in program]
    lines += [isa.BY_MNEMONIC["halt"].opcode] * (words - len(lines))  # running past the end halts
    return "".join(f"{value:064x}\n" for value in lines)


def dram_hex(dram: np.ndarray) -> str:
    """$readmemh image of the DRAM: one byte per line."""
    return "".join(f"{byte:02x}\n" for byte in dram.tolist())


def initial_dram(compiled: Compiled, inputs: dict[str, np.ndarray], size: int) -> np.ndarray:
    dram = np.zeros(size, np.uint8)
    dram[:compiled.image.size] = compiled.image
    for name, place in compiled.inputs.items():
        place.write(dram, inputs[name])
    return dram


def cycle_limit(compiled: Compiled) -> int:
    """A bound no correct run reaches (twice the work of every instruction done
    one after the other), where a hung design is stopped."""
    config = compiled.config
    work, rows = 0, {}
    for ins in compiled.program:
        if ins.mnemonic in ("view", "view.im2col"):
            rows[ins["slot"]] = ins["rows"] * ins["cols"]
        elif ins.mnemonic.startswith("dma."):
            work += ins["rows"] * ins["row_bytes"] + config.dram_latency
        elif ins.mnemonic in ("stream", "post"):
            work += rows.get(isa.SLOT_LEFT if ins.mnemonic == "stream" else isa.SLOT_ACC, 0)
        work += config.rows + config.cols
    return 1000 + 2 * work
