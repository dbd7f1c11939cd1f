"""The `c` target: the model as one portable C file, built with the system C compiler.

It shows the whole backend contract in a small space: a pipeline string
naming registered passes, a `build` that turns the lowered module into an
`Artifact`, and an artifact that can `run`, `report` and `emit`.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from backends.base import Backend, CompileOptions
from compiler.artifact import Artifact, ModelSignature
from compiler.diagnostics import InternalError, LoomError
from compiler.files import write_atomic
from loom_cbackend.c_source import entry_name, translate_to_c

# nn -> linalg on tensors -> buffers (memrefs) -> scf loops over scalar
# arith/math: the loop level, which maps onto C statement by statement.
LOOP_PIPELINE = "convert-nn-to-linalg,bufferize,convert-linalg-to-loops,lower-affine,canonicalize,cse"


def find_c_compiler() -> str:
    for name in ("cc", "gcc"):
        if path := shutil.which(name):
            return path
    raise LoomError("the c target needs a C compiler: neither cc nor gcc is on PATH")


def load_library(source: str, cc: str, opt_level: int) -> ctypes.CDLL:
    """Compile `source` into a shared library in a scratch directory and load it.

    The loader keeps the library mapped after its file is deleted, so nothing
    is left on disk. `-fwrapv` gives signed integer overflow the wrapping
    meaning arith has; in plain C it would be undefined.
    """
    with tempfile.TemporaryDirectory(prefix="loom-c-") as scratch:
        c_file, library = Path(scratch, "model.c"), Path(scratch, "model.so")
        c_file.write_text(source)
        command = [cc, f"-O{opt_level}", "-fwrapv", "-shared", "-fPIC", str(c_file), "-o", str(library), "-lm"]
        compiled = subprocess.run(command, capture_output=True, text=True)
        if compiled.returncode != 0:
            raise InternalError(f"c target: {cc} rejected the generated C:\n{compiled.stderr.strip()}")
        return ctypes.CDLL(str(library))


class CArtifact(Artifact):
    """A model compiled from C and called through ctypes."""

    def __init__(self, source: str, signature: ModelSignature, opt_level: int):
        super().__init__(CBackend.name, signature)
        self.source = source
        cc = find_c_compiler()
        start = time.perf_counter()
        self._library = load_library(source, cc, opt_level)
        self._entry = getattr(self._library, entry_name(signature.name))
        self._entry.argtypes = [ctypes.c_void_p] * (len(signature.inputs) + len(signature.outputs))
        self._entry.restype = None
        self.report.update(cc=cc, c_source_bytes=len(source.encode()),
                           compile_time_s=time.perf_counter() - start, opt_level=opt_level)

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = [np.empty(spec.shape, spec.numpy_dtype) for spec in self.signature.outputs]
        buffers = [inputs[spec.name] for spec in self.signature.inputs] + outputs
        self._entry(*[buffer.ctypes.data for buffer in buffers])
        return {spec.name: out for spec, out in zip(self.signature.outputs, outputs)}

    def emit(self, kind: str, path: str) -> list[str]:
        if kind == "c":
            write_atomic(path, self.source)
            return [str(path)]
        return super().emit(kind, path)  # the IR stages every target can write


class CBackend(Backend):
    name = "c"
    description = "one portable C file built with the system C compiler (plugin example)"
    emit_kinds = ("c",)

    def pipeline(self, options: CompileOptions) -> str:
        return LOOP_PIPELINE

    def build(self, module: ModuleOp, signature: ModelSignature, options: CompileOptions) -> CArtifact:
        if options.opt_level not in range(4):
            raise LoomError(f"the c target takes optimisation levels 0 to 3, got {options.opt_level}")
        return CArtifact(translate_to_c(module, signature), signature, options.opt_level)
