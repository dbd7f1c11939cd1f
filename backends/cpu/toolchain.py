"""LLVM for the host CPU: target machine, optimisation pipeline, object code, linking.

One position-independent object is produced per model. The JIT loads that
very object, and `emit` writes or links it, so what runs in-process and what
a C program links are the same machine code.
"""

from __future__ import annotations

import ctypes.util
import functools
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import llvmlite.binding as llvm

from compiler.diagnostics import LoomError


@dataclass(frozen=True)
class HostTarget:
    triple: str
    cpu: str
    features: str


@functools.cache
def host_target() -> HostTarget:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    # Generated code calls tanhf & co. and, with threads, pthread_create and
    # pthread_join; make sure the JIT can resolve them.
    for library in ("m", "pthread"):
        path = ctypes.util.find_library(library)
        if path:
            llvm.load_library_permanently(path)
    return HostTarget(llvm.get_process_triple(), llvm.get_host_cpu_name(),
                      llvm.get_host_cpu_features().flatten())


def target_machine(opt_level: int) -> llvm.TargetMachine:
    host = host_target()
    target = llvm.Target.from_triple(host.triple)
    return target.create_target_machine(cpu=host.cpu, features=host.features, opt=opt_level,
                                        reloc="pic", codemodel="default")


def optimise(ir_text: str, machine: llvm.TargetMachine, opt_level: int) -> llvm.ModuleRef:
    """Parse, verify and run LLVM's default -O`opt_level` pipeline for `machine`."""
    module = llvm.parse_assembly(ir_text)
    module.verify()
    module.triple = machine.triple
    module.data_layout = str(machine.target_data)
    tuning = llvm.create_pipeline_tuning_options(speed_level=opt_level)
    tuning.loop_vectorization = opt_level >= 2
    tuning.slp_vectorization = opt_level >= 2
    tuning.loop_unrolling = opt_level >= 2
    builder = llvm.create_pass_builder(machine, tuning)
    builder.getModulePassManager().run(module, builder)
    return module


class JitEngine:
    """An object file loaded into the process; keeps its code mapped while alive."""

    def __init__(self, object_code: bytes):
        # The engine takes ownership of its target machine and only needs one
        # to exist: the object is already compiled.
        self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine(0))
        self._object = llvm.ObjectFileRef.from_data(object_code)
        self._engine.add_object_file(self._object)
        self._engine.finalize_object()

    def address_of(self, symbol: str) -> int:
        address = self._engine.get_function_address(symbol)
        if not address:
            raise LoomError(f"symbol '{symbol}' is missing from the compiled code")
        return address


def c_compiler() -> str:
    """The system C compiler: $CC if set, else the first of cc, gcc, clang on PATH."""
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and (found := shutil.which(candidate)):
            return found
    raise LoomError("cannot build a shared library: no C compiler found "
                    "(set CC or put cc, gcc or clang on PATH)")


def link_shared(object_code: bytes) -> bytes:
    """Link one object into a shared library with the system C compiler."""
    compiler = c_compiler()
    with tempfile.TemporaryDirectory(prefix="loom-link-") as scratch:
        obj, lib = Path(scratch, "model.o"), Path(scratch, "model.so")
        obj.write_bytes(object_code)
        done = subprocess.run([compiler, "-shared", "-o", str(lib), str(obj), "-lm", "-lpthread"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise LoomError(f"linking the shared library with {compiler} failed:\n{done.stderr.strip()}")
        return lib.read_bytes()
