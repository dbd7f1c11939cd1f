"""Loops marked loom.parallel run on several threads: outlining, chunking,
repeatable results whatever the thread count, and the pthread dependency of
emitted libraries."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

import compiler
from backends.base import CompileOptions
from backends.cpu import toolchain
from backends.cpu.abi import ALIGNMENT

from cpu_loops import compile_loops


def scaled_copy(trips: int, step: int = 1) -> str:
    """y[i, j] = x[i, j] * s + t[j] for rows i in a parallel loop; s is a
    scalar, t a stack buffer filled before the loop, both captured by it."""
    rows = max(trips * step, 1)
    return f"""
builtin.module {{
  func.func @scaled(%x: memref<{rows}x5xf32>, %y: memref<{rows}x5xf32>)
      attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["y"]}} {{
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c5 = arith.constant 5 : index
    %step = arith.constant {step} : index
    %end = arith.constant {trips * step} : index
    %s = arith.constant 2.500000e+00 : f32
    %t = memref.alloc() : memref<5xf32>
    scf.for %j = %c0 to %c5 step %c1 {{
      %jf = arith.index_cast %j : index to i32
      %v = arith.sitofp %jf : i32 to f32
      memref.store %v, %t[%j] : memref<5xf32>
    }}
    scf.for %i0 = %c0 to %end step %step {{
      scf.for %di = %c0 to %step step %c1 {{
        %i = arith.addi %i0, %di : index
        scf.for %j = %c0 to %c5 step %c1 {{
          %a = memref.load %x[%i, %j] : memref<{rows}x5xf32>
          %b = memref.load %t[%j] : memref<5xf32>
          %m = arith.mulf %a, %s : f32
          %r = arith.addf %m, %b : f32
          memref.store %r, %y[%i, %j] : memref<{rows}x5xf32>
        }}
      }}
    }} {{loom.parallel}}
    memref.dealloc %t : memref<5xf32>
    func.return
  }}
}}"""


@pytest.mark.parametrize("trips, step, threads", [(10, 1, 3), (7, 3, 2), (1, 2, 4), (2, 1, 8), (0, 1, 2)])
def test_parallel_loop_covers_every_iteration_once(trips, step, threads):
    artifact = compile_loops(scaled_copy(trips, step), threads=threads)
    assert artifact.report["parallel_loops"] == 1
    x = np.arange(max(trips * step, 1) * 5, dtype=np.float32).reshape(-1, 5)
    y = artifact.run(x=x)["y"]
    covered = trips * step
    np.testing.assert_array_equal(y[:covered], x[:covered] * 2.5 + np.arange(5, dtype=np.float32))


def test_one_thread_runs_marked_loops_in_place():
    artifact = compile_loops(scaled_copy(6), threads=1)
    assert artifact.report["parallel_loops"] == 0 and artifact.report["threads"] == 1
    x = np.ones((6, 5), dtype=np.float32)
    np.testing.assert_array_equal(artifact.run(x=x)["y"], x * 2.5 + np.arange(5, dtype=np.float32))


def test_outlined_loops_are_internal_functions(tmp_path):
    artifact = compile_loops(scaled_copy(4), threads=2)
    (path,) = artifact.emit("llvm", str(tmp_path / "scaled.ll"))
    text = open(path).read()
    assert "@pthread_create" in text and "@pthread_join" in text
    defined = [line for line in text.splitlines() if line.startswith("define")]
    assert [line for line in defined if "internal" not in line] == [
        line for line in defined if "@loom_scaled(" in line or "@loom_scaled_packed(" in line]


LAYER = """
model layer {
  input x : f32[384, 256]
  param w : f32[256, 320] = normal(0.0, 0.1, seed=4)
  param b : f32[320] = normal(0.0, 0.1, seed=5)
  y = gelu(x @ w + b)
  output y
}"""


CONV = """
model block {
  input x : f32[1, 32, 48, 48]
  param w : f32[32, 32, 3, 3] = normal(0.0, 0.1, seed=6)
  param b : f32[32] = normal(0.0, 0.1, seed=7)
  y = relu(conv2d(x, w, b, padding=1))
  output y
}"""


def test_convolution_rows_split_over_threads_give_identical_results():
    artifacts = {threads: compiler.compile(CONV, target="cpu", options=CompileOptions(threads=threads))
                 for threads in (1, 2)}
    assert [artifacts[t].report["parallel_loops"] for t in (1, 2)] == [0, 1]
    x = np.random.default_rng(9).standard_normal((1, 32, 48, 48), dtype=np.float32)
    assert artifacts[1].run(x=x)["y"].tobytes() == artifacts[2].run(x=x)["y"].tobytes()
    assert compiler.check(artifacts[2], {"x": x}).max_abs_err <= 1e-4


@pytest.fixture(scope="module")
def layers():
    """The same model for one thread and for two (which splits its matmul)."""
    return {threads: compiler.compile(LAYER, target="cpu", options=CompileOptions(threads=threads))
            for threads in (1, 2)}


def test_results_do_not_depend_on_the_thread_count(layers):
    assert layers[1].report["parallel_loops"] == 0
    assert layers[2].report["parallel_loops"] >= 1 and layers[2].report["threads"] == 2
    x = np.random.default_rng(7).standard_normal((384, 256), dtype=np.float32)
    one, two = layers[1].run(x=x)["y"], layers[2].run(x=x)["y"]
    assert one.tobytes() == two.tobytes()
    assert compiler.check(layers[2], {"x": x}).max_abs_err <= 1e-4


def test_concurrent_calls_do_not_interfere(layers):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(8)
    inputs = [rng.standard_normal((384, 256), dtype=np.float32) for _ in range(4)]
    expected = [layers[1].run(x=x)["y"] for x in inputs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda x: layers[2].run(x=x)["y"], inputs))
    assert all(g.tobytes() == e.tobytes() for g, e in zip(got, expected))


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include "layer.h"

int main(void) {
    float *x = aligned_alloc(%(align)d, sizeof(float) * LOOM_LAYER_X_SIZE);
    float *y = aligned_alloc(%(align)d, sizeof(float) * LOOM_LAYER_Y_SIZE);
    for (int i = 0; i < LOOM_LAYER_X_SIZE; i++) x[i] = (float)((i * 37) %% 101) / 101.0f - 0.5f;
    loom_layer(x, y);
    for (int i = 0; i < LOOM_LAYER_Y_SIZE; i += 997) printf("%%.9g\n", y[i]);
    free(x);
    free(y);
    return 0;
}
"""


def test_threaded_shared_library_runs_from_c(layers, tmp_path):
    library = tmp_path / "layer.so"
    layers[2].emit("shared", str(library))
    header = (tmp_path / "layer.h").read_text()
    assert "2 POSIX threads" in header and "-lpthread" in header
    source = tmp_path / "main.c"
    source.write_text(C_PROGRAM % {"align": ALIGNMENT})
    program = tmp_path / "main"
    subprocess.run([toolchain.c_compiler(), "-std=c11", "-Wall", "-Werror", "-o", str(program), str(source),
                    str(library), f"-Wl,-rpath,{tmp_path}", "-lpthread"], check=True, capture_output=True)
    printed = subprocess.run([str(program)], check=True, capture_output=True, text=True).stdout
    x = ((np.arange(384 * 256) * 37) % 101).astype(np.float32) / np.float32(101) - np.float32(0.5)
    want = layers[1].run(x=x.reshape(384, 256))["y"].reshape(-1)[::997]
    np.testing.assert_array_equal(np.array(printed.split(), dtype=np.float32), want)
