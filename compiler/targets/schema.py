"""Reading and checking hardware-description TOML files.

`tomllib` returns plain values without positions, so every complaint is
phrased against the key path (`memory[1].capacity_bytes`) and placed in the
file by `KeyLocator`, a small scan for table headers and `key =` lines. When
the scan cannot find a key (an inline table, an unusual quoting) the error
falls back to the enclosing table header, then to line 1, rather than
pointing somewhere wrong.

See docs/targets/descriptions.md for the schema.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compiler.diagnostics import LoomError, SourceLocation
from compiler.frontend.signatures import suggestion
from compiler.targets.description import (
    COMPUTE_KINDS,
    ComputeUnit,
    MemoryLevel,
    TargetDescription,
    format_bytes,
)
from dialects.nn import DTYPES

KeyPath = tuple[str | int, ...]


def render_path(path: KeyPath) -> str:
    """("memory", 1, "capacity_bytes") -> "memory[1].capacity_bytes"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# --------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[|\[)\s*([^\[\]]+?)\s*\]")


@dataclass(frozen=True)
class _Section:
    path: KeyPath  # ("memory", 1) for the second [[memory]], ("energy_pj",) for [energy_pj]
    line: int  # 0-based line of the header; -1 for the top-level section
    column: int
    end: int  # 0-based line where the next section starts


class KeyLocator:
    """Maps key paths to line/column positions in TOML text."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        heads: list[tuple[KeyPath, int, int]] = []
        occurrences: dict[tuple[str, ...], int] = {}
        for number, line in enumerate(self.lines):
            match = _HEADER.match(line)
            if match is None:
                continue
            name = tuple(part.strip().strip('"') for part in match.group(2).split("."))
            path: KeyPath = name
            if match.group(1) == "[[":
                index = occurrences.get(name, 0)
                occurrences[name] = index + 1
                path = name + (index,)
            heads.append((path, number, match.start(1)))
        starts = [number for _, number, _ in heads] + [len(self.lines)]
        self.sections = [_Section((), -1, 0, starts[0])] + [
            _Section(path, number, column, starts[i + 1]) for i, (path, number, column) in enumerate(heads)
        ]

    def locate(self, path: KeyPath) -> tuple[int, int, int]:
        """1-based (line, column, length) of the key `path`, or of its nearest enclosing table."""
        section = max(
            (s for s in self.sections if path[: len(s.path)] == s.path),
            key=lambda s: len(s.path),
        )
        rest = path[len(section.path):]
        if rest and isinstance(rest[0], str):
            key = re.compile(rf'^\s*("?){re.escape(rest[0])}\1\s*[=.]')
            for number in range(section.line + 1, section.end):
                match = key.match(self.lines[number])
                if match:
                    column = len(self.lines[number]) - len(self.lines[number].lstrip())
                    return number + 1, column + 1, len(rest[0])
        if section.line < 0:
            return 1, 1, 1
        header = self.lines[section.line]
        return section.line + 1, section.column + 1, len(header.strip())


# --------------------------------------------------------------------------
# Value checks
# --------------------------------------------------------------------------


class _Invalid(Exception):
    """A value is not what its key needs; `expected` completes "must be ..."."""

    def __init__(self, expected: str, at: KeyPath = (), hint: str = ""):
        self.expected = expected
        self.at = at  # a sub-path inside the value (a list index), if any
        self.hint = hint  # "; did you mean ...?"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"[{', '.join(_show(v) for v in value)}]"
    return str(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("a non-empty string")
    return value


def _positive_int(value: Any) -> int:
    if not _is_int(value) or value <= 0:
        raise _Invalid("a positive integer")
    return value


def _non_negative_int(value: Any) -> int:
    if not _is_int(value) or value < 0:
        raise _Invalid("a non-negative integer")
    return value


def _positive_number(value: Any) -> float:
    if not _is_number(value) or value <= 0:
        raise _Invalid("a positive number")
    return float(value)


def _non_negative_number(value: Any) -> float:
    if not _is_number(value) or value < 0:
        raise _Invalid("a non-negative number")
    return float(value)


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]iB|[kKMGT]B|B)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1,
    "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
    "kB": 10**3, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
}  # fmt: skip


def parse_size(value: Any) -> int:
    """A byte count: a positive integer, or a string such as "32KiB", "1.5MiB", "64kB"."""
    if _is_int(value) and value > 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            scaled = float(match.group(1)) * _SIZE_UNITS[match.group(2)]
            if scaled > 0 and scaled == int(scaled):
                return int(scaled)
    raise _Invalid("a positive size")


def _array_shape(value: Any) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) and v > 0 for v in value):
        raise _Invalid("[rows, cols] of positive integers")
    return value[0], value[1]


def _dtypes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid("a non-empty list of dtypes")
    for index, dtype in enumerate(value):
        if dtype not in DTYPES:
            hint = suggestion(dtype, list(DTYPES)) if isinstance(dtype, str) else ""
            raise _Invalid(f"one of {', '.join(DTYPES)}", at=(index,), hint=hint)
    return tuple(value)


def _table_of_numbers(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise _Invalid("a table")
    out: dict[str, float] = {}
    for key, number in value.items():
        if not _is_number(number) or number < 0:
            raise _Invalid("a non-negative number", at=(key,))
        out[key] = float(number)
    return out


def _table(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid("a table")
    return value


def _one_of(choices: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            hint = suggestion(value, choices) if isinstance(value, str) else ""
            raise _Invalid(f"one of {', '.join(choices)}", hint=hint)
        return value

    return check


@dataclass(frozen=True)
class _Key:
    check: Callable[[Any], Any]
    required: bool = False
    default: Any = None


_TOP_KEYS = {
    "name": _Key(_string, required=True),
    "description": _Key(_string, default=""),
    "clock_hz": _Key(_positive_number),
    "clock_mhz": _Key(_positive_number),
    "compute": _Key(lambda v: v),  # checked table by table below
    "memory": _Key(lambda v: v),
    "energy_pj": _Key(_table_of_numbers, default={}),
    "params": _Key(_table, default={}),
}

_COMPUTE_KEYS = {
    "kind": _Key(_one_of(COMPUTE_KINDS), required=True),
    "count": _Key(_positive_int, default=1),
    "lanes": _Key(_positive_int, default=1),
    "array": _Key(_array_shape),
    "ops_per_cycle": _Key(_positive_number),
    "dtypes": _Key(_dtypes, required=True),
}

_MEMORY_KEYS = {
    "name": _Key(_string, required=True),
    "capacity_bytes": _Key(parse_size, required=True),
    "bandwidth_bytes_per_cycle": _Key(_positive_number, required=True),
    "latency_cycles": _Key(_non_negative_int, required=True),
    "banks": _Key(_positive_int, default=1),
}


# --------------------------------------------------------------------------
# The reader
# --------------------------------------------------------------------------


class _Reader:
    """Checks a parsed TOML document and builds the description from it."""

    def __init__(self, path: str, text: str | None):
        self.path = path
        self.text = text
        self.locator = KeyLocator(text) if text is not None else None

    def error(self, at: KeyPath, message: str) -> LoomError:
        line, column, length = self.locator.locate(at) if self.locator else (1, 1, 1)
        return LoomError(message, SourceLocation(self.path, line, column, self.text, length))

    def table(self, at: KeyPath, data: Mapping[str, Any], keys: Mapping[str, _Key]) -> dict[str, Any]:
        """Checked values of `data` by key, with defaults filled in."""
        where = f"{render_path(at)}." if at else ""
        for key in data:
            if key not in keys:
                raise self.error(at + (key,), f"unknown key '{where}{key}'{suggestion(key, list(keys))}")
        out: dict[str, Any] = {}
        for key, spec in keys.items():
            if key not in data:
                if spec.required:
                    owner = f"{render_path(at)} is" if at else "a target description is"
                    raise self.error(at, f"{owner} missing required key '{key}'")
                out[key] = spec.default
                continue
            try:
                out[key] = spec.check(data[key])
            except _Invalid as bad:
                inner = data[key]
                for part in bad.at:
                    inner = inner[part]
                where_bad = render_path(at + (key,) + bad.at)
                raise self.error(
                    at + (key,) + bad.at, f"{where_bad} must be {bad.expected}, got {_show(inner)}{bad.hint}"
                ) from None
        return out

    def tables(self, data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
        value = data.get(key)
        if value is None or value == []:
            raise self.error((), f"a target description needs at least one [[{key}]] table")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error((key,), f"{key} must be an array of tables ([[{key}]]), got {_show(value)}")
        return value

    def clock_hz(self, top: Mapping[str, Any]) -> float:
        if top["clock_hz"] is not None and top["clock_mhz"] is not None:
            raise self.error(("clock_mhz",), "give either clock_hz or clock_mhz, not both")
        if top["clock_hz"] is not None:
            return top["clock_hz"]
        if top["clock_mhz"] is not None:
            return top["clock_mhz"] * 1e6
        raise self.error((), "a target description is missing required key 'clock_hz' (or 'clock_mhz')")

    def compute_unit(self, index: int, data: Mapping[str, Any]) -> ComputeUnit:
        v = self.table(("compute", index), data, _COMPUTE_KEYS)
        array = v["array"]
        ops = v["ops_per_cycle"] or float(v["lanes"] * (array[0] * array[1] if array else 1))
        return ComputeUnit(v["kind"], v["count"], v["lanes"], array, ops, v["dtypes"])

    def memory(self, tables: list[dict[str, Any]]) -> list[MemoryLevel]:
        levels: list[MemoryLevel] = []
        for index, data in enumerate(tables):
            v = self.table(("memory", index), data, _MEMORY_KEYS)
            level = MemoryLevel(
                v["name"], v["capacity_bytes"], v["bandwidth_bytes_per_cycle"], v["latency_cycles"], v["banks"]
            )
            for earlier, other in enumerate(levels):
                if other.name == level.name:
                    raise self.error(
                        ("memory", index, "name"),
                        f"memory[{index}].name \"{level.name}\" is already the name of memory[{earlier}]",
                    )
            if levels and level.capacity_bytes <= levels[-1].capacity_bytes:
                raise self.error(
                    ("memory", index, "capacity_bytes"),
                    f"memory[{index}].capacity_bytes ({format_bytes(level.capacity_bytes)}) must be larger"
                    f" than memory[{index - 1}].capacity_bytes ({format_bytes(levels[-1].capacity_bytes)}):"
                    " levels are listed fastest and smallest first",
                )
            levels.append(level)
        return levels

    def description(self, data: Mapping[str, Any], source: str) -> TargetDescription:
        top = self.table((), data, _TOP_KEYS)
        clock = self.clock_hz(top)
        compute = [self.compute_unit(i, unit) for i, unit in enumerate(self.tables(data, "compute"))]
        memory = self.memory(self.tables(data, "memory"))
        return TargetDescription(
            name=top["name"],
            clock_hz=clock,
            compute=compute,
            memory=memory,
            energy_pj=top["energy_pj"],
            params=top["params"],
            description=top["description"],
            source=source,
        )


_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def parse_description(text: str, path: str) -> TargetDescription:
    """Parse and check TOML text; every problem is a LoomError located in `path`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        match = _TOML_POSITION.search(message)
        line, column = (int(match.group(1)), int(match.group(2))) if match else (1, 1)
        message = _TOML_POSITION.sub("", message)
        raise LoomError(f"invalid TOML: {message}", SourceLocation(path, line, column, text)) from None
    return _Reader(path, text).description(data, path)


def from_dict(data: Mapping[str, Any], source: str = "") -> TargetDescription:
    """Check a description given as the dictionary its TOML file would parse to."""
    return _Reader(source or "<dict>", None).description(data, source)
