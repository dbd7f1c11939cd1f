"""Train the digits classifier, compile it for the CPU in fp32 and under
every quantization scheme, and print test-set accuracy, output SQNR and
parameter sizes:

    python samples/digits/evaluate_digits.py

The numbers in docs/quantization.md come from this script.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

import compiler
from backends.base import CompileOptions
from compiler.mlir import parse_mlir
from passes.quantize import quant_report

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_digits import main as write_digits  # noqa: E402

SCHEMES = [None, "int8", "int8-per-channel", "w4-group32", "w4-group64", "w4-group128", "w4-awq", "mixed"]


def accuracy(artifact, x: np.ndarray, y: np.ndarray) -> float:
    predicted = [int(np.argmax(artifact.run(x=row[None])["logits"])) for row in x]
    return float(np.mean(np.array(predicted) == y))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_digits(out)
        test = np.load(out / "digits_test.npz")
        print(f"{'scheme':18} {'accuracy':>9} {'SQNR dB':>8} {'param bytes':>12} {'packed':>8}  layers")
        for scheme in SCHEMES:
            options = CompileOptions(quantize=scheme, calibration=str(out / "digits_calibration.npz"))
            artifact = compiler.compile(HERE / "digits_mlp.loom", target="cpu", weights=out / "digits_mlp.npz",
                                        options=options)
            score = accuracy(artifact, test["x"], test["y"])
            report = quant_report(parse_mlir(artifact.stages.nn)) if scheme else None
            if report is None:
                print(f"{'fp32':18} {score:9.2%} {'-':>8} {'-':>12} {'-':>8}")
                continue
            layers = ", ".join(f"{layer['layer']}: {layer['precision']}" for layer in report["layers"])
            print(f"{scheme:18} {score:9.2%} {report['output_sqnr_db']['logits']:8.1f} "
                  f"{report['param_bytes']:12d} {report['packed_param_bytes']:8d}  {layers}")


if __name__ == "__main__":
    main()
