"""Calibration for post-training quantization.

Calibration runs the reference interpreter over a set of sample inputs and
keeps the values of the tensors the quantizer needs to see (layer inputs
and outputs). From those it chooses the real range each activation tensor
is quantized over, by one of three rules:

- `minmax`: the smallest and largest value seen; nothing is clipped, but a
  single outlier stretches the step for every other value;
- `percentile`: the `p`-th and `(100 - p)`-th percentiles, clipping the rare
  extremes;
- `mse`: the range, among the min/max range shrunk by a grid of factors,
  whose quantize-dequantize round trip has the least squared error on the
  samples (clipping error traded against rounding error).

The range always includes 0, so zero (ReLU outputs, padding) is exact.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from xdsl.dialects import func
from xdsl.ir import SSAValue

from compiler.artifact import ModelSignature
from compiler.diagnostics import LoomError
from compiler.interpreter import evaluate, to_compute, to_storage
from compiler.model import signature_of
from dialects.quant import value_range

RANGE_METHODS = ("minmax", "percentile", "mse")
# Values of one tensor the range search looks at; larger sets are subsampled.
MAX_SEARCH_VALUES = 200_000
MSE_GRID = np.geomspace(1.0, 0.01, 100)  # shrink factors of the min/max range

Sample = dict[str, np.ndarray]


# --------------------------------------------------------------------------
# Calibration data
# --------------------------------------------------------------------------


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise LoomError(f"calibration file '{path}' does not exist")
    if not zipfile.is_zipfile(path):
        raise LoomError(f"calibration file '{path}' is not an .npz archive (write one with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise LoomError(f"cannot read calibration file '{path}': {e}") from None


def calibration_samples(arrays: Mapping[str, np.ndarray], signature: ModelSignature, origin: str) -> list[Sample]:
    """Split arrays holding a leading sample dim into one input dict per sample.

    An input declared with shape [1, ...] also accepts samples without that
    unit dim, so a data set of shape [S, ...] can be used as it is."""
    missing = [spec.name for spec in signature.inputs if spec.name not in arrays]
    if missing:
        have = ", ".join(sorted(arrays)) or "nothing"
        raise LoomError(f"{origin} has no array for input(s) {', '.join(missing)} (it holds: {have})")
    columns: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        array = np.asarray(arrays[spec.name])
        shape = tuple(array.shape[1:])
        unbatched = spec.shape[:1] == (1,) and shape == spec.shape[1:]
        if array.ndim == 0 or (shape != spec.shape and not unbatched):
            accepted = f"[S, {', '.join(map(str, spec.shape))}]"
            if spec.shape[:1] == (1,):
                accepted += f" or [S, {', '.join(map(str, spec.shape[1:]))}]"
            raise LoomError(
                f"{origin}: array '{spec.name}' has shape {list(array.shape)}, but input "
                f"{spec.name}: {spec.describe()} needs {accepted} (S samples)"
            )
        if array.dtype.kind not in "fiu":
            raise LoomError(f"{origin}: array '{spec.name}' holds {array.dtype} values, not numbers")
        if len(array) == 0:
            raise LoomError(f"{origin}: array '{spec.name}' holds no samples")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            bad = int(np.argmax(~np.isfinite(array.reshape(len(array), -1)).all(axis=1)))
            raise LoomError(f"{origin}: array '{spec.name}' holds NaN or infinite values (sample {bad})")
        columns[spec.name] = array.reshape(len(array), *spec.shape).astype(spec.numpy_dtype)
    counts = {name: len(a) for name, a in columns.items()}
    if len(set(counts.values())) > 1:
        raise LoomError(f"{origin}: inputs have different sample counts: {counts}")
    count = next(iter(counts.values()))
    return [{name: a[i] for name, a in columns.items()} for i in range(count)]


def load_calibration(path: str | Path, signature: ModelSignature) -> list[Sample]:
    """The samples of a calibration .npz file, checked against `signature`."""
    return calibration_samples(_read_npz(Path(path)), signature, f"calibration file '{path}'")


# --------------------------------------------------------------------------
# Running the model
# --------------------------------------------------------------------------


def trace(
    f: func.FuncOp,
    sample: Sample,
    keep: Iterable[SSAValue],
    overrides: Mapping[SSAValue, np.ndarray] | None = None,
) -> dict[SSAValue, np.ndarray]:
    """Run model `f` on one sample in the reference interpreter and return
    the values of `keep` and of the returned values. `overrides` replaces
    the values of some ops' results (a weight with its quantized version)."""
    overrides = overrides or {}
    wanted = set(keep)
    values: dict[SSAValue, np.ndarray] = {}
    names = [spec.name for spec in signature_of(f).inputs]
    for name, arg in zip(names, f.body.block.args):
        values[arg] = to_storage(to_compute(sample[name]), arg.type.element_type)
    for op in f.body.block.ops:
        if isinstance(op, func.ReturnOp):
            wanted.update(op.arguments)
            break
        result = op.results[0]
        if result in overrides:
            values[result] = overrides[result]
        else:
            values[result] = evaluate(op, [values[v] for v in op.operands])
    return {v: values[v] for v in wanted if v in values}


def collect(
    f: func.FuncOp,
    samples: list[Sample],
    keep: Iterable[SSAValue],
    overrides: Mapping[SSAValue, np.ndarray] | None = None,
) -> dict[SSAValue, np.ndarray]:
    """`trace` over every sample, each value stacked along a new leading dim."""
    keep = list(keep)
    runs = [trace(f, sample, keep, overrides) for sample in samples]
    return {v: np.stack([run[v] for run in runs]) for v in runs[0]}


def model_outputs(f: func.FuncOp) -> list[SSAValue]:
    terminator = f.body.block.last_op
    assert isinstance(terminator, func.ReturnOp)
    return list(terminator.arguments)


# --------------------------------------------------------------------------
# Ranges and quantization parameters
# --------------------------------------------------------------------------


def search_subset(values: np.ndarray) -> np.ndarray:
    """At most MAX_SEARCH_VALUES of `values`, evenly strided (deterministic)."""
    flat = np.asarray(values, np.float32).reshape(-1)
    step = max(1, flat.size // MAX_SEARCH_VALUES)
    return flat[::step]


@dataclass(frozen=True)
class AffineParams:
    """The per-tensor quantization of an activation: real = (q - zero_point) * scale."""

    scale: float
    zero_point: int
    bits: int = 8

    @staticmethod
    def from_range(lo: float, hi: float, symmetric: bool, bits: int = 8) -> AffineParams:
        qmin, qmax = value_range(bits)
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if symmetric:
            bound = max(-lo, hi)
            return AffineParams(float(np.float32(bound / qmax)) if bound > 0 else 1.0, 0, bits)
        if hi - lo <= 0:
            return AffineParams(1.0, 0, bits)
        scale = float(np.float32((hi - lo) / (qmax - qmin)))
        zero_point = int(np.clip(np.rint(qmin - lo / scale), qmin, qmax))
        return AffineParams(scale, zero_point, bits)

    def round_trip(self, values: np.ndarray) -> np.ndarray:
        """Quantize then dequantize (in float64, for range search and errors)."""
        qmin, qmax = value_range(self.bits)
        q = np.clip(np.rint(values / self.scale) + self.zero_point, qmin, qmax)
        return (q - self.zero_point) * self.scale

    def clip_rate(self, values: np.ndarray) -> float:
        """The fraction of `values` that saturate (lie beyond the range by more than half a step)."""
        qmin, qmax = value_range(self.bits)
        lo = (qmin - self.zero_point - 0.5) * self.scale
        hi = (qmax - self.zero_point + 0.5) * self.scale
        flat = np.asarray(values, np.float64).reshape(-1)
        return float(np.mean((flat < lo) | (flat > hi))) if flat.size else 0.0


def choose_range(values: np.ndarray, method: str, percentile: float, symmetric: bool) -> AffineParams:
    """The quantization params of an activation tensor from its calibration values."""
    subset = search_subset(values).astype(np.float64)
    if method == "minmax":
        return AffineParams.from_range(subset.min(), subset.max(), symmetric)
    if method == "percentile":
        lo, hi = np.percentile(subset, [100.0 - percentile, percentile])
        return AffineParams.from_range(lo, hi, symmetric)
    if method == "mse":
        lo, hi = subset.min(), subset.max()
        candidates = [AffineParams.from_range(lo * r, hi * r, symmetric) for r in MSE_GRID]
        errors = [np.mean(np.square(c.round_trip(subset) - subset)) for c in candidates]
        return candidates[int(np.argmin(errors))]
    raise LoomError(f"unknown range method '{method}' (choose one of {', '.join(RANGE_METHODS)})")


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; inf when they are equal."""
    reference = np.asarray(reference, np.float64)
    noise = np.sum(np.square(reference - np.asarray(approximation, np.float64)))
    signal = np.sum(np.square(reference))
    if noise == 0:
        return float("inf")
    if signal == 0:
        return float("-inf")
    return float(10 * np.log10(signal / noise))
