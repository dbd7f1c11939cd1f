"""The `cpu` target: native code for the host through LLVM."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp

from backends.base import Backend, CompileOptions
from backends.cpu.artifact import CpuArtifact
from compiler.artifact import ModelSignature
from compiler.diagnostics import LoomError

# nn -> linalg on tensors -> memrefs in destination-passing style -> scf loops
# over scalar arith/math, which `backends.cpu.emitter` turns into LLVM IR.
CPU_PIPELINE = (
    "convert-nn-to-linalg,bufferize,convert-linalg-to-loops,lower-affine,canonicalize,cse"
)


class CpuBackend(Backend):
    name = "cpu"
    description = "native code for the host CPU via LLVM (JIT, or .ll/.s/.o/.so with a C header)"
    emit_kinds = ("llvm", "asm", "obj", "shared")

    def pipeline(self, options: CompileOptions) -> str:
        return CPU_PIPELINE

    def build(self, module: ModuleOp, signature: ModelSignature, options: CompileOptions) -> CpuArtifact:
        if options.opt_level not in range(4):
            raise LoomError(f"the cpu target takes optimisation levels 0 to 3, got {options.opt_level}")
        return CpuArtifact(module, signature, options.opt_level)
