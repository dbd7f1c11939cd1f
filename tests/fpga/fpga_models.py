"""Models and compile helpers shared by the fpga tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

import compiler
from backends.base import CompileOptions

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def calibration(sample: str, tmp: Path) -> str:
    shape = {"mlp": (8, 1, 784), "lenet": (4, 1, 1, 28, 28)}[sample]
    path = tmp / f"{sample}_calibration.npz"
    np.savez(path, x=np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    return str(path)


def options(reuse_factor: int | None = None, quantize: str | None = None, calibration_file: str | None = None,
            **extra) -> CompileOptions:
    if reuse_factor is not None:
        extra["reuse_factor"] = reuse_factor
    return CompileOptions(quantize=quantize, calibration=calibration_file, extra=extra)


def compile_sample(sample: str, opts: CompileOptions):
    return compiler.compile(ROOT / "samples" / f"{sample}.loom", target="fpga", options=opts)
