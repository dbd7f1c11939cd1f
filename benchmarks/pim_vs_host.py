"""A GPT-style decode step on the PIM stack vs the same stack read by a host over the bus.

    .venv/bin/python benchmarks/pim_vs_host.py

The workload is samples/gpt_decoder.loom (width 256, FFN 1024, one head over
a KV cache of 128 positions): every product has one row, so it is a GEMV.
Both runs use the description `pim-hbm` and the same command-level
simulator, DRAM timing and energy table:

- **pim**: the cost model places every GEMV on the bank units (all-bank
  mode); the host runs layernorm, softmax pieces, GELU and the reductions.
- **host**: the same products are read over the external bus (`pim.read`,
  RD commands in waves across bank groups) and multiplied on the host, a
  processor that is never the bottleneck (1024 MACs per command clock).

Each is run with the units computing in f32 (a simulation mode, checked
against the reference to 1e-4) and in f16 (HBM-PIM's unit: f16 operands,
f32 accumulation). The table gives cycles, time, energy, the GEMV kernels
alone, and the two ratios beside the bandwidth ratio that explains them:
all-bank MACs read `units` columns per tCCD_L per channel, the bus moves one
column per burst.
"""

from __future__ import annotations

from pathlib import Path

import compiler
from backends.base import CompileOptions
from compiler.artifact import random_inputs

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples/gpt_decoder.loom"


def measure(extra: dict) -> dict:
    artifact = compiler.compile(SAMPLE, target="pim", options=CompileOptions(extra=extra))
    result = compiler.check(artifact, random_inputs(artifact.signature, 0))
    report = dict(artifact.report)
    report["max_abs_err"] = result.max_abs_err
    report["gemv_cycles"] = report["pim_cycles"]  # the stack is busy only with the products
    config = artifact.program.config
    report["internal_bytes_per_cycle"] = config.channels * config.units * config.column_bytes / config.tccd_l
    report["external_bytes_per_cycle"] = config.bus_bytes_per_cycle
    report["clock_hz"] = config.clock_hz
    return report


def main() -> None:
    rows = []
    for precision in ("", "f16"):
        pim = measure({"pim_precision": precision} if precision else {})
        host = measure({"pim_mode": "host", **({"pim_precision": precision} if precision else {})})
        rows.append((precision or "f32", pim, host))

    header = (f"{'dtype':<5} {'run':<5} {'cycles':>8} {'time us':>8} {'GEMV cyc':>9} {'host cyc':>9} "
              f"{'energy uJ':>10} {'row hit %':>9} {'max err':>9}")
    print("gpt_decoder (width 256, FFN 1024, KV cache 128) on pim-hbm\n")
    print(header)
    print("-" * len(header))
    for dtype, pim, host in rows:
        for name, r in (("pim", pim), ("host", host)):
            hits = r["row_hits"] / max(1, r["row_hits"] + r["row_misses"])
            print(f"{dtype:<5} {name:<5} {r['cycles']:>8} {r['time_s'] * 1e6:>8.2f} {r['gemv_cycles']:>9} "
                  f"{r['host_cycles']:>9} {r['energy_pj'] / 1e6:>10.2f} {100 * hits:>9.1f} {r['max_abs_err']:>9.2g}")
    print()
    for dtype, pim, host in rows:
        ratio = pim["internal_bytes_per_cycle"] / pim["external_bytes_per_cycle"]
        print(f"{dtype}: speedup {host['cycles'] / pim['cycles']:.2f}x end to end, "
              f"{host['gemv_cycles'] / pim['gemv_cycles']:.2f}x on the GEMVs; "
              f"energy ratio {host['energy_pj'] / pim['energy_pj']:.2f}x; "
              f"internal/external bandwidth {ratio:.1f}x")
    pim = rows[0][1]
    print("\nenergy by component (f32, pJ):")
    for name, r in (("pim", rows[0][1]), ("host", rows[0][2])):
        parts = ", ".join(f"{k} {v:.3g}" for k, v in r["energy_breakdown_pj"].items())
        print(f"  {name:<5} {parts}")
    print(f"\nsimulated {pim['trace_commands']} commands in {pim['sim_wall_time_s']:.2f} s")


if __name__ == "__main__":
    main()
