"""Pass names -> pass classes.

Built-in passes are listed here by module path and imported on first use, so
`loom --help` stays fast; plugins add theirs with `register_pass`.
"""

from __future__ import annotations

import importlib

from xdsl.passes import ModulePass

# name -> "module:Class" for Loom's own passes and the upstream xDSL passes
# Loom pipelines use.
_BUILTIN: dict[str, str] = {
    "canonicalize": "xdsl.transforms.canonicalize:CanonicalizePass",
    "cse": "xdsl.transforms.common_subexpression_elimination:CommonSubexpressionElimination",
    "dce": "xdsl.transforms.dead_code_elimination:DeadCodeElimination",
    "convert-linalg-to-loops": "xdsl.transforms.convert_linalg_to_loops:ConvertLinalgToLoopsPass",
    "lower-affine": "xdsl.transforms.lower_affine:LowerAffinePass",
    "convert-nn-to-linalg": "passes.convert_nn_to_linalg:ConvertNNToLinalgPass",
    "bufferize": "passes.bufferize:BufferizePass",
    "fold-constants": "passes.fold_constants:FoldConstantsPass",
}

_registered: dict[str, type[ModulePass]] = {}


def register_pass(cls: type[ModulePass]) -> type[ModulePass]:
    """Make `cls` available by `cls.name` in pipelines; usable as a decorator."""
    _registered[cls.name] = cls
    return cls


def register_builtin(name: str, target: str) -> None:
    """Declare a built-in pass by import path without importing it."""
    _BUILTIN[name] = target


def get_pass(name: str) -> type[ModulePass] | None:
    if name in _registered:
        return _registered[name]
    target = _BUILTIN.get(name)
    if target is None:
        return None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    _registered[name] = cls
    return cls


def pass_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_registered))


def describe(name: str) -> str:
    """First line of the pass's docstring."""
    cls = get_pass(name)
    doc = (cls.__doc__ or "").strip() if cls else ""
    return doc.splitlines()[0] if doc else ""
