"""Quantized models on the systolic target: accuracy against the CPU, cycles
and DRAM traffic per scheme.

    .venv/bin/python benchmarks/systolic_quant.py

Table 1 trains the digits classifier (`samples/digits/train_digits.py`),
compiles it for the CPU and for the systolic target (sample description,
16x16 ws) under every quantization scheme, runs the whole test set through
both, and prints each target's accuracy, how far the systolic logits are
from the CPU's, and the cycles, DRAM bytes and host ops of one inference.

Table 2 is lenet per layer in f32, int8 and int8-per-channel, calibrated on
eight random images; compute cycles and utilization do not depend on the
data type, so they are printed once.

The "Quantized models" tables of docs/targets/systolic.md come from this script.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

import compiler
from backends.base import CompileOptions
from compiler.artifact import random_inputs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "samples" / "digits"))
from train_digits import main as write_digits

DIGITS_SCHEMES = [None, "int8", "int8-per-channel", "w4-group32", "w4-group64", "w4-group128", "w4-awq", "mixed"]
LENET_SCHEMES = [None, "int8", "int8-per-channel"]


def host_ops(report: dict) -> str:
    counts = Counter(op["op"] for op in report["host_ops"])
    return ", ".join(op if n == 1 else f"{op} x{n}" for op, n in counts.items()) or "-"


def logits_of(artifact, x: np.ndarray) -> np.ndarray:
    return np.stack([artifact.run(x=row[None])["logits"][0] for row in x])


def digits_table(work: Path) -> None:
    write_digits(work)
    test = np.load(work / "digits_test.npz")
    print("| scheme | CPU accuracy | systolic accuracy | systolic logits vs CPU | cycles | DRAM bytes | host ops |")
    print("|---|---:|---:|---|---:|---:|---|")
    for scheme in DIGITS_SCHEMES:
        options = CompileOptions(quantize=scheme, calibration=str(work / "digits_calibration.npz"))
        on = {target: compiler.compile(ROOT / "samples/digits/digits_mlp.loom", target=target,
                                       weights=work / "digits_mlp.npz", options=options)
              for target in ("cpu", "systolic")}
        logits = {target: logits_of(artifact, test["x"]) for target, artifact in on.items()}
        accuracy = {target: np.mean(np.argmax(values, axis=1) == test["y"]) for target, values in logits.items()}
        difference = float(np.max(np.abs(logits["systolic"] - logits["cpu"])))
        agreement = "identical" if difference == 0 else f"max diff {difference:.1e}"
        on["systolic"].run(x=test["x"][:1])
        report = on["systolic"].report
        print(f"| {scheme or 'fp32'} | {accuracy['cpu']:.2%} | {accuracy['systolic']:.2%} | {agreement} | "
              f"{report['cycles']} | {report['dram_bytes']} | {host_ops(report)} |", flush=True)


def lenet_table(work: Path) -> None:
    calibration = work / "lenet_calibration.npz"
    np.savez(calibration, x=np.random.default_rng(0).standard_normal((8, 1, 1, 28, 28)).astype("float32"))
    reports = {}
    for scheme in LENET_SCHEMES:
        artifact = compiler.compile(ROOT / "samples/lenet.loom", target="systolic",
                                    options=CompileOptions(quantize=scheme, calibration=str(calibration)))
        result = compiler.check(artifact, random_inputs(artifact.signature, 0))
        print(f"lenet {scheme or 'f32'}: max_abs_err {result.max_abs_err:.3g}")
        reports[scheme] = artifact.report
    names = [name or "f32" for name in LENET_SCHEMES]
    print("\n| layer | M x K x N | compute cycles | utilization | "
          + " | ".join(f"cycles {name}" for name in names) + " | "
          + " | ".join(f"DRAM bytes {name}" for name in names[:2]) + " |")
    print("|---|---|---:|---:|" + "---:|" * (len(names) + 2))
    layer_rows = zip(*(reports[scheme]["layers"] for scheme in LENET_SCHEMES))
    for layers in layer_rows:
        first = layers[0]
        print(f"| {first['name']} | {first['m']}x{first['k']}x{first['n']} | {first['compute_cycles']} | "
              f"{first['utilization']:.1%} | " + " | ".join(str(layer["cycles"]) for layer in layers) + " | "
              + " | ".join(str(layer["dram_bytes"]) for layer in layers[:2]) + " |")
    totals = [reports[scheme] for scheme in LENET_SCHEMES]
    print(f"| **total** | | {totals[0]['compute_cycles']} | {totals[0]['utilization']:.1%} | "
          + " | ".join(str(report["cycles"]) for report in totals) + " | "
          + " | ".join(str(report["dram_bytes"]) for report in totals[:2]) + " |")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        digits_table(Path(tmp))
        print()
        lenet_table(Path(tmp))


if __name__ == "__main__":
    main()
