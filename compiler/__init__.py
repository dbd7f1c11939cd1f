"""Loom: a neural-network compiler.

    import compiler
    art = compiler.compile("samples/mlp.loom", target="cpu")
    outputs = art.run(x=...)
    art.report
"""

from backends.base import Backend, CompileOptions
from backends.registry import register_backend
from compiler.api import check, compile, load_module
from compiler.artifact import Artifact, ModelSignature, TensorSpec
from compiler.diagnostics import InternalError, LoomError
from passes.registry import register_pass

__all__ = [
    "Artifact",
    "Backend",
    "CompileOptions",
    "InternalError",
    "LoomError",
    "ModelSignature",
    "TensorSpec",
    "check",
    "compile",
    "load_module",
    "register_backend",
    "register_pass",
]
