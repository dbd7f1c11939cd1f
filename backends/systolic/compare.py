"""Loom against SCALE-Sim, layer by layer, on the same array, dataflow and layer.

Loom's side compiles one int8 model holding every layer of a configuration
(a matmul or an unbiased convolution each), runs it on the simulator and
checks it against the reference interpreter; SCALE-Sim's side runs the same
layers in one invocation (see `scalesim.py`). Both count compute cycles the
same way, fold by fold, except that SCALE-Sim's "Total Cycles" is the index
of the last busy cycle rather than the number of cycles, so Loom's count is
SCALE-Sim's plus one.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backends.base import CompileOptions
from backends.systolic import scalesim
from backends.systolic.scalesim import ConvLayer

SRAM_KIB = 1024  # per scratchpad, in both simulators: every layer below fits


@dataclass(frozen=True)
class Shape:
    """A GEMM (M x N x K) or a convolution (input C x H x W, N filters of kh x kw)."""

    name: str
    m: int = 0
    n: int = 0
    k: int = 0
    channels: int = 0
    height: int = 0
    width: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0

    @property
    def is_conv(self) -> bool:
        return self.kernel > 0

    def scalesim_layer(self) -> ConvLayer:
        if not self.is_conv:
            return ConvLayer.gemm(self.name, self.m, self.n, self.k)
        pad = 2 * self.padding
        return ConvLayer(self.name, self.height + pad, self.width + pad, self.kernel, self.kernel,
                         self.channels, self.n, self.stride)

    def describe(self) -> str:
        if not self.is_conv:
            return f"gemm {self.m}x{self.n}x{self.k}"
        return (f"conv {self.channels}x{self.height}x{self.width} -> {self.n}, {self.kernel}x{self.kernel}"
                f"/{self.stride} pad {self.padding}")


@dataclass(frozen=True)
class Comparison:
    shape: Shape
    array: str
    dataflow: str
    loom_compute_cycles: int
    loom_cycles: int
    loom_utilization: float
    scalesim_cycles: int
    scalesim_cycles_with_prefetch: int
    scalesim_utilization: float  # overall util, as a fraction
    max_abs_err: float

    @property
    def relative_difference(self) -> float:
        return (self.loom_compute_cycles - self.scalesim_cycles) / self.scalesim_cycles


def _model_source(shapes: list[Shape]) -> str:
    lines = ["model layers {"]
    body = []
    for i, s in enumerate(shapes):
        if s.is_conv:
            lines.append(f"  input x{i}: i8[1, {s.channels}, {s.height}, {s.width}]")
            lines.append(f"  param w{i}: i8[{s.n}, {s.channels}, {s.kernel}, {s.kernel}]")
            body.append(f"  {s.name} = conv2d(x{i}, w{i}, stride={s.stride}, padding={s.padding})")
        else:
            lines.append(f"  input x{i}: i8[{s.m}, {s.k}]")
            lines.append(f"  param w{i}: i8[{s.k}, {s.n}]")
            body.append(f"  {s.name} = x{i} @ w{i}")
    return "\n".join(lines + body + [f"  output {', '.join(s.name for s in shapes)}", "}"]) + "\n"


def target_toml(rows: int, cols: int, dataflow: str) -> str:
    size = SRAM_KIB * 1024
    return f"""name = "scalesim-{rows}x{cols}-{dataflow}"
clock_mhz = 1000

[[compute]]
kind = "systolic-array"
array = [{rows}, {cols}]
dtypes = ["i8"]

[[memory]]
name = "sram"
capacity_bytes = {3 * size}
bandwidth_bytes_per_cycle = {3 * max(rows, cols)}
latency_cycles = 1
banks = 3

[[memory]]
name = "DRAM"
capacity_bytes = "4GiB"
bandwidth_bytes_per_cycle = 16
latency_cycles = 100

[params]
dataflow = "{dataflow}"

[params.sram]
ifmap_bytes = {size}
filter_bytes = {size}
ofmap_bytes = {size}
"""


def run_loom(shapes: list[Shape], rows: int, cols: int, dataflow: str, seed: int = 0):
    """Compile and run the layers on Loom's simulator, checked against the interpreter."""
    import compiler
    from compiler.artifact import random_inputs

    rng = np.random.default_rng(seed)
    weights = {}
    for i, s in enumerate(shapes):
        shape = (s.n, s.channels, s.kernel, s.kernel) if s.is_conv else (s.k, s.n)
        weights[f"w{i}"] = rng.integers(-128, 128, shape).astype(np.int8)
    with tempfile.TemporaryDirectory(prefix="loom-compare-") as tmp:
        description = Path(tmp) / "array.toml"
        description.write_text(target_toml(rows, cols, dataflow))
        options = CompileOptions(target_config=str(description))
        artifact = compiler.compile(_model_source(shapes), target="systolic", weights=weights, options=options)
    result = compiler.check(artifact, random_inputs(artifact.signature, seed))
    layers = {layer["name"]: layer for layer in artifact.report["layers"]}
    return layers, result.max_abs_err


def compare(shapes: list[Shape], rows: int, cols: int, dataflow: str, cached: bool = True) -> list[Comparison]:
    loom, error = run_loom(shapes, rows, cols, dataflow)
    reference = scalesim.run([s.scalesim_layer() for s in shapes], rows, cols, dataflow, SRAM_KIB, cached)
    out = []
    for shape, ss in zip(shapes, reference):
        layer = loom[shape.name]
        out.append(Comparison(shape, f"{rows}x{cols}", dataflow, layer["compute_cycles"], layer["cycles"],
                              layer["utilization"], ss.total_cycles, ss.total_cycles_with_prefetch,
                              ss.overall_util / 100, error))
    return out


# The validation set: per array size, GEMMs and convolutions, most of them
# with dimensions that are not multiples of the array.
VALIDATION_SET: dict[tuple[int, int], list[Shape]] = {
    (8, 8): [
        Shape("g_8a", m=37, n=20, k=50),
        Shape("g_8b", m=64, n=64, k=64),
        Shape("g_8c", m=1, n=100, k=30),
        Shape("c_8a", channels=3, height=16, width=16, kernel=3, n=10, padding=1),
        Shape("c_8b", channels=6, height=14, width=14, kernel=5, n=16),
    ],
    (16, 16): [
        Shape("g_16a", m=100, n=64, k=30),
        Shape("g_16b", m=17, n=33, k=129),
        Shape("g_16c", m=200, n=10, k=84),
        Shape("c_16a", channels=1, height=28, width=28, kernel=5, n=6, padding=2),
        Shape("c_16b", channels=16, height=16, width=16, kernel=3, n=16, padding=1),
        Shape("c_16c", channels=8, height=17, width=17, kernel=3, n=12, stride=2),
    ],
    (32, 32): [
        Shape("g_32a", m=129, n=70, k=96),
        Shape("g_32b", m=40, n=250, k=31),
        Shape("c_32a", channels=12, height=15, width=15, kernel=3, n=40, padding=1),
        Shape("c_32b", channels=32, height=9, width=9, kernel=1, n=48),
    ],
    (64, 64): [
        Shape("g_64a", m=300, n=100, k=150),
        Shape("g_64b", m=64, n=64, k=64),
        Shape("g_64c", m=10, n=130, k=70),
        Shape("c_64a", channels=3, height=32, width=32, kernel=3, n=64, padding=1),
        Shape("c_64b", channels=64, height=8, width=8, kernel=3, n=96, padding=1),
    ],
    (8, 32): [
        Shape("g_8x32", m=50, n=70, k=45),
        Shape("c_8x32", channels=5, height=12, width=12, kernel=3, n=33, stride=3),
    ],
}
