"""Per-layer cycles and PE utilization on the systolic target, and how they fall on a large array.

    .venv/bin/python benchmarks/systolic_utilization.py

Table 1: every layer the array runs in lenet and resblock, on the sample
description `systolic-16x16` (weight stationary, 64 KiB scratchpads, 16
bytes of DRAM per cycle): MACs, compute cycles, cycles with DRAM stalls,
utilization (MACs over compute cycles x PEs) and DRAM traffic, with the ops
left to the host.

Table 2 reproduces the point of "DRACO: Co-Optimizing Hardware Utilization,
and Performance of DNNs on Systolic Accelerator": on a 64x64 array
(scratchpads of 1 MiB each, so the figures show the mapping and not the
scratchpad size) layers that are small in K or N, above all depthwise
convolutions (K = 9, N = 1 per group), leave almost every PE idle whatever
the dataflow, while wide convolutions and pointwise layers keep it busy.
The layers are lenet's, resblock's and those of a MobileNet-style block.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import compiler
from backends.base import CompileOptions
from backends.systolic.compare import target_toml
from compiler.artifact import random_inputs

ROOT = Path(__file__).resolve().parent.parent

MOBILE_BLOCK = """
# Two MobileNet-style depthwise-separable stages and a classifier.
model mobile {
  input x: f32[1, 32, 56, 56]
  param dw1: f32[32, 1, 3, 3] = normal(0.0, 0.3, seed=1)
  param pw1: f32[64, 32, 1, 1] = normal(0.0, 0.2, seed=2)
  param dw2: f32[64, 1, 3, 3] = normal(0.0, 0.3, seed=3)
  param pw2: f32[128, 64, 1, 1] = normal(0.0, 0.15, seed=4)
  param fc: f32[128, 10] = normal(0.0, 0.1, seed=5)
  dw1_out = relu(conv2d(x, dw1, padding=1, groups=32))
  pw1_out = relu(conv2d(dw1_out, pw1))
  dw2_out = relu(conv2d(pw1_out, dw2, padding=1, stride=2, groups=64))
  pw2_out = relu(conv2d(dw2_out, pw2))
  logits = reshape(global_avgpool(pw2_out), [1, 128]) @ fc
  output logits
}
"""


def run(source, options: CompileOptions):
    artifact = compiler.compile(source, target="systolic", options=options)
    result = compiler.check(artifact, random_inputs(artifact.signature, 0))
    if result.max_abs_err > 1e-4:
        raise SystemExit(f"{artifact.model}: max abs error {result.max_abs_err:.3g} against the interpreter")
    return artifact.report


def shape_of(layer) -> str:
    groups = f" x{layer['groups']} groups" if layer["groups"] > 1 else ""
    return f"{layer['m']}x{layer['k']}x{layer['n']}{groups}"


def per_layer() -> None:
    print("| model | layer | fused | M x K x N | MACs | compute cycles | cycles | utilization | DRAM bytes |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    for sample in ("lenet", "resblock"):
        report = run(ROOT / "samples" / f"{sample}.loom", CompileOptions())
        for layer in report["layers"]:
            print(f"| {sample} | {layer['name']} | {'+'.join(layer['fused'])} | {shape_of(layer)} | {layer['macs']} "
                  f"| {layer['compute_cycles']} | {layer['cycles']} | {100 * layer['utilization']:.1f}% "
                  f"| {layer['dram_bytes']} |")
        host = ", ".join(h["op"] for h in report["host_ops"])
        print(f"| {sample} | **total** | host: {host} | | {report['macs']} | {report['compute_cycles']} "
              f"| {report['cycles']} | {100 * report['utilization']:.1f}% | {report['dram_bytes']} |")
    print()


def draco() -> None:
    models = [("lenet", ROOT / "samples/lenet.loom"), ("resblock", ROOT / "samples/resblock.loom"),
              ("mobile", MOBILE_BLOCK)]
    rows: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory(prefix="loom-draco-") as tmp:
        for dataflow in ("ws", "os", "is"):
            description = Path(tmp) / f"{dataflow}.toml"
            description.write_text(target_toml(64, 64, dataflow))
            for name, source in models:
                report = run(source, CompileOptions(target_config=str(description)))
                for layer in report["layers"]:
                    rows.setdefault((name, layer["name"]), {"layer": layer})[dataflow] = layer
    print("| model | layer | M x K x N | ws utilization | os utilization | is utilization | best compute cycles |")
    print("|---|---|---|---:|---:|---:|---:|")
    for (model, name), entry in rows.items():
        utils = " | ".join(f"{100 * entry[d]['utilization']:.2f}%" for d in ("ws", "os", "is"))
        best = min(entry[d]["compute_cycles"] for d in ("ws", "os", "is"))
        print(f"| {model} | {name} | {shape_of(entry['layer'])} | {utils} | {best} |")
    print()


def main() -> int:
    per_layer()
    draco()
    return 0


if __name__ == "__main__":
    sys.exit(main())
