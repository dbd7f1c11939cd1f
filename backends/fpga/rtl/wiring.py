"""Netlist pieces the FPGA generator needs beyond `ModuleBuilder`.

- `name_dropped_low_bits`: a sum shifted right by a constant (requantization's
  rounding) keeps only its high bits; CIRCT must spill it to a wire to
  slice it, and the wire's name says its low bits go unused, which is
  Verilator's convention (`--unused-regexp`, default `*unused*`).
- `BankPorts`: write requests to one memory from several nests, merged into
  one write port (the nests never write in the same cycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.dialects import comb
from xdsl.dialects.builtin import StringAttr
from xdsl.ir import Block

from backends.rtl.netlist import Memory, ModuleBuilder, Signal


def name_dropped_low_bits(block: Block) -> None:
    for op in block.ops:
        if not isinstance(op, comb.AddOp | comb.SubOp | comb.MulOp):
            continue
        readers = [use.operation for use in op.result.uses]
        if readers and all(isinstance(r, comb.ExtractOp) and r.low_bit.value.data > 0 for r in readers):
            op.attributes["sv.namehint"] = StringAttr("sum_low_bits_unused")


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
