"""A model compiled to native code for the host CPU and loaded in-process."""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import numpy as np
from xdsl.dialects.builtin import ModuleOp

from backends.cpu.abi import CallFrame
from backends.cpu.emitter import emit_model
from backends.cpu.header import c_header
from backends.cpu.toolchain import JitEngine, host_target, link_shared, optimise, target_machine
from compiler.artifact import Artifact, ModelSignature
from compiler.files import write_atomic


class CpuArtifact(Artifact):
    """Emits LLVM IR for the lowered model, optimises it for the host and JIT-loads the object.

    The optimised LLVM module and its object code stay on the artifact, so
    `emit` writes exactly the code that `run` executes: `llvm` is the IR after
    optimisation, `asm` and `obj` its machine code, `shared` that object
    linked as a shared library. `obj` and `shared` come with a C header.
    """

    def __init__(self, module: ModuleOp, signature: ModelSignature, opt_level: int, threads: int = 1):
        super().__init__("cpu", signature)
        start = time.perf_counter()
        emitted = emit_model(module, signature, threads)
        self._threads = threads if emitted.parallel_loops else 1
        ir_text = str(emitted.module)
        self._machine = target_machine(opt_level)
        self._llvm = optimise(ir_text, self._machine, opt_level)
        self._object = self._machine.emit_object(self._llvm)
        self._jit = JitEngine(self._object)
        self._packed_entry = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(self._jit.address_of(emitted.packed_entry))
        # Frames not in use; a call takes one (or makes one when calls overlap) and puts it back.
        self._frames: list[CallFrame] = [CallFrame(signature)]
        host = host_target()
        self.report.update(
            compile_time_s=time.perf_counter() - start,
            llvm_ir_bytes=len(ir_text.encode()),  # as emitted, before LLVM's optimisation
            object_bytes=len(self._object),
            opt_level=opt_level,
            threads=self._threads,
            parallel_loops=emitted.parallel_loops,
            target_triple=host.triple,
            cpu=host.cpu,
        )

    def _execute(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        frames = self._frames
        try:
            frame = frames.pop()  # atomic: a test for emptiness first could race another thread
        except IndexError:
            frame = CallFrame(self.signature)
        try:
            return frame.call(self._packed_entry, inputs)
        finally:
            frames.append(frame)

    def emit(self, kind: str, path: str) -> list[str]:
        target = Path(path)
        if kind == "llvm":
            write_atomic(target, str(self._llvm))
            return [str(target)]
        if kind == "asm":
            write_atomic(target, self._machine.emit_assembly(self._llvm))
            return [str(target)]
        if kind in ("obj", "shared"):
            binary = self._object if kind == "obj" else link_shared(self._object)
            header = target.with_suffix(".h")
            text = c_header(self.signature, header.stem, self._threads)
            write_atomic(target, binary)
            write_atomic(header, text)
            return [str(target), str(header)]
        return super().emit(kind, path)
