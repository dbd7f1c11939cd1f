"""Loom's own passes and targets come in through the entry points a plugin
uses: what pyproject.toml declares is what the registries know, and every
declaration loads the class it names."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from backends.base import Backend
from backends.registry import BACKENDS
from compiler.plugins import Registry
from passes.registry import PASSES


def declared(root: Path, group: str) -> dict[str, str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return project["entry-points"][group]


@pytest.mark.parametrize("registry", [PASSES, BACKENDS], ids=lambda r: r.group)
def test_every_declared_builtin_is_registered_and_loads(root: Path, registry: Registry) -> None:
    builtins = declared(root, registry.group)
    assert set(builtins) <= set(registry.names())
    for name in builtins:
        cls = registry.get(name)
        assert cls is not None and cls.name == name
        assert registry.describe(name) and not registry.describe(name).startswith("(cannot load")


def test_targets_are_backends(root: Path) -> None:
    for name in declared(root, "loom.backends"):
        assert issubclass(BACKENDS.get(name), Backend)

