"""Models and compile helpers shared by the systolic tests."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

import compiler
from backends.base import CompileOptions

ROOT = Path(__file__).resolve().parents[2]

# Every feature of the lowering in one int8 model: strided, padded, biased
# convolution with relu; a dilated depthwise convolution; a matmul with
# bias and relu; two images.
INT8_SOURCE = """
model q {
  input x: i8[2, 3, 12, 12]
  input y: i8[5, 200]
  param w: i8[8, 3, 3, 3]
  param b: i8[8]
  param dw: i8[8, 1, 3, 3]
  param fw: i8[200, 17]
  param fb: i8[17]
  h = relu(conv2d(x, w, b, padding=1, stride=2))
  d = conv2d(h, dw, groups=8, padding=1, dilation=2)
  f = relu(y @ fw + fb)
  output d, f
}
"""


def int8_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"w": (8, 3, 3, 3), "b": (8,), "dw": (8, 1, 3, 3), "fw": (200, 17), "fb": (17,)}
    return {name: rng.integers(-128, 128, shape).astype(np.int8) for name, shape in shapes.items()}


def int8_inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.integers(-128, 128, (2, 3, 12, 12)).astype(np.int8),
            "y": rng.integers(-128, 128, (5, 200)).astype(np.int8)}


def options(array: str = "", dataflow: str = "", target_config: str | None = None) -> CompileOptions:
    extra = {k: v for k, v in (("array", array), ("dataflow", dataflow)) if v}
    return CompileOptions(extra=extra, target_config=target_config)


@functools.cache
def compiled_sample(sample: str, array: str = "16x16", dataflow: str = "ws"):
    return compiler.compile(ROOT / "samples" / sample, target="systolic", options=options(array, dataflow))


@functools.cache
def compiled_int8(array: str, dataflow: str):
    return compiler.compile(INT8_SOURCE, target="systolic", weights=int8_weights(), options=options(array, dataflow))


def fold_cycles(dataflow: str, rows: int, cols: int, m: int, k: int, n: int, groups: int = 1) -> int:
    """SCALE-Sim's compute cycles of one layer (plus one: Loom counts cycles, not the last index)."""
    ceil = lambda a, b: -(-a // b)  # noqa: E731
    if dataflow == "ws":
        return groups * ceil(k, rows) * ceil(n, cols) * (2 * rows + cols + m - 2)
    if dataflow == "is":
        return groups * ceil(k, rows) * ceil(m, cols) * (2 * rows + cols + n - 2)
    return groups * ceil(m, rows) * ceil(n, cols) * (rows + cols + k - 2)


def small_target(tmp_path: Path, ifmap: int, filter_: int, ofmap: int, bandwidth: float = 16,
                 array: tuple[int, int] = (16, 16), dataflow: str = "ws") -> str:
    """A hardware description file with the given scratchpad sizes and DRAM bandwidth."""
    path = tmp_path / f"array-{ifmap}-{filter_}-{ofmap}-{bandwidth}-{dataflow}.toml"
    path.write_text(f"""name = "test-array"
clock_mhz = 1000
[[compute]]
kind = "systolic-array"
array = [{array[0]}, {array[1]}]
dtypes = ["i8"]
[[memory]]
name = "sram"
capacity_bytes = {ifmap + filter_ + ofmap}
bandwidth_bytes_per_cycle = 64
latency_cycles = 1
[[memory]]
name = "DRAM"
capacity_bytes = "1GiB"
bandwidth_bytes_per_cycle = {bandwidth}
latency_cycles = 100
[params]
dataflow = "{dataflow}"
[params.sram]
ifmap_bytes = {ifmap}
filter_bytes = {filter_}
ofmap_bytes = {ofmap}
""")
    return str(path)
