"""Target names -> backend classes, imported lazily like passes."""

from __future__ import annotations

import importlib

from backends.base import Backend

_BUILTIN: dict[str, str] = {
    "cpu": "backends.cpu:CpuBackend",
    "interp": "backends.interp:InterpreterBackend",
}
_registered: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    _registered[cls.name] = cls
    return cls


def get_backend(name: str) -> type[Backend] | None:
    if name in _registered:
        return _registered[name]
    target = _BUILTIN.get(name)
    if target is None:
        return None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    _registered[name] = cls
    return cls


def backend_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_registered))
