"""The `mem` dialect: buffers placed in named levels of a memory hierarchy.

A buffer's level is its memref memory space, `#mem.space<"L2">`, so every
memref-consuming op keeps working and the level travels with the type:

    builtin.module attributes {mem.target = {L1 = 32768 : i64, DRAM = 8589934592 : i64}} {
      %a = mem.alloc {alignment = 64 : i64} : memref<64x64xf32, #mem.space<"L1">>
      %t = mem.dma_start %src, %a : memref<64x64xf32, #mem.space<"DRAM">> to memref<64x64xf32, #mem.space<"L1">>
      mem.dma_wait %t
      mem.dealloc %a : memref<64x64xf32, #mem.space<"L1">>
    }

Which levels exist, and how large they are, is stated by the enclosing
module's `mem.target` attribute: a dictionary from level name to capacity
in bytes (`target_attr` builds it from a hardware description). Keeping
the numbers in the IR rather than naming a description file means a module
verifies the same way anywhere, without reading files or global state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from xdsl.dialects.builtin import (
    DictionaryAttr,
    IntegerAttr,
    MemRefType,
    ModuleOp,
    StringAttr,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, ParametrizedAttribute, SSAValue, TypeAttribute
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_prop_def,
    result_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

TARGET_ATTR = "mem.target"


@irdl_attr_definition
class MemSpaceAttr(ParametrizedAttribute):
    """A memory level by name, used as a memref memory space: `#mem.space<"L2">`."""

    name = "mem.space"

    level: StringAttr

    def __init__(self, level: str | StringAttr):
        super().__init__(StringAttr(level) if isinstance(level, str) else level)

    def print_parameters(self, printer: Printer) -> None:
        with printer.in_angle_brackets():
            printer.print_string_literal(self.level.data)

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        with parser.in_angle_brackets():
            return [StringAttr(parser.parse_str_literal())]


@irdl_attr_definition
class TokenType(ParametrizedAttribute, TypeAttribute):
    """Completion of an asynchronous transfer, consumed by `mem.dma_wait`."""

    name = "mem.token"


def memref_in(level: str, shape: list[int], element_type: Attribute) -> MemRefType:
    return MemRefType(element_type, shape, memory_space=MemSpaceAttr(level))


def target_attr(capacities: Mapping[str, int]) -> DictionaryAttr:
    """The `mem.target` module attribute for level name -> capacity in bytes."""
    return DictionaryAttr({name: IntegerAttr(size, i64) for name, size in capacities.items()})


def buffer_bytes(memref: MemRefType) -> int:
    """Bytes a statically shaped buffer occupies (sub-byte types round up)."""
    bits = memref.get_element_type().bitwidth  # type: ignore[attr-defined]
    return math.prod(memref.get_shape()) * ((bits + 7) // 8)


def level_capacities(op: Operation) -> dict[str, int] | None:
    """The `mem.target` of the nearest enclosing module declaring one."""
    parent = op.parent_op()
    while parent is not None:
        if isinstance(parent, ModuleOp) and TARGET_ATTR in parent.attributes:
            attr = parent.attributes[TARGET_ATTR]
            if not isinstance(attr, DictionaryAttr) or not all(
                isinstance(v, IntegerAttr) for v in attr.data.values()
            ):
                raise VerifyException(f"{TARGET_ATTR} must map level names to integer capacities in bytes")
            return {name: v.value.data for name, v in attr.data.items()}  # type: ignore[union-attr]
        parent = parent.parent_op()
    return None


def checked_level(op: Operation, value_type: Attribute, what: str) -> tuple[str, int]:
    """The level of a memref-typed value and its capacity, or a VerifyException."""
    assert isinstance(value_type, MemRefType)
    space = value_type.memory_space
    if not isinstance(space, MemSpaceAttr):
        raise VerifyException(f"{op.name}: the {what} must be in a #mem.space memory space, got {space}")
    capacities = level_capacities(op)
    if capacities is None:
        raise VerifyException(f"{op.name}: no enclosing module has a '{TARGET_ATTR}' attribute naming the levels")
    level = space.level.data
    if level not in capacities:
        raise VerifyException(
            f"{op.name}: unknown memory level '{level}' (levels: {', '.join(capacities)})"
        )
    return level, capacities[level]


@irdl_op_definition
class AllocOp(IRDLOperation):
    """A statically shaped buffer in one level; it must fit in that level."""

    name = "mem.alloc"

    memref = result_def(MemRefType)
    alignment = opt_prop_def(IntegerAttr)

    assembly_format = "attr-dict `:` type($memref)"
    irdl_options = (ParsePropInAttrDict(),)

    def __init__(self, memref_type: MemRefType, alignment: int | None = None):
        properties = {"alignment": IntegerAttr(alignment, i64)} if alignment is not None else {}
        super().__init__(result_types=[memref_type], properties=properties)

    def verify_(self) -> None:
        memref_type = self.memref.type
        assert isinstance(memref_type, MemRefType)
        if any(d < 0 for d in memref_type.get_shape()):
            raise VerifyException(f"{self.name}: buffers have static shapes, got {memref_type}")
        if self.alignment is not None:
            align = self.alignment.value.data
            if align <= 0 or align & (align - 1):
                raise VerifyException(f"{self.name}: alignment must be a positive power of two, got {align}")
        level, capacity = checked_level(self, memref_type, "result")
        size = buffer_bytes(memref_type)
        if size > capacity:
            raise VerifyException(
                f"{self.name}: a {size}-byte buffer does not fit in level '{level}' ({capacity} bytes)"
            )


@irdl_op_definition
class DeallocOp(IRDLOperation):
    """Releases a buffer made by `mem.alloc`."""

    name = "mem.dealloc"

    memref = operand_def(MemRefType)

    assembly_format = "$memref attr-dict `:` type($memref)"

    def __init__(self, memref: SSAValue | Operation):
        super().__init__(operands=[memref])

    def verify_(self) -> None:
        checked_level(self, self.memref.type, "operand")


@irdl_op_definition
class DmaStartOp(IRDLOperation):
    """Starts copying a buffer (or a subview) to a buffer of the same shape in
    another level; the copy is complete once its token has been waited on."""

    name = "mem.dma_start"

    source = operand_def(MemRefType)
    destination = operand_def(MemRefType)
    token = result_def(TokenType)

    assembly_format = "$source `,` $destination attr-dict `:` type($source) `to` type($destination)"

    def __init__(self, source: SSAValue | Operation, destination: SSAValue | Operation):
        super().__init__(operands=[source, destination], result_types=[TokenType()])

    def verify_(self) -> None:
        src, dst = self.source.type, self.destination.type
        assert isinstance(src, MemRefType) and isinstance(dst, MemRefType)
        if src.get_shape() != dst.get_shape():
            raise VerifyException(
                f"{self.name}: source shape {list(src.get_shape())} differs from destination shape"
                f" {list(dst.get_shape())}"
            )
        if src.get_element_type() != dst.get_element_type():
            raise VerifyException(
                f"{self.name}: source element type {src.get_element_type()} differs from destination"
                f" element type {dst.get_element_type()}"
            )
        src_level, _ = checked_level(self, src, "source")
        dst_level, _ = checked_level(self, dst, "destination")
        if src_level == dst_level:
            raise VerifyException(f"{self.name}: source and destination are both in level '{src_level}'")


@irdl_op_definition
class DmaWaitOp(IRDLOperation):
    """Blocks until the transfer that produced `token` has finished."""

    name = "mem.dma_wait"

    token = operand_def(TokenType)

    assembly_format = "$token attr-dict"

    def __init__(self, token: SSAValue | Operation):
        super().__init__(operands=[token])


MEM = Dialect("mem", [AllocOp, DeallocOp, DmaStartOp, DmaWaitOp], [MemSpaceAttr, TokenType])
