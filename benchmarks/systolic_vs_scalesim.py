"""Loom's systolic simulator against SCALE-Sim, and how fast the simulator runs.

    .venv/bin/python benchmarks/systolic_vs_scalesim.py [--fresh] [--speed-only]

Part 1 runs every layer of the validation set (`backends/systolic/compare.py`:
GEMMs and convolutions on 8x8 to 64x64 arrays, most not multiples of the
array) through Loom and SCALE-Sim on the same array, dataflow and layer, and
prints one Markdown table: Loom's compute cycles next to SCALE-Sim's "Total
Cycles" (and its prefetch-inclusive figure), their difference, both
utilizations, and Loom's cycles including DRAM stalls. SCALE-Sim runs from
`.venv-scalesim/` (created on first use); `--fresh` ignores its cached results.

Part 2 times the simulator alone (the `run` of an artifact compiled once) on
large products and reports simulated multiply-accumulates per second of wall
time, the figure docs/targets/systolic.md quotes.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import compiler
from backends.base import CompileOptions
from backends.systolic.compare import VALIDATION_SET, compare
from compiler.artifact import random_inputs

SPEED_CASES = [  # (M, N, K, array, dataflow, dtype)
    (1024, 256, 256, "16x16", "ws", "i8"),
    (1024, 256, 256, "16x16", "os", "f32"),
    (2048, 512, 512, "64x64", "ws", "i8"),
    (2048, 512, 512, "64x64", "is", "i8"),
    (2048, 512, 512, "64x64", "os", "f32"),
]


def validation(fresh: bool) -> bool:
    print("| array | dataflow | layer | Loom compute | SCALE-Sim total | SCALE-Sim incl. prefetch | Loom - SCALE-Sim "
          "| rel. diff | Loom util | SCALE-Sim util | Loom cycles (DRAM) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst, count, exact = 0.0, 0, True
    for (rows, cols), shapes in VALIDATION_SET.items():
        for dataflow in ("ws", "os", "is"):
            for row in compare(shapes, rows, cols, dataflow, cached=not fresh):
                count += 1
                worst = max(worst, abs(row.relative_difference))
                exact &= row.loom_compute_cycles == row.scalesim_cycles + 1 and row.max_abs_err == 0
                print(f"| {row.array} | {dataflow} | {row.shape.describe()} | {row.loom_compute_cycles} "
                      f"| {row.scalesim_cycles} | {row.scalesim_cycles_with_prefetch} "
                      f"| {row.loom_compute_cycles - row.scalesim_cycles:+d} | {100 * row.relative_difference:.2f}% "
                      f"| {100 * row.loom_utilization:.2f}% | {100 * row.scalesim_utilization:.2f}% "
                      f"| {row.loom_cycles} |")
    print(f"\n{count} layer runs; largest relative difference {100 * worst:.2f}%; "
          f"Loom = SCALE-Sim + 1 and outputs exact on every run: {exact}\n")
    return exact


def speed() -> None:
    print("| product M x N x K | array | dataflow | dtype | simulated MACs | simulator wall time | MACs per second |")
    print("|---|---|---|---|---:|---:|---:|")
    for m, n, k, array, dataflow, dtype in SPEED_CASES:
        source = f"model g {{\n input x: {dtype}[{m}, {k}]\n input w: {dtype}[{k}, {n}]\n y = x @ w\n output y\n}}"
        artifact = compiler.compile(source, target="systolic",
                                    options=CompileOptions(extra={"array": array, "dataflow": dataflow}))
        inputs = random_inputs(artifact.signature, 0)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            artifact.run(**inputs)
            best = min(best, time.perf_counter() - start)
        macs = artifact.report["macs"]
        print(f"| {m}x{n}x{k} | {array} | {dataflow} | {dtype} | {macs:.3g} | {best * 1e3:.1f} ms "
              f"| {macs / best:.3g} |")
    print(f"\n({platform.processor() or platform.machine()}, Python {platform.python_version()}; "
          "best of 3 runs, DRAM setup and host work included)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="run SCALE-Sim again instead of using cached results")
    parser.add_argument("--speed-only", action="store_true", help="only time the simulator")
    args = parser.parse_args()
    ok = True
    if not args.speed_only:
        ok = validation(args.fresh)
    speed()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
