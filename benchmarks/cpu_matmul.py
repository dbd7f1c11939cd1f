"""Square f32 matmul on the cpu target against numpy's BLAS, in the same run.

Compiles `c = a @ b` for each size twice, once for every core of the machine
and once for a single thread, checks both against numpy, then times them and
`a @ b` (best of several runs after a warm-up) and prints GFLOP/s and the
ratios. numpy runs with however many threads its BLAS uses by default, which
is every core for OpenBLAS; the line above the table says which library and
how many threads. `--overhead` also measures what a parallel loop costs per
call (starting and joining the worker threads), the figure the tile pass's
threshold for running an op on several cores is based on.

    .venv/bin/python benchmarks/cpu_matmul.py [--sizes 128 256 512 1024] [--repeats 10] [--overhead]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import compiler
from backends.base import CompileOptions
from backends.cpu import CpuBackend

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "backends" / "cpu"))


def matmul_source(n: int) -> str:
    return f"""
model matmul{n} {{
  input a : f32[{n}, {n}]
  input b : f32[{n}, {n}]
  c = a @ b
  output c
}}
"""


def best_time(run: Callable[[], object], repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def blas_description() -> str:
    """numpy's BLAS and the threads it uses (OpenBLAS: every core unless told otherwise)."""
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    configured = next((os.environ[v] for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if v in os.environ),
                      None)
    threads = configured or f"{os.cpu_count()} (all cores)"
    return f"numpy: {blas.get('name', 'BLAS')} {blas.get('version', '')}, {threads} threads"


def parallel_overhead(repeats: int = 1000) -> tuple[float, float]:
    """Seconds per `run()` of a trivial model whose one loop is marked
    parallel, compiled for one thread and for every core."""
    from cpu_loops import loop_signature, parse_loops

    text = """
builtin.module {
  func.func @copy(%x: memref<64xf32>, %y: memref<64xf32>)
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %c0 = arith.constant 0 : index
    %c1 = arith.constant 1 : index
    %c64 = arith.constant 64 : index
    scf.for %i = %c0 to %c64 step %c1 {
      %v = memref.load %x[%i] : memref<64xf32>
      memref.store %v, %y[%i] : memref<64xf32>
    } {loom.parallel}
    func.return
  }
}"""
    x = np.arange(64, dtype=np.float32)
    per_call = []
    for threads in (1, os.cpu_count() or 1):
        module = parse_loops(text)
        artifact = CpuBackend().build(module, loop_signature(module), CompileOptions(threads=threads))
        per_call.append(best_time(lambda: [artifact.run(x=x) for _ in range(repeats)], 3) / repeats)
    return per_call[0], per_call[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--overhead", action="store_true", help="also time a parallel loop's start-up")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    print(f"{blas_description()}; loom: {cores} threads, and 1 thread")
    rng = np.random.default_rng(0)
    print(f"{'n':>5} {'compile s':>10} {'loom GFLOP/s':>13} {'loom 1T':>8} {'numpy GFLOP/s':>14} "
          f"{'loom/numpy':>11} {'1T/numpy':>9}")
    for n in args.sizes:
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        want = a @ b
        flops = 2.0 * n ** 3
        rates = []
        for threads in (cores, 1):
            artifact = compiler.compile(matmul_source(n), target="cpu", options=CompileOptions(threads=threads))
            error = float(np.max(np.abs(artifact.run(a=a, b=b)["c"] - want)))
            if error > 1e-3 * n:
                raise SystemExit(f"n={n}: loom and numpy disagree (max abs error {error})")
            rates.append(flops / best_time(lambda: artifact.run(a=a, b=b), args.repeats) / 1e9)
            if threads == cores:
                compile_s = artifact.report["compile_time_s"]
        blas = flops / best_time(lambda: a @ b, args.repeats) / 1e9
        print(f"{n:>5} {compile_s:>10.3f} {rates[0]:>13.2f} {rates[1]:>8.2f} {blas:>14.2f} "
              f"{rates[0] / blas:>10.1%} {rates[1] / blas:>9.1%}")
    if args.overhead:
        serial, parallel = parallel_overhead()
        print(f"parallel loop on {cores} threads: {parallel * 1e6:.1f} us per call, "
              f"{serial * 1e6:.1f} us on one (start-up cost {(parallel - serial) * 1e6:.1f} us)")


if __name__ == "__main__":
    main()
