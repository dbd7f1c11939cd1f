"""Square f32 matmul on the cpu target against numpy's BLAS.

Compiles `c = a @ b` for a few sizes, times the compiled kernel and numpy
(best of several runs after a warm-up) and prints GFLOP/s and their ratio.

    .venv/bin/python benchmarks/cpu_matmul.py [--sizes 128 256 512] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import compiler


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    print(f"{'n':>5} {'compile s':>10} {'loom GFLOP/s':>13} {'numpy GFLOP/s':>14} {'loom/numpy':>11}")
    for n in args.sizes:
        artifact = compiler.compile(matmul_source(n), target="cpu")
        a = rng.standard_normal((n, n)).astype(np.float32)
        b = rng.standard_normal((n, n)).astype(np.float32)
        got = artifact.run(a=a, b=b)["c"]
        want = a @ b
        error = float(np.max(np.abs(got - want)))
        if error > 1e-3 * n:
            raise SystemExit(f"n={n}: loom and numpy disagree (max abs error {error})")
        flops = 2.0 * n ** 3
        loom = flops / best_time(lambda: artifact.run(a=a, b=b), args.repeats) / 1e9
        blas = flops / best_time(lambda: a @ b, args.repeats) / 1e9
        print(f"{n:>5} {artifact.report['compile_time_s']:>10.3f} {loom:>13.2f} {blas:>14.2f} "
              f"{loom / blas:>10.1%}")


if __name__ == "__main__":
    main()
