"""Activation-aware scaling for weight-only int4 quantization, in the spirit
of AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration").

Weights that meet large activations matter most to the output, and
rounding error on a weight shrinks relative to the weight when the weight
is scaled up before quantization. So for a linear layer y = x W, each input
channel c gets a factor f[c] > 1 where its activations are large:

    y = (x / f) (f W)  ~=  (x / f) Q(f W)

f = mean|x_c|^alpha, normalised around 1, with alpha picked from a grid by
the output error on the calibration activations (alpha = 0, no scaling, is
in the grid, so the search can only improve on plain rounding there). Then
each group's clipping range is shrunk by the factor that minimises that
group's share of the output error. No gradients are involved: only the
calibration activations and the weights.

A convolution is handled as the matmul of its im2col patches with its
flattened weights; its input channels then span several rows of the weight
matrix, which all share the channel's factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from passes.quant_weights import QuantizedWeight, quantize_groups, search_group_clip

ALPHA_GRID = np.linspace(0.0, 1.0, 21)
MAX_ROWS = 4096  # calibration rows the search looks at, evenly strided


@dataclass
class AwqResult:
    weight: QuantizedWeight  # quantization of the scaled weights f[c] * W
    channel_scale: np.ndarray  # f, one per input channel
    alpha: float


def output_error(x_rows: np.ndarray, w2d: np.ndarray, approx: np.ndarray) -> float:
    return float(np.mean(np.square(x_rows @ (w2d - approx))))


def awq_quantize(x_rows: np.ndarray, w2d: np.ndarray, channel_of: np.ndarray, group: int, bits: int = 4) -> AwqResult:
    """Quantize [K, N] weights `w2d` for inputs `x_rows` ([R, K]), whose column
    k belongs to input channel `channel_of[k]`."""
    x = np.asarray(x_rows, np.float64)[:: max(1, len(x_rows) // MAX_ROWS)]
    w2d = np.asarray(w2d, np.float64)
    channels = int(channel_of.max()) + 1
    per_column = np.mean(np.abs(x), axis=0)
    magnitude = np.bincount(channel_of, per_column, channels) / np.bincount(channel_of, minlength=channels)
    magnitude = np.maximum(magnitude, max(magnitude.max(), 1e-12) * 1e-6)

    best: tuple[float, float, np.ndarray] | None = None
    for alpha in ALPHA_GRID:
        f = magnitude**alpha
        f = f / np.sqrt(f.max() * f.min())
        rows = f[channel_of][:, None]
        error = output_error(x / rows.T, w2d * rows, quantize_groups(w2d * rows, group, bits).dequantized())
        if best is None or error < best[0]:
            best = (error, float(alpha), f)
    assert best is not None
    _, alpha, f = best
    f = f.astype(np.float32)
    rows = f[channel_of].astype(np.float64)[:, None]
    weight = search_group_clip(w2d * rows, group, x / rows.T, bits)
    return AwqResult(weight, f, alpha)
