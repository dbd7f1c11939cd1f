"""Loom: a neural-network compiler.

    import compiler
    art = compiler.compile("samples/mlp.loom", target="cpu")
    outputs = art.run(x=...)
    art.report

The public names are resolved on first use, so importing a submodule (say
`compiler.diagnostics` from a backend) does not pull in the whole driver.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Artifact": "compiler.artifact",
    "ModelSignature": "compiler.artifact",
    "TensorSpec": "compiler.artifact",
    "Backend": "backends.base",
    "CompileOptions": "backends.base",
    "register_backend": "backends.registry",
    "register_pass": "passes.registry",
    "check": "compiler.api",
    "compile": "compiler.api",
    "load_module": "compiler.api",
    "import_onnx": "compiler.onnx",
    "write_loom": "compiler.loom_writer",
    "InternalError": "compiler.diagnostics",
    "LoomError": "compiler.diagnostics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'compiler' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
