"""Name -> class registries fed by Python entry points and runtime registration.

Loom's own passes and targets are declared exactly like a plugin's: as
entry points (`loom.passes`, `loom.backends` in Loom's pyproject.toml), so
there is one way in, and `loom passes` / `loom targets` list built-ins and
plugins alike. A registry imports a class only when it is first asked for,
so listing names and `loom --help` stay cheap. Runtime registration
(`register`) wins over an entry point of the same name, so a test or an
embedding tool can override a built-in.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from compiler.diagnostics import LoomError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, group: str, descriptions: dict[str, str] | None = None):
        self.group = group
        self._descriptions = descriptions or {}  # for classes that carry none
        self._registered: dict[str, type[T]] = {}
        self._entry_points: dict[str, str] | None = None

    def _declared(self) -> dict[str, str]:
        """name -> "module:attr" of every entry point in the group."""
        if self._entry_points is None:
            self._entry_points = {ep.name: ep.value for ep in entry_points(group=self.group)}
            if not self._entry_points:
                raise LoomError(
                    f"no {self.group} entry points are installed, not even Loom's own: "
                    "install Loom (`pip install -e .`, or `make test`) rather than running it from the source tree"
                )
        return self._entry_points

    def register(self, cls: type[T]) -> type[T]:
        """Make `cls` available under `cls.name`; usable as a decorator."""
        self._registered[cls.name] = cls  # type: ignore[attr-defined]
        return cls

    def get(self, name: str) -> type[T] | None:
        if name in self._registered:
            return self._registered[name]
        target = self._declared().get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise LoomError(f"cannot load '{name}' from {self.group} entry point '{target}': {e}") from None
        self._registered[name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(set(self._declared()) | set(self._registered))

    def describe(self, name: str) -> str:
        """A one-line description: the class's `description`, else its docstring's first line.

        A plugin that fails to load is described by its error, so one broken
        plugin does not hide the others from a listing.
        """
        try:
            cls = self.get(name)
        except LoomError as e:
            return f"(cannot load: {e.message})"
        text = self._descriptions.get(name) or getattr(cls, "description", None) or cls.__doc__ or ""
        text = text.strip()
        return text.splitlines()[0] if text else ""
