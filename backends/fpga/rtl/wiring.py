"""Netlist pieces the FPGA generator needs beyond `ModuleBuilder`.

- `delay`: pipeline registers without reset. Datapath values only matter
  where a valid bit says so, so they need no reset, and a read register
  without one is what lets synthesis fold it into a block RAM's output.
- `Backedge`: a value used before it is built (a store's data, forwarded to
  a same-cycle load of the accumulator it writes). `hw.module` bodies are
  graph regions, so the use may precede the definition.
- `narrow_delays`: delay registers shrunk to the bits their readers use
  (CIRCT narrows combinational logic, not registers, and `verilator -Wall`
  reports unused register bits).
- `name_dropped_low_bits`: a sum shifted right by a constant (requantization's
  rounding) keeps only its high bits; CIRCT must spill it to a wire to
  slice it, and the wire's name says its low bits go unused, which is
  Verilator's convention (`--unused-regexp`, default `*unused*`).
- `BankPorts`: write requests to one memory from several nests, merged into
  one write port (the nests never write in the same cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.dialects import comb, hw
from xdsl.dialects.builtin import IntegerAttr, IntegerType, StringAttr
from xdsl.dialects.seq import CompRegOp
from xdsl.ir import Block
from xdsl.rewriter import InsertPoint, Rewriter

from backends.rtl.netlist import Memory, ModuleBuilder, Signal


def delay(m: ModuleBuilder, signal: Signal, cycles: int, name: str = "") -> Signal:
    """`signal` `cycles` clock cycles later."""
    for step in range(cycles):
        register = CompRegOp(signal.value, m.clk.value)
        if name:
            register.data.name_hint = f"{name}_d{step + 1}"
        m.block.add_op(register)
        signal = Signal(m, register.data)
    return signal


def narrow_delays(block: Block) -> None:
    """Shrink every reset-less register read only through bit slices to the bits read,
    until none shrinks (a chain narrows from its last register back)."""
    changed = True
    while changed:
        changed = False
        for register in [op for op in block.ops if isinstance(op, CompRegOp) and op.reset is None]:
            readers = [use.operation for use in register.data.uses]
            if not readers or not all(isinstance(r, comb.ExtractOp) for r in readers):
                continue
            low = min(r.low_bit.value.data for r in readers)  # type: ignore[union-attr]
            high = max(r.low_bit.value.data + r.result.type.width.data for r in readers)  # type: ignore[union-attr]
            if (low, high) == (0, register.data.type.width.data):  # type: ignore[union-attr]
                continue
            kept = comb.ExtractOp(register.input, IntegerAttr(low, 32), IntegerType(high - low))
            narrow = CompRegOp(kept.result, register.clk)
            narrow.data.name_hint = register.data.name_hint
            Rewriter.insert_op([kept, narrow], InsertPoint.before(register))
            for reader in readers:
                width = reader.result.type.width.data  # type: ignore[union-attr]
                offset = reader.low_bit.value.data - low  # type: ignore[union-attr]
                if (offset, width) == (0, high - low):
                    reader.result.replace_all_uses_with(narrow.data)
                    Rewriter.erase_op(reader)
                else:
                    reader.operands[0] = narrow.data
                    reader.low_bit = IntegerAttr(offset, 32)
            Rewriter.erase_op(register)
            changed = True


def name_dropped_low_bits(block: Block) -> None:
    for op in block.ops:
        if not isinstance(op, comb.AddOp | comb.SubOp | comb.MulOp):
            continue
        readers = [use.operation for use in op.result.uses]
        if readers and all(isinstance(r, comb.ExtractOp) and r.low_bit.value.data > 0 for r in readers):
            op.attributes["sv.namehint"] = StringAttr("sum_low_bits_unused")


class Backedge:
    """A placeholder signal, replaced by a real one with `resolve`."""

    def __init__(self, m: ModuleBuilder, width: int):
        self.op = hw.ConstantOp(0, width)
        m.block.add_op(self.op)
        self.signal = Signal(m, self.op.result)

    def resolve(self, value: Signal) -> None:
        self.op.result.replace_all_uses_with(value.value)
        Rewriter.erase_op(self.op)


@dataclass
class BankPorts:
    """One bank's memory and the writes requested of it."""

    memory: Memory
    writes: list[tuple[Signal, Signal, Signal]] = field(default_factory=list)  # (enable, row, data)

    def close(self, m: ModuleBuilder) -> None:
        if not self.writes:
            return
        enable, row, data = self.writes[-1]
        for other_enable, other_row, other_data in reversed(self.writes[:-1]):
            row = m.mux(other_enable, other_row, row)
            data = m.mux(other_enable, other_data, data)
            enable = enable | other_enable
        self.memory.write(row, data, enable)
