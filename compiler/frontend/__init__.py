"""The .loom frontend: source text to an nn-dialect module.

`parse_ast` checks syntax only; `parse_source` and `load_file` also resolve
names, shapes and param values and return a verified module with one
`func.func` per model. Every problem in the input is a `LoomError` located
in the source.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from compiler.diagnostics import LoomError
from compiler.frontend.builder import build_module
from compiler.frontend.parser import parse_ast
from compiler.frontend.source import SourceFile

__all__ = ["load_file", "parse_ast", "parse_source"]


def parse_source(
    text: str,
    path: str = "<string>",
    weights: Mapping[str, np.ndarray] | None = None,
    base_dir: Path | None = None,
) -> ModuleOp:
    """Build the module for `text`; `path` names it in diagnostics, `weights`
    gives values to params without an initializer, and `load("f.npy")` reads
    from `base_dir` (default: the working directory)."""
    program = parse_ast(text, path)
    return build_module(program, SourceFile(path, text), weights, base_dir or Path.cwd())


def load_file(path: str | Path, weights: Mapping[str, np.ndarray] | None = None) -> ModuleOp:
    """Read and build a .loom file; its `load(...)` paths are relative to it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LoomError(f"cannot read '{path}': {e.strerror}") from None
    except UnicodeDecodeError:
        raise LoomError(f"cannot read '{path}': it is not UTF-8 text") from None
    return parse_source(text, str(path), weights, path.parent)
