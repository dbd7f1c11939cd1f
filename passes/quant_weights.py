"""Weight quantizers: round-to-nearest int8 (per tensor or per output
channel, symmetric) and group-wise int4 (asymmetric, one scale and zero
point per group of consecutive input channels of each output channel).

A range is either the min/max of the weights it covers (`minmax`) or that
range shrunk by the factor, from a grid, whose round trip has the least
squared error (`mse`); int4 ranges may also be shrunk by factors chosen
elsewhere (activation-aware clipping, see quant_awq.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dialects.quant import UniformQuantAttr, dequantize_values, value_range

WEIGHT_METHODS = ("minmax", "mse")
CLIP_GRID = np.linspace(1.0, 0.5, 21)


@dataclass
class QuantizedWeight:
    """Integer weights and the `#quant.uniform` params that read them back."""

    values: np.ndarray  # int64, in the value range of `bits`
    quant_type: UniformQuantAttr
    clip_rate: float  # fraction of weights that saturated

    def dequantized(self) -> np.ndarray:
        """The float32 weights the quantized model computes with."""
        return dequantize_values(self.values, self.quant_type)

    @property
    def bits(self) -> int:
        return self.quant_type.bits.data

    def transposed(self) -> QuantizedWeight:
        """The same quantization of the transposed (2-D) weights."""
        t = self.quant_type
        block = t.block_sizes()[::-1]
        quant_type = UniformQuantAttr.get(t.scales().T, t.zero_points().T, self.bits, block)
        return QuantizedWeight(self.values.T.copy(), quant_type, self.clip_rate)


def _clip_rate(w: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    return float(np.mean((w < lo) | (w > hi)))


# --------------------------------------------------------------------------
# int8, symmetric
# --------------------------------------------------------------------------


def _symmetric_round_trip(w: np.ndarray, bound: np.ndarray, qmax: int) -> np.ndarray:
    scale = np.where(bound > 0, bound / qmax, 1.0)
    return np.clip(np.rint(w / scale), -qmax, qmax) * scale


def quantize_symmetric(
    w: np.ndarray, axis: int | None, method: str = "minmax", bits: int = 8, min_bound: np.ndarray | float = 0.0
) -> QuantizedWeight:
    """Weights in [-(2^(bits-1) - 1), 2^(bits-1) - 1] with zero point 0 and one
    scale for the tensor (axis None) or per index of `axis`. The range of
    each scale covers at least `min_bound` (per index of `axis`, or one value)."""
    qmax = value_range(bits)[1]
    w = np.asarray(w, np.float64)
    reduced = tuple(d for d in range(w.ndim) if d != axis) if axis is not None else None
    bound = np.max(np.abs(w), axis=reduced, keepdims=axis is not None)
    if method == "mse":
        errors = np.stack([
            np.sum(np.square(_symmetric_round_trip(w, bound * r, qmax) - w), axis=reduced, keepdims=axis is not None)
            for r in CLIP_GRID
        ])
        bound = bound * CLIP_GRID[np.argmin(errors, axis=0)]
    bound = np.maximum(bound, np.reshape(min_bound, np.shape(bound)) if np.ndim(min_bound) else min_bound)
    scale = np.where(bound > 0, bound / qmax, 1.0).astype(np.float32)
    values = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int64)
    block = [] if axis is None else [1 if d == axis else size for d, size in enumerate(w.shape)]
    quant_type = UniformQuantAttr.get(scale, 0, bits, block)
    return QuantizedWeight(values, quant_type, _clip_rate(np.abs(w), 0, bound * (1 + 0.5 / qmax)))


# --------------------------------------------------------------------------
# int4, group-wise asymmetric
# --------------------------------------------------------------------------


def _grouped(w2d: np.ndarray, group: int) -> np.ndarray:
    """[K, N] -> [G, group, N], the last group padded with NaN."""
    k, n = w2d.shape
    groups = math.ceil(k / group)
    padded = np.full((groups * group, n), np.nan)
    padded[:k] = w2d
    return padded.reshape(groups, group, n)


def quantize_groups(w2d: np.ndarray, group: int, bits: int = 4, clip: np.ndarray | float = 1.0) -> QuantizedWeight:
    """[K, N] weights in groups of `group` rows per column, each with its own
    scale and zero point over its [min, max] (including 0) shrunk by `clip`
    (a factor, or one per group and column, [G, N])."""
    qmin, qmax = value_range(bits)
    w2d = np.asarray(w2d, np.float64)
    grouped = _grouped(w2d, group)
    lo = np.minimum(np.nanmin(grouped, axis=1), 0.0) * clip
    hi = np.maximum(np.nanmax(grouped, axis=1), 0.0) * clip
    scale = np.where(hi > lo, (hi - lo) / (qmax - qmin), 1.0).astype(np.float32)
    zero_point = np.clip(np.rint(qmin - lo / scale), qmin, qmax).astype(np.int64)
    quant_type = UniformQuantAttr.get(scale, zero_point, bits, [group, 1])
    full_scale, full_zero_point = quant_type.expanded(w2d.shape)
    values = np.clip(np.rint(w2d / full_scale) + full_zero_point, qmin, qmax).astype(np.int64)
    low = (qmin - full_zero_point - 0.5) * full_scale
    high = (qmax - full_zero_point + 0.5) * full_scale
    return QuantizedWeight(values, quant_type, _clip_rate(w2d, low, high))


def group_errors(x_rows: np.ndarray | None, w2d: np.ndarray, approx: np.ndarray, group: int) -> np.ndarray:
    """Squared error per (group, column) of `approx` for `w2d`: of the weights
    themselves (x_rows None), or of each group's share of the outputs x_rows @ w."""
    diff = _grouped(np.asarray(w2d, np.float64) - approx, group)
    diff = np.nan_to_num(diff)
    if x_rows is None:
        return np.sum(np.square(diff), axis=1)
    rows = _grouped(np.asarray(x_rows, np.float64).T, group)  # [G, group, R]
    shares = np.einsum("gkr,gkn->grn", np.nan_to_num(rows), diff)
    return np.sum(np.square(shares), axis=1)


def search_group_clip(w2d: np.ndarray, group: int, x_rows: np.ndarray | None = None, bits: int = 4) -> QuantizedWeight:
    """quantize_groups with, for every group and column, the clip factor from
    CLIP_GRID that minimises `group_errors`."""
    errors = np.stack([
        group_errors(x_rows, w2d, quantize_groups(w2d, group, bits, r).dequantized(), group)
        for r in CLIP_GRID
    ])
    return quantize_groups(w2d, group, bits, CLIP_GRID[np.argmin(errors, axis=0)])
