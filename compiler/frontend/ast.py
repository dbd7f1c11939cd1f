"""Syntax tree of a .loom file.

The parser produces these nodes and nothing else reads lark trees, so the
grammar can change without touching the builder. Every node carries the
`Span` of source text it came from; diagnostics point at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias


@dataclass(frozen=True)
class Span:
    """A region of source text; lines and columns are 1-based, the end exclusive."""

    line: int
    column: int
    end_line: int
    end_column: int


# ---- expressions -------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    value: int | float
    span: Span


@dataclass(frozen=True)
class String:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span


@dataclass(frozen=True)
class ListExpr:
    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Binary:
    """`left op right` with op one of + - * / @."""

    op: str
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Keyword:
    """`name=value` inside a call."""

    name: Name
    value: Expr
    span: Span


@dataclass(frozen=True)
class Call:
    func: Name
    args: tuple[Expr, ...]
    keywords: tuple[Keyword, ...]
    span: Span


Expr: TypeAlias = Number | String | Bool | Name | ListExpr | Neg | Binary | Call


# ---- declarations and statements ---------------------------------------------------


@dataclass(frozen=True)
class TensorType:
    """`dtype[d0, d1, ...]` as written; the builder checks dtype and dims."""

    dtype: Name
    dims: tuple[Number, ...]
    span: Span


@dataclass(frozen=True)
class Input:
    name: Name
    type: TensorType


@dataclass(frozen=True)
class Param:
    """`param name: type [= init]`; a bare initializer `zeros` is a Call without arguments."""

    name: Name
    type: TensorType
    init: Call | None


@dataclass(frozen=True)
class Output:
    names: tuple[Name, ...]


@dataclass(frozen=True)
class Assign:
    target: Name
    value: Expr


Statement: TypeAlias = Input | Param | Output | Assign


@dataclass(frozen=True)
class Model:
    name: Name
    body: tuple[Statement, ...]
    span: Span


@dataclass(frozen=True)
class Function:
    """A `def`: inlined at every call site, so it has no IR of its own."""

    name: Name
    params: tuple[Name, ...]
    body: tuple[Assign, ...]
    result: Expr
    span: Span


@dataclass(frozen=True)
class Program:
    models: tuple[Model, ...]
    functions: tuple[Function, ...]


def subexpressions(expr: Expr) -> Iterator[Expr]:
    """`expr` and every expression inside it, in source order."""
    yield expr
    match expr:
        case Binary(left=left, right=right):
            yield from subexpressions(left)
            yield from subexpressions(right)
        case Neg(operand=operand):
            yield from subexpressions(operand)
        case ListExpr(items=items):
            for item in items:
                yield from subexpressions(item)
        case Call(args=args, keywords=keywords):
            for arg in (*args, *(k.value for k in keywords)):
                yield from subexpressions(arg)
