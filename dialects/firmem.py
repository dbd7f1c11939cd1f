"""CIRCT's `seq.firmem` memories, which xDSL 0.74's seq dialect does not have.

A memory is declared once and accessed through ports, each its own op:

    %spad = seq.firmem 0, 1, undefined, port_order {init = #seq.firmem.init<"spad.hex", false, true>} : <1024 x 32, mask 4>
    %word = seq.firmem.read_port %spad[%addr], clock %clk : <1024 x 32, mask 4>
    seq.firmem.write_port %spad[%waddr] = %data, clock %clk enable %we mask %bytes : <1024 x 32, mask 4>, i4

The ops print in CIRCT's own syntax, which is all Loom needs of them: the
RTL builder prints a module and CIRCT parses it, lowers every memory to a
Verilog array with one read or write port per port op (`lower-seq-firmem`,
`hw-memory-sim`) and, given `init`, loads it with `$readmemh`. Read ports
have latency 0 (combinational), write ports latency 1. Parsing them back
into xDSL is not supported.
"""

from __future__ import annotations

from xdsl.dialects.builtin import BoolAttr, IntAttr, IntegerType, StringAttr
from xdsl.dialects.seq import Seq, clock
from xdsl.ir import Dialect, ParametrizedAttribute, SSAValue, TypeAttribute
from xdsl.irdl import (
    IRDLOperation,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    opt_prop_def,
    result_def,
)
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException


@irdl_attr_definition
class FirMemType(ParametrizedAttribute, TypeAttribute):
    """`!seq.firmem<depth x width[, mask n]>`: `depth` words of `width` bits,
    written in `mask` equal lanes when a mask is given (0: no mask)."""

    name = "seq.firmem"

    depth: IntAttr
    width: IntAttr
    mask: IntAttr

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self.depth.data} x {self.width.data}")
        if self.mask.data:
            printer.print_string(f", mask {self.mask.data}")
        printer.print_string(">")

    @property
    def address_bits(self) -> int:
        return max(1, (self.depth.data - 1).bit_length())

    def verify(self) -> None:
        if self.depth.data < 1 or self.width.data < 1:
            raise VerifyException("a memory needs at least one word of at least one bit")
        if self.mask.data and self.width.data % self.mask.data:
            raise VerifyException("the mask must split a word into equal lanes")

    def short(self) -> str:
        return f"<{self.depth.data} x {self.width.data}" + (f", mask {self.mask.data}>" if self.mask.data else ">")


@irdl_attr_definition
class FirMemInitAttr(ParametrizedAttribute):
    """`#seq.firmem.init<"file", is_binary, is_inline>`: load the memory from a file at time zero."""

    name = "seq.firmem.init"

    filename: StringAttr
    is_binary: BoolAttr
    is_inline: BoolAttr

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string("<")
        printer.print_string_literal(self.filename.data)
        printer.print_string(f", {str(bool(self.is_binary.value.data)).lower()}, "
                             f"{str(bool(self.is_inline.value.data)).lower()}>")


@irdl_op_definition
class FirMemOp(IRDLOperation):
    name = "seq.firmem"

    init = opt_prop_def(FirMemInitAttr)
    memory = result_def(FirMemType)

    def __init__(self, memory_type: FirMemType, init_file: str | None = None):
        init = None if init_file is None else FirMemInitAttr(StringAttr(init_file), BoolAttr.from_bool(False),
                                                             BoolAttr.from_bool(True))
        super().__init__(result_types=[memory_type], properties={"init": init} if init else {})

    def print(self, printer: Printer) -> None:
        printer.print_string(" 0, 1, undefined, port_order")
        if self.init is not None:
            printer.print_string(" {init = ")
            printer.print_attribute(self.init)
            printer.print_string("}")
        assert isinstance(self.memory.type, FirMemType)
        printer.print_string(" : " + self.memory.type.short())


@irdl_op_definition
class FirMemReadPortOp(IRDLOperation):
    name = "seq.firmem.read_port"

    memory = operand_def(FirMemType)
    address = operand_def(IntegerType)
    clk = operand_def(clock)
    data = result_def(IntegerType)

    def __init__(self, memory: SSAValue, address: SSAValue, clk: SSAValue):
        assert isinstance(memory.type, FirMemType)
        super().__init__(operands=[memory, address, clk], result_types=[IntegerType(memory.type.width.data)])

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.memory)
        printer.print_string("[")
        printer.print_operand(self.address)
        printer.print_string("], clock ")
        printer.print_operand(self.clk)
        assert isinstance(self.memory.type, FirMemType)
        printer.print_string(" : " + self.memory.type.short())


@irdl_op_definition
class FirMemWritePortOp(IRDLOperation):
    name = "seq.firmem.write_port"

    memory = operand_def(FirMemType)
    address = operand_def(IntegerType)
    data = operand_def(IntegerType)
    clk = operand_def(clock)
    enable = operand_def(IntegerType(1))
    mask = opt_operand_def(IntegerType)

    def __init__(self, memory: SSAValue, address: SSAValue, data: SSAValue, clk: SSAValue, enable: SSAValue,
                 mask: SSAValue | None = None):
        super().__init__(operands=[memory, address, data, clk, enable, mask])

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.memory)
        printer.print_string("[")
        printer.print_operand(self.address)
        printer.print_string("] = ")
        printer.print_operand(self.data)
        printer.print_string(", clock ")
        printer.print_operand(self.clk)
        printer.print_string(" enable ")
        printer.print_operand(self.enable)
        if self.mask is not None:
            printer.print_string(" mask ")
            printer.print_operand(self.mask)
        assert isinstance(self.memory.type, FirMemType)
        printer.print_string(" : " + self.memory.type.short())
        if self.mask is not None:
            printer.print_string(", ")
            printer.print_attribute(self.mask.type)

    def verify_(self) -> None:
        assert isinstance(self.memory.type, FirMemType)
        if self.data.type != IntegerType(self.memory.type.width.data):
            raise VerifyException("write data must be as wide as a memory word")
        if (self.mask is None) != (not self.memory.type.mask.data):
            raise VerifyException("a write port has a mask exactly when its memory does")


SEQ = Dialect("seq", [*Seq.operations, FirMemOp, FirMemReadPortOp, FirMemWritePortOp],
              [*Seq.attributes, FirMemType, FirMemInitAttr])
