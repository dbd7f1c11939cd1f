"""Attributes that hold one dataclass of integers, printed field by field.

Accelerator dialects describe hardware-shaped records (a systolic view, a
PIM weight layout) whose meaning is in the field names. Printing them by
name, `#systolic.matrix<rows = 4, cols = 8, ...>`, keeps the IR readable and
makes the parser reject a record written for another version of the fields.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import fields
from typing import Any, ClassVar

from xdsl.ir import Data
from xdsl.parser import AttrParser
from xdsl.printer import Printer


class RecordAttr(Data[tuple[int, ...]], ABC):
    """The integers of one `RECORD` (a dataclass of ints), in field order."""

    RECORD: ClassVar[type]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls.RECORD)]

    @classmethod
    def parse_parameter(cls, parser: AttrParser) -> tuple[int, ...]:
        values: dict[str, int] = {}

        def entry() -> None:
            key = parser.parse_identifier()
            parser.parse_punctuation("=")
            values[key] = parser.parse_integer()

        parser.parse_comma_separated_list(parser.Delimiter.ANGLE, entry)
        if list(values) != cls.field_names():
            parser.raise_error(f"#{cls.name} takes {', '.join(cls.field_names())}, in this order")
        return tuple(values.values())

    def print_parameter(self, printer: Printer) -> None:
        pairs = zip(self.field_names(), self.data)
        printer.print_string("<" + ", ".join(f"{k} = {v}" for k, v in pairs) + ">")

    def record(self) -> Any:
        return self.RECORD(*self.data)
