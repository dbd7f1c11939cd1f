"""Writing compiled models out: LLVM IR, assembly, objects, shared libraries, C headers."""

from __future__ import annotations

import ctypes
import subprocess

import llvmlite.binding as llvm
import numpy as np
import pytest

from backends.cpu import toolchain
from backends.cpu.abi import ALIGNMENT, aligned_empty
from compiler import LoomError

from cpu_loops import compile_loops, dense_hex

WEIGHT = np.arange(12, dtype=np.float32).reshape(3, 4) / 4 - 1

MATMUL = f"""
builtin.module {{
  "memref.global"() <{{sym_name = "w", sym_visibility = "private", type = memref<3x4xf32>,
      initial_value = {dense_hex(WEIGHT)} : tensor<3x4xf32>, constant}}> : () -> ()
  func.func @mm(%x: memref<2x3xf32>, %y: memref<2x4xf32>)
      attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["y"]}} {{
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c2 = arith.constant 2 : index
    %c3 = arith.constant 3 : index
    %c4 = arith.constant 4 : index
    %zero = arith.constant 0.000000e+00 : f32
    %w = memref.get_global @w : memref<3x4xf32>
    scf.for %i = %c0 to %c2 step %c1 {{
      scf.for %j = %c0 to %c4 step %c1 {{
        %s = scf.for %p = %c0 to %c3 step %c1 iter_args(%acc = %zero) -> (f32) {{
          %a = memref.load %x[%i, %p] : memref<2x3xf32>
          %b = memref.load %w[%p, %j] : memref<3x4xf32>
          %m = arith.mulf %a, %b : f32
          %n = arith.addf %acc, %m : f32
          scf.yield %n : f32
        }}
        memref.store %s, %y[%i, %j] : memref<2x4xf32>
      }}
    }}
    func.return
  }}
}}"""

# One buffer of every element type, to check the C types the header declares.
MIXED = """
builtin.module {
  func.func @mixed(%a: memref<2xf32>, %b: memref<3xf16>, %c: memref<4xbf16>, %d: memref<5xi8>,
                   %e: memref<2x3xi32>, %out: memref<2xf32>)
      attributes {loom.inputs = ["a", "b", "c", "d", "e"], loom.model, loom.outputs = ["out"]} {
    %c0 = arith.constant 0 : index
    %v = memref.load %a[%c0] : memref<2xf32>
    memref.store %v, %out[%c0] : memref<2xf32>
    func.return
  }
}"""

X = np.array([[1.0, 2.0, 3.0], [-0.5, 0.25, 4.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def matmul():
    return compile_loops(MATMUL)


def test_emit_llvm_parses_back(matmul, tmp_path):
    written = matmul.emit("llvm", str(tmp_path / "mm.ll"))
    assert written == [str(tmp_path / "mm.ll")]
    module = llvm.parse_assembly((tmp_path / "mm.ll").read_text())
    module.verify()
    assert not module.get_function("loom_mm").is_declaration


def test_emit_asm_and_obj(matmul, tmp_path):
    asm = tmp_path / "mm.s"
    assert matmul.emit("asm", str(asm)) == [str(asm)]
    assert "loom_mm" in asm.read_text()
    written = matmul.emit("obj", str(tmp_path / "mm.o"))
    assert written == [str(tmp_path / "mm.o"), str(tmp_path / "mm.h")]
    assert (tmp_path / "mm.o").stat().st_size > 0


def test_emitted_files_are_deterministic(matmul, tmp_path):
    for kind, suffix in (("llvm", ".ll"), ("obj", ".o")):
        first, second = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        matmul.emit(kind, str(first))
        compile_loops(MATMUL).emit(kind, str(second))
        assert first.read_bytes() == second.read_bytes()


def test_header_declares_c_types_and_shapes(tmp_path):
    compile_loops(MIXED).emit("obj", str(tmp_path / "mixed.o"))
    header = (tmp_path / "mixed.h").read_text()
    assert "#ifndef MIXED_H" in header and "#include <stdint.h>" in header
    assert ("void loom_mixed(const float *a, const uint16_t *b, const uint16_t *c, "
            "const int8_t *d, const int32_t *e, float *out);") in header
    assert "#define LOOM_MIXED_E_SHAPE {2, 3}" in header
    assert "#define LOOM_MIXED_E_SIZE 6" in header
    assert "#define LOOM_MIXED_OUT_RANK 1" in header
    assert "void loom_mixed_packed(void *const *buffers);" in header


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "mm.h"

int main(void) {
    float *x = aligned_alloc(%(align)d, %(align)d * 4);
    float *y = aligned_alloc(%(align)d, %(align)d * 4);
    const float values[LOOM_MM_X_SIZE] = {1.0f, 2.0f, 3.0f, -0.5f, 0.25f, 4.0f};
    for (int i = 0; i < LOOM_MM_X_SIZE; i++) x[i] = values[i];
    loom_mm(x, y);
    for (int i = 0; i < LOOM_MM_Y_SIZE; i++) printf("%%.9g\n", y[i]);
    free(x);
    free(y);
    return 0;
}
"""


def test_shared_library_links_into_a_c_program(matmul, tmp_path):
    library = tmp_path / "mm.so"
    assert matmul.emit("shared", str(library)) == [str(library), str(tmp_path / "mm.h")]
    source = tmp_path / "main.c"
    source.write_text(C_PROGRAM % {"align": ALIGNMENT})
    program = tmp_path / "main"
    cc = toolchain.c_compiler()
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-pedantic", "-o", str(program), str(source),
                    str(library), f"-Wl,-rpath,{tmp_path}"], check=True, capture_output=True)
    printed = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    got = np.array([float(v) for v in printed.split()], dtype=np.float32).reshape(2, 4)
    np.testing.assert_allclose(got, X @ WEIGHT, rtol=1e-6)


def test_shared_library_loads_with_ctypes(matmul, tmp_path):
    library = tmp_path / "mm.so"
    matmul.emit("shared", str(library))
    entry = ctypes.CDLL(str(library)).loom_mm
    x, y = aligned_empty((2, 3), np.dtype(np.float32)), aligned_empty((2, 4), np.dtype(np.float32))
    x[...] = X
    entry(ctypes.c_void_p(x.ctypes.data), ctypes.c_void_p(y.ctypes.data))
    np.testing.assert_allclose(y, X @ WEIGHT, rtol=1e-6)
    y[...] = 0
    packed = ctypes.CDLL(str(library)).loom_mm_packed  # the same, on one array of both addresses
    packed((ctypes.c_void_p * 2)(x.ctypes.data, y.ctypes.data))
    np.testing.assert_allclose(y, X @ WEIGHT, rtol=1e-6)


def test_failed_link_leaves_no_file(matmul, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    with pytest.raises(LoomError, match="linking the shared library"):
        matmul.emit("shared", str(tmp_path / "mm.so"))
    assert list(tmp_path.iterdir()) == []


def test_missing_compiler_is_a_clear_error(matmul, tmp_path, monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(toolchain.shutil, "which", lambda name: None)
    with pytest.raises(LoomError, match="no C compiler found"):
        matmul.emit("shared", str(tmp_path / "mm.so"))
    assert list(tmp_path.iterdir()) == []


def test_unknown_kind_is_rejected(matmul, tmp_path):
    with pytest.raises(LoomError, match="cannot emit 'verilog'"):
        matmul.emit("verilog", str(tmp_path / "mm.v"))
    assert list(tmp_path.iterdir()) == []


def test_run_matches_numpy_with_unaligned_inputs(matmul):
    storage = np.zeros(7, dtype=np.float32)
    unaligned = storage[1:7].reshape(2, 3)
    unaligned[...] = X
    np.testing.assert_allclose(matmul.run(x=unaligned)["y"], X @ WEIGHT, rtol=1e-6)
