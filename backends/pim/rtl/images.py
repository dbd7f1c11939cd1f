"""What a run of the bank unit's Verilog starts from, and what it must end with.

A compiled PIM program and one simulator run of it give, for unit `u` of
channel `c`: the channel's scheduled command trace (every unit of the channel
sees the same commands and picks its own), the host's data words in bus
order, the rows of the unit's banks and, from the simulator, the expected
end state: the unit's register file and the words it returned to the host.
The files are `$readmemh` images, one word per line in hex, most significant
digit first (a column's byte 0 is its lowest byte, as in the banks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backends.pim.commands import ALL, BCAST, MAC, RD, RDACC, WR, encode
from backends.pim.program import Program
from backends.pim.rtl.design import END, RtlConfig
from backends.pim.simulator import Stack
from compiler.diagnostics import InternalError, LoomError
from dialects.pim import PimConfig

MIN_ROWS = 16
MIN_TRACE = 4096
MIN_DATA = 1024
MIN_LOG = 1024
UNIT_COMMANDS = (BCAST, MAC, RDACC, RD, WR)  # the ones that name a unit


class UnsupportedProgram(LoomError):
    """The program uses something the bank unit's Verilog does not implement."""


def _pow2(value: int, least: int) -> int:
    return max(least, 1 << max(0, (value - 1).bit_length()))


def check_program(program: Program) -> None:
    """The Verilog unit has i8 lanes: every product on the units must be int8."""
    kernels = [step.kernel for step in program.steps if step.kernel is not None and step.kernel.mode != "host"]
    if not kernels:
        raise UnsupportedProgram("no product of this model runs on the PIM units, so the bank unit has nothing "
                                 "to do (compile a model with a GEMV, quantized to int8)")
    for kernel in kernels:
        if kernel.layout.unit_dtype != "i8":
            raise UnsupportedProgram(f"the bank unit's Verilog has i8 x i8 -> i32 lanes; this model puts "
                                     f"{kernel.layout.unit_dtype} products on the units (quantize it to int8)")


def rtl_config(config: PimConfig, rows: int, trace: int = 0, data: int = 0, log: int = 0) -> RtlConfig:
    """The Verilog's parameters for a stack and a program's sizes, rounded up
    (and to common minima) so that programs for one stack share one design."""
    return RtlConfig(column_bytes=config.column_bytes, row_columns=config.row_columns, grf=config.grf_registers,
                     accs=config.acc_registers, banks_per_unit=config.banks_per_unit, rows=_pow2(rows, MIN_ROWS),
                     trace_depth=_pow2(trace + 1, MIN_TRACE), data_depth=_pow2(data, MIN_DATA),
                     log_depth=_pow2(log, MIN_LOG))


def words_hex(words: np.ndarray) -> str:
    """Rows of bytes (byte 0 least significant) as `$readmemh` lines."""
    rows = np.ascontiguousarray(np.asarray(words, np.uint8)[:, ::-1])
    return "".join(row.tobytes().hex() + "\n" for row in rows)


def trace_hex(records: np.ndarray) -> str:
    """Scheduled commands (`cycle` and the command fields) as {cycle, word}
    lines, then the END word."""
    words = encode(records)
    lines = [f"{int(cycle):08x}{int(word):016x}\n" for cycle, word in zip(records["cycle"], words)]
    return "".join(lines) + f"{0:08x}{END:016x}\n"


@dataclass
class UnitImages:
    """One unit's inputs and the simulator's view of its end state."""

    channel: int
    unit: int
    commands: str
    host_words: str
    banks: str
    returned: np.ndarray  # [words, column_bytes] uint8
    registers: np.ndarray  # [grf, column_bytes] uint8
    accumulators: np.ndarray  # [accs, 4 * column_bytes] uint8


def channel_trace(stack: Stack, channel: int) -> np.ndarray:
    trace = stack.trace_array()
    mine = trace[trace["channel"] == channel]
    return mine[np.argsort(mine["cycle"], kind="stable")]


def busy_units(stack: Stack, channel: int) -> list[int]:
    """Units that some command of the channel addresses."""
    trace = channel_trace(stack, channel)
    if np.any(trace["unit"][np.isin(trace["op"], UNIT_COMMANDS)] == ALL):
        return list(range(stack.config.units))
    return sorted({int(u) for u in trace["unit"][np.isin(trace["op"], UNIT_COMMANDS)]})


def unit_images(stack: Stack, rtl: RtlConfig, channel: int, unit: int) -> UnitImages:
    config = stack.config
    bus = stack.bus[channel]
    sent = np.array(bus.sent, np.uint8).reshape(-1, config.column_bytes)
    returned = np.array([w for u, w in bus.returned if u == unit], np.uint8).reshape(-1, config.column_bytes)
    return UnitImages(channel, unit, trace_hex(channel_trace(stack, channel)), words_hex(sent),
                      banks_hex(stack, rtl, channel, unit), returned,
                      stack.registers[channel, unit].copy(), stack.accumulators[channel, unit].copy())


def banks_hex(stack: Stack, rtl: RtlConfig, channel: int, unit: int) -> str:
    """The rows the program uses of each of the unit's banks, each bank at its
    place in the bank memory (`@address` lines; the rest stays zero)."""
    config = stack.config
    if stack.memory.shape[2] > rtl.rows:
        raise InternalError(f"the program uses {stack.memory.shape[2]} rows per bank, the Verilog has {rtl.rows}")
    per = config.banks_per_unit
    stored = stack.memory[channel, unit * per:(unit + 1) * per]
    return "".join(f"@{bank * rtl.rows * rtl.row_columns:x}\n" + words_hex(rows.reshape(-1, config.column_bytes))
                   for bank, rows in enumerate(stored))


def program_rtl_config(program: Program, stack: Stack) -> RtlConfig:
    """The parameters that fit every channel of a run."""
    channels = range(program.config.channels)
    trace = max(len(channel_trace(stack, c)) for c in channels)
    data = max(len(stack.bus[c].sent) for c in channels)
    log = max(len(stack.bus[c].returned) for c in channels)
    return rtl_config(program.config, program.rows, trace, data, log)
