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
    POST_WRITE_DELAY,
    PROGRAM_FILE,
    SPADS,
    TAG_BITS,
    RtlConfig,
    power_of_two_at_least,
)
from backends.systolic.simulator import post_walks_columns
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
    if compiled.config.dram_latency < 1:
        raise UnsupportedProgram("the RTL's DMA engine writes a cycle after it reads, so DRAM latency must be "
                                 "at least one cycle")
    memories = _Memories(rtl_config(compiled))
    outstanding: dict[int, int] = {}  # tag slot -> tag issued into it and not yet waited for
    accumulator_loads: set[int] = set()  # tags of DMA loads into the ofmap not yet waited for
    posts: set[int] = set()  # tags of posts not yet waited for
    views: dict[int, isa.Instruction] = {}
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
            views[slot] = ins
        if op in ("preload", "stream", "drain") and accumulator_loads:
            raise fail("the array runs while a DMA load into the ofmap is in flight; the RTL's drains and "
                       "such loads share the accumulators' write port")
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
        if op == "dma.store" and posts:
            raise fail(f"a store issued before the post with tag {min(posts)} was waited for; the RTL's output "
                       f"unit writes its results up to {POST_WRITE_DELAY} cycles after reading their accumulators")
        if op == "dma.load" and SPADS[ins["spad"]] == "ofmap":
            accumulator_loads.add(ins["tag"])
        if op == "post":
            posts.add(ins["tag"])
        if op == "wait":
            outstanding.pop(ins["tag"] % (1 << TAG_BITS), None)
            accumulator_loads.discard(ins["tag"])
            posts.discard(ins["tag"])
        problem = memories.check(ins, views)
        if problem:
            raise fail(problem)


class _Memories:
    """What the RTL's memories allow: no access meets itself in a bank, and the
    ofmap's two memories keep their roles (accumulators are written by drains
    and DMA loads, outputs by the output unit, and each is read from the
    memory that holds it)."""

    ACCUMULATORS, OUTPUTS = 1, 2

    def __init__(self, config: RtlConfig):
        self.config = config
        self.banks = {name: layout.banks for name, layout in config.layouts.items()}
        self.owner = np.zeros(config.spad_bytes[2] + 8, np.int8)

    def check(self, ins: isa.Instruction, views: dict[int, isa.Instruction]) -> str | None:
        op, lanes = ins.mnemonic, self.config.cols
        if op == "preload":
            return _conflict(_addresses(views[isa.SLOT_PRELOAD]), lanes, self.banks["filter"], "preload row")
        if op == "drain":
            view = views[isa.SLOT_DRAIN]
            addresses = _addresses(view)
            if ins["accumulate"] and not self._owned(addresses, 4, self.ACCUMULATORS):
                return "the drain adds to bytes the output unit wrote; the RTL keeps accumulators apart"
            self._own(addresses, 4, self.ACCUMULATORS)
            return _conflict(addresses, lanes, self.banks["acc"], "drain row")
        if op == "post":
            return self._post(ins, views)
        if op == "dma.load" and SPADS[ins["spad"]] == "ofmap":
            self._own(_transfer(ins), 1, self.ACCUMULATORS)
        if op == "dma.store":
            if SPADS[ins["spad"]] != "ofmap":
                return "the RTL's DMA engine stores from the ofmap scratchpad only"
            if not self._owned(_transfer(ins), 1, self.OUTPUTS):
                return "the store reads accumulators; the RTL stores what the output unit wrote"
        return None

    def _post(self, ins: isa.Instruction, views: dict[int, isa.Instruction]) -> str | None:
        acc, out = views[isa.SLOT_ACC], views[isa.SLOT_OUT]
        acc_addresses, out_addresses = _addresses(acc), _addresses(out)
        if not self._owned(acc_addresses, 4, self.ACCUMULATORS):
            return "the post reads bytes the output unit wrote as accumulators; the RTL keeps them apart"
        grids = [(acc_addresses, "acc", "accumulator"), (out_addresses, "out", "output")]
        if ins["bias"]:
            bias = _addresses(views[isa.SLOT_BIAS])
            grids.append((np.broadcast_to(bias[:1], acc_addresses.shape), "filter", "bias"))
        by_columns = post_walks_columns(out)
        for grid, memory, what in grids:
            problem = _conflict(grid.T if by_columns else grid, self.config.cols, self.banks[memory], f"post {what}")
            if problem:
                return problem
        self._own(out_addresses, _itemsize(out), self.OUTPUTS)
        return None

    def _bytes(self, addresses: np.ndarray, size: int) -> np.ndarray:
        spans = addresses.reshape(-1)[:, None] + np.arange(size)
        return spans[spans < self.owner.size]

    def _own(self, addresses: np.ndarray, size: int, owner: int) -> None:
        self.owner[self._bytes(addresses, size)] = owner

    def _owned(self, addresses: np.ndarray, size: int, owner: int) -> bool:
        found = self.owner[self._bytes(addresses, size)]
        return bool(np.all((found == 0) | (found == owner)))


def _itemsize(view: isa.Instruction) -> int:
    return 4 if isa.DTYPES[view["dtype"]] == "i32" else 1


def _addresses(view: isa.Instruction) -> np.ndarray:
    """The byte address of each element of a matrix view, rows x cols."""
    rows, cols = np.arange(view["rows"])[:, None], np.arange(view["cols"])[None, :]
    return view["offset"] + (rows * view["row_stride"] + cols * view["col_stride"]) * _itemsize(view)


def _transfer(ins: isa.Instruction) -> np.ndarray:
    """The scratchpad byte addresses a DMA transfer touches."""
    rows, cols = np.arange(ins["rows"])[:, None], np.arange(ins["row_bytes"])[None, :]
    return ins["spad_addr"] + rows * ins["spad_stride"] + cols


def _conflict(lines: np.ndarray, lanes: int, banks: int, what: str) -> str | None:
    """Why a unit taking up to `lanes` elements of one line (row of `lines`)
    per cycle would need two rows of one bank in a cycle, or None."""
    count, length = lines.shape
    groups = -(-length // lanes)
    padded = np.zeros((count, groups * lanes), np.int64)
    valid = np.zeros(padded.shape, bool)
    padded[:, :length], valid[:, :length] = lines, True
    words = padded.reshape(-1, lanes) // 4
    valid = valid.reshape(-1, lanes)
    bank, row = words % banks, words // banks
    clash = ((bank[:, :, None] == bank[:, None, :]) & (row[:, :, None] != row[:, None, :])
             & valid[:, :, None] & valid[:, None, :])
    if clash.any():
        group = int(np.argwhere(clash.any(axis=(1, 2)))[0, 0])
        return (f"a {what} reads or writes bytes {padded.reshape(-1, lanes)[group][valid[group]].tolist()} in one "
                f"cycle, two of them in one bank of the RTL's {banks}-bank memory")
    return None


def _unsupported(position: int, ins: isa.Instruction, reason: str) -> UnsupportedProgram:
    return UnsupportedProgram(f"instruction {position} ({isa.format_instruction(ins)}): {reason}")


def program_hex(program: list[isa.Instruction], words: int) -> str:
    """$readmemh image of the program memory: one 256-bit word per line."""
    lines = [int.from_bytes(isa.encode(ins), "little") for ins in program]
    lines += [isa.BY_MNEMONIC["halt"].opcode] * (words - len(lines))  # running past the end halts
    return "".join(f"{value:064x}\n" for value in lines)


def images(compiled: Compiled, inputs: dict[str, np.ndarray], config: RtlConfig) -> dict[str, str]:
    """Every `$readmemh` file a run loads: the program, and the DRAM's banks
    holding the constants and `inputs`."""
    dram = initial_dram(compiled, inputs, config.dram_bytes)
    return {PROGRAM_FILE: program_hex(compiled.program, config.program_words)} | config.layouts["dram"].image(dram)


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
