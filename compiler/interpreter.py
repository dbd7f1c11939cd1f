"""The reference interpreter: numpy semantics for every nn op.

This is the oracle every target and every pass is compared against, so it is
written to be obviously right rather than fast: one small numpy kernel per op
class, vectorised but with no cleverness beyond that. Kernels live in
`KERNELS`, keyed by op class; a dialect that adds tensor-level ops registers
theirs with the `kernel` decorator.

Numeric model:

- Floating-point ops compute in float32 and round the result once to the
  result dtype (f16 through numpy's float16, bf16 through `round_to_bf16`).
- Integer ops compute in int64 and wrap to the result dtype like C. Wrapping
  is modular, so int64 intermediates give exactly the i8/i32 wrapped result
  for + - * and sums; integer `/` truncates toward zero.
- IEEE special values follow from the arithmetic (exp overflows to inf,
  sqrt of a negative is nan); they are results, not errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType, bf16, f16
from xdsl.ir import Attribute, Operation, SSAValue

from compiler.artifact import coerce_inputs
from compiler.diagnostics import InternalError, LoomError
from compiler.model import find_model, signature_of
from dialects import nn, quant

Kernel = Callable[[nn.NNOperation, list[np.ndarray]], np.ndarray]

KERNELS: dict[type[Operation], Kernel] = {}


def kernel(*op_classes: type[Operation]) -> Callable[[Kernel], Kernel]:
    """Register the decorated function as the kernel of `op_classes`."""

    def register(fn: Kernel) -> Kernel:
        for cls in op_classes:
            KERNELS[cls] = fn
        return fn

    return register


# --------------------------------------------------------------------------
# Storage <-> compute representations
# --------------------------------------------------------------------------


def _element_type(value: SSAValue) -> Attribute:
    t = value.type
    assert isinstance(t, TensorType)
    return t.element_type


def to_compute(array: np.ndarray) -> np.ndarray:
    """Widen a stored value to the type kernels compute in."""
    if np.issubdtype(array.dtype, np.floating):
        return np.asarray(array, dtype=np.float32)
    return np.asarray(array, dtype=np.int64)


def to_storage(array: np.ndarray, element_type: Attribute) -> np.ndarray:
    """Round (floats) or wrap (integers) a computed value to `element_type`."""
    if element_type == bf16:
        return nn.round_to_bf16(np.asarray(array, dtype=np.float32))
    if element_type == f16:
        return np.asarray(array, dtype=np.float32).astype(np.float16)
    return np.asarray(array).astype(nn.numpy_dtype(element_type))


# --------------------------------------------------------------------------
# Elementwise
# --------------------------------------------------------------------------


def truncating_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer division rounding toward zero, as in C."""
    if np.any(b == 0):
        raise LoomError("integer division by zero")
    quotient = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -quotient, quotient)


@kernel(nn.AddOp)
def _add(op, args):
    return args[0] + args[1]


@kernel(nn.SubOp)
def _sub(op, args):
    return args[0] - args[1]


@kernel(nn.MulOp)
def _mul(op, args):
    return args[0] * args[1]


@kernel(nn.DivOp)
def _div(op, args):
    a, b = args
    if a.dtype == np.int64:
        return truncating_divide(*np.broadcast_arrays(a, b))
    return a / b


@kernel(nn.NegOp)
def _neg(op, args):
    return -args[0]


@kernel(nn.ReluOp)
def _relu(op, args):
    return np.maximum(args[0], 0)


@kernel(nn.GeluOp)
def _gelu(op, args):
    x = args[0]
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


@kernel(nn.SigmoidOp)
def _sigmoid(op, args):
    # exp(-|x|) never overflows; the two branches are the same function.
    x = args[0]
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


@kernel(nn.TanhOp)
def _tanh(op, args):
    return np.tanh(args[0])


@kernel(nn.ExpOp)
def _exp(op, args):
    return np.exp(args[0])


@kernel(nn.SqrtOp)
def _sqrt(op, args):
    return np.sqrt(args[0])


@kernel(nn.TrilOp)
def _tril(op, args):
    x = args[0]
    p = op.params()
    rows, cols = x.shape[-2:]
    keep = np.arange(cols)[None, :] - np.arange(rows)[:, None] <= p["k"]
    return np.where(keep, x, np.asarray(p["fill"]).astype(x.dtype))


# --------------------------------------------------------------------------
# Linear algebra, normalisation
# --------------------------------------------------------------------------


@kernel(nn.MatmulOp)
def _matmul(op, args):
    return np.matmul(args[0], args[1])


@kernel(nn.SoftmaxOp)
def _softmax(op, args):
    axis = op.params()["axis"]
    shifted = args[0] - np.max(args[0], axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def _normalize(x: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    return (x - mean) / np.sqrt(var + eps)


@kernel(nn.LayerNormOp)
def _layernorm(op, args):
    x, gamma, beta = args
    p = op.params()
    axes = tuple(range(p["axis"], x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    return _normalize(x, mean, var, p["eps"]) * gamma + beta


@kernel(nn.BatchNormOp)
def _batchnorm(op, args):
    x = args[0]
    # Per-channel vectors become (C, 1, ..., 1) to broadcast over dim 1.
    mean, var, gamma, beta = (v.reshape(-1, *[1] * (x.ndim - 2)) for v in args[1:])
    return _normalize(x, mean, var, op.params()["eps"]) * gamma + beta


# --------------------------------------------------------------------------
# Convolution and pooling
# --------------------------------------------------------------------------


def windows(
    x: np.ndarray,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    pad_value: float | int,
) -> np.ndarray:
    """All 2-D windows of an NCHW tensor as a view of shape (N, C, OH, OW, KH, KW)."""
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    padded = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel_size)]
    view = sliding_window_view(padded, span, axis=(2, 3))
    return view[:, :, ::sh, ::sw, ::dh, ::dw]


@kernel(nn.Conv2dOp)
def _conv2d(op, args):
    x, w = args[0], args[1]
    p = op.params()
    groups = p["groups"]
    n, c = x.shape[:2]
    o, i, kh, kw = w.shape
    patches = windows(x, (kh, kw), p["stride"], p["padding"], p["dilation"], 0)
    oh, ow = patches.shape[2:4]
    patches = patches.reshape(n, groups, c // groups, oh, ow, kh, kw)
    grouped_w = w.reshape(groups, o // groups, i, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", patches, grouped_w, optimize=True)
    out = out.reshape(n, o, oh, ow)
    if len(args) == 3:
        out = out + args[2].reshape(1, o, 1, 1)
    return out


def _pool_windows(op: nn.NNOperation, x: np.ndarray, pad_value: float | int) -> np.ndarray:
    p = op.params()
    return windows(x, p["kernel"], p["stride"], p["padding"], (1, 1), pad_value)


@kernel(nn.MaxPool2dOp)
def _maxpool2d(op, args):
    x = args[0]
    lowest = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    return np.max(_pool_windows(op, x, lowest), axis=(4, 5))


@kernel(nn.AvgPool2dOp)
def _avgpool2d(op, args):
    x = args[0]
    kh, kw = op.params()["kernel"]
    total = np.sum(_pool_windows(op, x, 0), axis=(4, 5))
    if x.dtype == np.int64:
        return truncating_divide(total, np.full_like(total, kh * kw))
    return total / (kh * kw)


@kernel(nn.GlobalAvgPoolOp)
def _global_avgpool(op, args):
    return np.mean(args[0], axis=(2, 3), keepdims=True)


# --------------------------------------------------------------------------
# Data movement and reductions
# --------------------------------------------------------------------------


@kernel(nn.ReshapeOp)
def _reshape(op, args):
    return args[0].reshape(op.params()["shape"])


@kernel(nn.TransposeOp)
def _transpose(op, args):
    return np.transpose(args[0], op.params()["perm"])


@kernel(nn.SliceOp)
def _slice(op, args):
    p = op.params()
    return args[0][tuple(slice(*bounds) for bounds in zip(p["starts"], p["ends"], p["steps"]))]


@kernel(nn.ConcatOp)
def _concat(op, args):
    return np.concatenate(args, axis=op.params()["axis"])


def _reduction(reduce: Callable[..., np.ndarray]) -> Kernel:
    def run(op, args):
        p = op.params()
        return reduce(args[0], axis=tuple(p["axes"]), keepdims=p["keepdims"])

    return run


kernel(nn.ReduceSumOp)(_reduction(np.sum))
kernel(nn.ReduceMeanOp)(_reduction(np.mean))
kernel(nn.ReduceMaxOp)(_reduction(np.max))


# --------------------------------------------------------------------------
# Quantized ops: the integer semantics defined in dialects/quant.py
# --------------------------------------------------------------------------


@kernel(quant.QuantizeOp)
def _quantize(op, args):
    return quant.quantize_values(args[0], op.params()["quant_type"])


@kernel(quant.DequantizeOp)
def _dequantize(op, args):
    return quant.dequantize_values(args[0], op.params()["quant_type"])


@kernel(quant.MatmulOp)
def _quant_matmul(op, args):
    p = op.params()
    return np.matmul(args[0] - p["lhs_zero_point"], args[1] - p["rhs_zero_point"])


@kernel(quant.Conv2dOp)
def _quant_conv2d(op, args):
    # Padding the zero-point-shifted input with 0 is padding the input with its zero point.
    p = op.params()
    x, w, *bias = args
    return _conv2d(op, [x - p["input_zero_point"], w - p["weight_zero_point"], *bias])


@kernel(quant.RequantizeOp)
def _requantize(op, args):
    return quant.requantize_values(args[0], op.params())


@kernel(quant.FloatRequantizeOp)
def _requantize_float(op, args):
    return quant.requantize_float_values(args[0], op.params())


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


def evaluate(op: Operation, operands: Sequence[np.ndarray]) -> np.ndarray:
    """The value of `op`'s result given its operand values (in storage form)."""
    if isinstance(op, nn.ConstantOp):
        return op.array()
    fn = KERNELS.get(type(op))
    if fn is None:
        raise InternalError(f"the reference interpreter has no kernel for '{op.name}'")
    with np.errstate(all="ignore"):
        result = fn(op, [to_compute(a) for a in operands])  # type: ignore[arg-type]
    return to_storage(result, _element_type(op.results[0]))


def run_model(f: func.FuncOp, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Execute a tensor-level model function; inputs and outputs by name."""
    signature = signature_of(f)
    values: dict[SSAValue, np.ndarray] = {}
    for name, arg in zip((spec.name for spec in signature.inputs), f.body.block.args):
        if name not in inputs:
            raise LoomError(f"model '{f.sym_name.data}' is missing input '{name}'")
        values[arg] = to_storage(to_compute(np.asarray(inputs[name])), _element_type(arg))
    for op in f.body.block.ops:
        if isinstance(op, func.ReturnOp):
            return {
                spec.name: values[v] for spec, v in zip(signature.outputs, op.arguments)
            }
        values[op.results[0]] = evaluate(op, [values[v] for v in op.operands])
    raise InternalError(f"model '{f.sym_name.data}' has no func.return")


def interpret(
    module: ModuleOp, inputs: Mapping[str, Any], model: str | None = None
) -> dict[str, np.ndarray]:
    """Run `model` (the only one when None) of `module` on checked inputs."""
    f = find_model(module, model)
    return run_model(f, coerce_inputs(signature_of(f), dict(inputs)))
