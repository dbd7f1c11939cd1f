"""The `cpu` target: native code for the host through LLVM."""

from __future__ import annotations

import os

from xdsl.dialects.builtin import ModuleOp

from backends.base import Backend, CompileOptions
from backends.cpu.artifact import CpuArtifact
from compiler.artifact import ModelSignature
from compiler.diagnostics import LoomError
from compiler.pass_manager import quote_option
from passes.registry import get_pass
from passes.tile import format_tile_overrides

DEFAULT_TARGET_CONFIG = "host"


def _registered(name: str) -> bool:
    """Whether a pass can be used (optional passes are left out of the pipeline otherwise)."""
    try:
        return get_pass(name) is not None
    except LoomError:
        return False


def thread_count(options: CompileOptions) -> int:
    threads = options.threads if options.threads is not None else os.cpu_count() or 1
    if threads < 1:
        raise LoomError(f"the cpu target needs at least one thread, got {threads}")
    return threads


def cpu_pipeline(options: CompileOptions) -> str:
    """nn -> linalg on tensors (elementwise chains fused) -> buffers in
    destination-passing style -> reductions tiled to the caches with their
    epilogues inside, register tiles as vector FMA kernels -> scf loops over
    scalar arith/math, which `backends.cpu.emitter` turns into LLVM IR."""
    target = options.target_config or DEFAULT_TARGET_CONFIG
    tile_options = [f"target-config={quote_option(target)}", f"threads={thread_count(options)}"]
    if not options.fusion:
        tile_options.append("fuse-epilogues=false")
    if options.tiles:
        tile_options.append(f"tiles={quote_option(format_tile_overrides(options.tiles))}")
    passes = [
        "convert-nn-to-linalg",
        "fuse-elementwise" if options.fusion and _registered("fuse-elementwise") else "",
        "bufferize",
        f"tile{{{' '.join(tile_options)}}}",
        f"vectorize{{target-config={quote_option(target)}}}",
        "convert-linalg-to-loops",
        "expand-math",
        "lower-affine",
        "canonicalize",
        "cse",
        "plan-memory" if _registered("plan-memory") else "",
    ]
    return ",".join(p for p in passes if p)


class CpuBackend(Backend):
    name = "cpu"
    description = "native code for the host CPU via LLVM (JIT, or .ll/.s/.o/.so with a C header)"
    emit_kinds = ("llvm", "asm", "obj", "shared")

    def pipeline(self, options: CompileOptions) -> str:
        return cpu_pipeline(options)

    def build(self, module: ModuleOp, signature: ModelSignature, options: CompileOptions) -> CpuArtifact:
        if options.opt_level not in range(4):
            raise LoomError(f"the cpu target takes optimisation levels 0 to 3, got {options.opt_level}")
        return CpuArtifact(module, signature, options.opt_level, thread_count(options))
