"""Hardware descriptions: what a target computes with and where its data lives.

`load_target("host")` probes this machine; the other built-ins are the TOML
files in samples/targets/, named by file stem (so a newcomer can copy one,
and a new file there is a new built-in); any other argument is a path to a
TOML file in the schema of docs/targets/descriptions.md.
Parsed descriptions are cached, keyed by file and modification time.
"""

from __future__ import annotations

from pathlib import Path

from compiler.diagnostics import LoomError
from compiler.frontend.signatures import suggestion
from compiler.targets.description import (
    COMPUTE_KINDS,
    ComputeUnit,
    MemoryLevel,
    TargetDescription,
    describe,
    format_bytes,
)
from compiler.targets.host import host_description
from compiler.targets.schema import from_dict, parse_description, parse_size

__all__ = [
    "COMPUTE_KINDS",
    "ComputeUnit",
    "MemoryLevel",
    "TargetDescription",
    "builtin_targets",
    "describe",
    "format_bytes",
    "from_dict",
    "load_target",
    "parse_description",
    "parse_size",
]

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "samples" / "targets"

_cache: dict[object, TargetDescription] = {}


def _builtin_files() -> list[str]:
    return sorted(path.stem for path in SAMPLES_DIR.glob("*.toml"))


def builtin_targets() -> list[str]:
    return ["host", *_builtin_files()]


def _is_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or "/" in name_or_path or Path(name_or_path).is_file()


def _load_file(path: Path, shown: str) -> TargetDescription:
    try:
        stat = path.stat()
    except OSError:
        raise LoomError(f"no such target description file: '{shown}'") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _cache:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise LoomError(f"cannot read target description '{shown}': {e}") from None
        _cache[key] = parse_description(text, shown)
    return _cache[key]


def load_target(name_or_path: str) -> TargetDescription:
    """A built-in description by name, or one read from a TOML file."""
    if name_or_path == "host":
        if "host" not in _cache:
            _cache["host"] = host_description()
        return _cache["host"]
    if name_or_path in _builtin_files():
        shown = f"samples/targets/{name_or_path}.toml"
        target = _load_file(SAMPLES_DIR / f"{name_or_path}.toml", shown)
        if target.name != name_or_path:
            raise LoomError(f"{shown} is named '{target.name}'; a built-in description is named after its file")
        return target
    if _is_path(name_or_path):
        return _load_file(Path(name_or_path), name_or_path)
    known = ", ".join(builtin_targets())
    raise LoomError(
        f"unknown target description '{name_or_path}' (built-in: {known}; or a path to a .toml file)"
        f"{suggestion(name_or_path, builtin_targets())}"
    )
