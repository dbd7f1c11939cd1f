"""Argument lists of builtin functions and initializers, and binding a call's
arguments to them the way Python does, with Python's error messages.

A value produced by evaluating an expression is a tensor (an SSAValue), a
Python int, float or bool, a str, or a list of values.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xdsl.ir import SSAValue

from compiler.diagnostics import LoomError
from compiler.frontend import ast
from dialects.nn import format_type

Evaluate = Callable[[ast.Expr], Any]
Error = Callable[[str, ast.Span], LoomError]


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def describe(value: Any) -> str:
    """How a value is named in error messages."""
    if isinstance(value, SSAValue):
        return f"a tensor {format_type(value.type)}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if is_number(value):
        return f"the number {value}"
    if isinstance(value, str):
        return f'the string "{value}"'
    return "a list"


def suggestion(name: str, candidates: Sequence[str]) -> str:
    """'; did you mean X?' when a candidate is close to `name`, else ''."""
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


@dataclass(frozen=True)
class Kind:
    """What an argument accepts: `accepts` checks, `convert` normalises."""

    description: str
    accepts: Callable[[Any], bool]
    convert: Callable[[Any], Any] = lambda value: value


def _is_int_list(value: Any) -> bool:
    return isinstance(value, list) and all(is_int(v) for v in value)


TENSOR = Kind("a tensor", lambda v: isinstance(v, SSAValue))
INT = Kind("an integer", is_int)
NUMBER = Kind("a number", is_number, float)
BOOL = Kind("true or false", lambda v: isinstance(v, bool))
STRING = Kind("a string", lambda v: isinstance(v, str))
INTS = Kind("a list of integers", _is_int_list)
INT_OR_INTS = Kind("an integer or a list of integers", lambda v: is_int(v) or _is_int_list(v))
INT_OR_PAIR = Kind(
    "an integer or a list of two integers",
    lambda v: is_int(v) or (_is_int_list(v) and len(v) == 2),
)

REQUIRED = object()


@dataclass(frozen=True)
class Arg:
    name: str
    kind: Kind
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Signature:
    """`name(args...)`; with `variadic`, every positional argument goes to it
    and `args` may only be given by keyword."""

    name: str
    args: tuple[Arg, ...] = ()
    variadic: Arg | None = None

    def bind(self, call: ast.Call, evaluate: Evaluate, error: Error) -> dict[str, Any]:
        """Evaluate the call's arguments and map parameter names to values,
        defaults filled in; raises LoomError at the offending argument."""
        by_position = self._check_positional(call, error)
        by_keyword = self._check_keywords(call, by_position, error)
        bound: dict[str, Any] = {}
        if self.variadic is not None:
            values = [evaluate(expr) for expr in call.args]
            for index, (expr, value) in enumerate(zip(call.args, values), start=1):
                self._check_kind(self.variadic.kind, f"argument {index}", value, expr, error)
            bound[self.variadic.name] = values
        for arg, expr in [*by_position, *by_keyword]:
            value = evaluate(expr)
            bound[arg.name] = self._check_kind(arg.kind, f"argument '{arg.name}'", value, expr, error)
        for arg in self.args:
            if arg.name not in bound:
                if arg.required:
                    raise error(f"{self.name}() missing required argument '{arg.name}'", call.span)
                bound[arg.name] = arg.default
        return bound

    def _check_positional(self, call: ast.Call, error: Error) -> list[tuple[Arg, ast.Expr]]:
        if self.variadic is not None:
            if not call.args:
                raise error(f"{self.name}() needs at least one argument", call.span)
            return []
        if len(call.args) > len(self.args):
            extra = call.args[len(self.args)]
            raise error(
                f"{self.name}() takes {self._positional_count()} but {len(call.args)} "
                f"{'was' if len(call.args) == 1 else 'were'} given",
                extra.span,
            )
        return list(zip(self.args, call.args))

    def _positional_count(self) -> str:
        most = len(self.args)
        least = sum(arg.required for arg in self.args)
        noun = "positional argument" if most == 1 else "positional arguments"
        if least == most:
            return f"{most} {noun}"
        return f"from {least} to {most} {noun}"

    def _check_keywords(
        self, call: ast.Call, by_position: list[tuple[Arg, ast.Expr]], error: Error
    ) -> list[tuple[Arg, ast.Expr]]:
        by_name = {arg.name: arg for arg in self.args}
        given = {arg.name for arg, _ in by_position}
        bound = []
        for keyword in call.keywords:
            name = keyword.name.id
            if name not in by_name:
                raise error(
                    f"{self.name}() got an unexpected keyword argument '{name}'"
                    + suggestion(name, list(by_name)),
                    keyword.name.span,
                )
            if name in given:
                raise error(f"{self.name}() got multiple values for argument '{name}'", keyword.name.span)
            given.add(name)
            bound.append((by_name[name], keyword.value))
        return bound

    def _check_kind(self, kind: Kind, what: str, value: Any, expr: ast.Expr, error: Error) -> Any:
        if not kind.accepts(value):
            raise error(
                f"{self.name}() {what} must be {kind.description}, got {describe(value)}", expr.span
            )
        return kind.convert(value)
