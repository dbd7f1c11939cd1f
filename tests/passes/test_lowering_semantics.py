"""Lowered nn ops compute what numpy computes.

Every case is a tiny model; it is lowered to bufferized linalg and to loops,
run on xDSL's interpreter and compared both with a numpy version of the op
computed in float64/int64 and rounded to the output dtype once, and with
Loom's reference interpreter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from xdsl.ir import SSAValue

from compiler.interpreter import run_model
from dialects import nn
from nn_lowering_harness import TO_BUFFERS, TO_LOOPS, assert_matches, lower, model, random_input, rounded, run

RNG = np.random.default_rng(1234)


@dataclass
class Case:
    id: str
    inputs: dict[str, tuple[Sequence[int], str]]
    build: Callable[..., Sequence[SSAValue]]
    reference: Callable[..., Sequence[np.ndarray]]
    input_range: tuple[float, float] = (-2, 2)
    arrays: list[np.ndarray] = field(default_factory=list)


def data(shape: Sequence[int], dtype: str, low: float = -2, high: float = 2) -> np.ndarray:
    return random_input(RNG, shape, dtype, low, high)


def wide(array: np.ndarray) -> np.ndarray:
    """`array` in float64 or int64 for the reference computation."""
    return array.astype(np.int64) if array.dtype.kind == "i" else array.astype(np.float64)


# --------------------------------------------------------------------------
# numpy references
# --------------------------------------------------------------------------


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def int_div(a, b):
    """Integer division truncating toward zero."""
    return np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))


def tril(x, k, fill):
    rows, cols = x.shape[-2:]
    keep = np.arange(cols)[None, :] - np.arange(rows)[:, None] <= k
    return np.where(keep, x, fill)


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def layernorm(x, gamma, beta, axis, eps):
    axes = tuple(range(axis, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def batchnorm(x, mean, var, gamma, beta, eps):
    shape = [1, -1] + [1] * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * gamma.reshape(shape) + beta.reshape(shape)


def windows(xp, kernel, stride, dilation, out_hw):
    """(kh, kw) -> the strided slice of xp each kernel tap reads."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]


def conv2d(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (ph, pw), (sh, sw), (dh, dw) = padding, stride, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    out = np.zeros((n, o, oh, ow), dtype=x.dtype)
    og = o // groups
    for g in range(groups):
        xs = xp[:, g * cg : (g + 1) * cg]
        for i, j, patch in windows(xs, (kh, kw), stride, dilation, (oh, ow)):
            out[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, w[g * og : (g + 1) * og, :, i, j])
    return out if b is None else out + b[None, :, None, None]


def pool(x, kernel, stride, padding, kind):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, c, h, w = x.shape
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    fill = (-np.inf if x.dtype.kind == "f" else np.iinfo(np.int64).min) if kind == "max" else 0
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    taps = np.stack([p for _, _, p in windows(xp, kernel, stride, (1, 1), (oh, ow))])
    if kind == "max":
        return taps.max(axis=0)
    total = taps.sum(axis=0)
    return int_div(total, kh * kw) if x.dtype.kind == "i" else total / (kh * kw)


# --------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------

CASES: list[Case] = []


def case(id: str, inputs, build, reference, input_range=(-2, 2)):
    CASES.append(Case(id, inputs, build, reference, input_range))


def const(emit, array: np.ndarray, dtype: str, name: str | None = None) -> SSAValue:
    return emit(nn.ConstantOp(array, nn.DTYPES[dtype], name))


def binary(op: type[nn.NNOperation], a_shape, b_shape, dtype, fn, id_suffix=""):
    case(
        f"{op.name}-{dtype}-{a_shape}-{b_shape}{id_suffix}",
        {"a": (a_shape, dtype), "b": (b_shape, dtype)},
        lambda e, a, b: [e(op.make([a, b]))],
        lambda a, b: [fn(a, b)],
    )


binary(nn.AddOp, [2, 3], [3], "f32", np.add)
binary(nn.AddOp, [2, 1, 3], [4, 1], "f16", np.add)
binary(nn.AddOp, [2, 3], [2, 3], "i8", np.add)
binary(nn.SubOp, [1, 3], [2, 1], "f32", np.subtract)
binary(nn.SubOp, [3], [2, 3], "i32", np.subtract)
binary(nn.MulOp, [2, 3], [2, 3], "bf16", np.multiply)
binary(nn.MulOp, [2, 3], [1], "i8", np.multiply)
binary(nn.DivOp, [2, 3], [3], "f32", np.divide)


def _int_division_case():
    a = np.array([[7, -7, 9], [-9, 5, -1]], dtype=np.int32)
    b = np.array([2, 2, -4], dtype=np.int32)
    case(
        "nn.div-i32-truncates",
        {"a": ([2, 3], "i32")},
        lambda e, x: [e(nn.DivOp.make([x, const(e, b, "i32")]))],
        lambda x: [int_div(x, b)],
    )
    CASES[-1].arrays = [a]


_int_division_case()


def _literal_case(dtype: str):
    half = np.array(0.3)
    case(
        f"scalar-literal-{dtype}",
        {"x": ([2, 3], dtype)},
        lambda e, x: [e(nn.MulOp.make([const(e, half, dtype), e(nn.AddOp.make([x, const(e, half, dtype)]))]))],
        lambda x: [rounded(half, dtype).astype(np.float64) * (x + rounded(half, dtype).astype(np.float64))],
    )


_literal_case("f32")
_literal_case("f16")


def unary(op: type[nn.NNOperation], dtype, fn, shape=(2, 3), input_range=(-2, 2)):
    case(
        f"{op.name}-{dtype}",
        {"x": (list(shape), dtype)},
        lambda e, x: [e(op.make([x]))],
        lambda x: [fn(x)],
        input_range=input_range,
    )


unary(nn.NegOp, "f32", np.negative)
unary(nn.NegOp, "i32", np.negative)
unary(nn.ReluOp, "f32", lambda x: np.maximum(x, 0))
unary(nn.ReluOp, "i8", lambda x: np.maximum(x, 0))
unary(nn.GeluOp, "f32", gelu)
unary(nn.GeluOp, "bf16", gelu)
unary(nn.SigmoidOp, "f32", sigmoid)
unary(nn.TanhOp, "f16", np.tanh)
unary(nn.ExpOp, "f32", np.exp)
unary(nn.SqrtOp, "f32", np.sqrt, input_range=(0.1, 4))

for dtype, k, fill in (("f32", 0, -1e9), ("f16", 1, 0.0), ("i32", -1, -5.0), ("i8", 0, -1e9)):
    case(
        f"nn.tril-{dtype}-k{k}",
        {"x": ([2, 3, 4], dtype)},
        lambda e, x, k=k, fill=fill: [e(nn.TrilOp.make([x], k=k, fill=fill))],
        lambda x, k=k, fill=fill: [tril(x, k, fill)],
    )


def _matmul(a_shape, b_shape, dtype, weights=False):
    if weights:
        w = data(b_shape, dtype)
        case(
            f"nn.matmul-{dtype}-{a_shape}-param{b_shape}",
            {"a": (a_shape, dtype)},
            lambda e, a: [e(nn.MatmulOp.make([a, const(e, w, dtype, "w")]))],
            lambda a: [wide(a) @ wide(w)],
        )
    else:
        case(
            f"nn.matmul-{dtype}-{a_shape}-{b_shape}",
            {"a": (a_shape, dtype), "b": (b_shape, dtype)},
            lambda e, a, b: [e(nn.MatmulOp.make([a, b]))],
            lambda a, b: [a @ b],
        )


_matmul([2, 3], [3, 4], "f32", weights=True)
_matmul([2, 2, 3], [1, 3, 2], "f32")
_matmul([2, 3], [2, 3, 2], "f32")
_matmul([3, 5], [5, 2], "f16")
_matmul([2, 4], [4, 3], "bf16", weights=True)
_matmul([2, 3], [3, 2], "i32")


def _i8_matmul_wraps():
    a = np.full((2, 4), 100, dtype=np.int8)
    case(
        "nn.matmul-i8-wraps",
        {"a": ([2, 4], "i8"), "b": ([4, 2], "i8")},
        lambda e, x, y: [e(nn.MatmulOp.make([x, y]))],
        lambda x, y: [wide(x) @ wide(y)],
    )
    CASES[-1].arrays = [a, np.full((4, 2), 3, dtype=np.int8)]


_i8_matmul_wraps()


def _conv(dtype, x_shape, w_shape, bias=True, **params):
    w = data(w_shape, dtype)
    b = data([w_shape[0]], dtype)

    def build(e, x):
        operands = [x, const(e, w, dtype, "w")] + ([const(e, b, dtype, "b")] if bias else [])
        return [e(nn.Conv2dOp.make(operands, **params))]

    def reference(x):
        p = nn.Conv2dOp.infer([nn.tensor(nn.DTYPES[dtype], x_shape), nn.tensor(nn.DTYPES[dtype], w_shape)], **params)[1]
        return [conv2d(wide(x), wide(w), wide(b) if bias else None, p["stride"], p["padding"], p["dilation"], p["groups"])]

    case(f"nn.conv2d-{dtype}-{x_shape}-{w_shape}-{params}", {"x": (x_shape, dtype)}, build, reference)


_conv("f32", [1, 2, 5, 5], [3, 2, 3, 3], padding=1)
_conv("f32", [1, 2, 6, 5], [2, 2, 2, 2], bias=False, stride=2, dilation=[1, 2], padding=[1, 0])
_conv("f32", [1, 4, 4, 4], [4, 2, 3, 3], groups=2, padding=1)
_conv("f16", [1, 2, 4, 4], [2, 2, 3, 3], padding=1)
_conv("i8", [1, 2, 4, 4], [2, 1, 2, 2], groups=2)


def _pool(op, dtype, kind, **params):
    def reference(x):
        p = op.infer([nn.tensor(nn.DTYPES[dtype], x.shape)], **params)[1]
        return [pool(wide(x), p["kernel"], p["stride"], p["padding"], kind)]

    case(
        f"{op.name}-{dtype}-{params}",
        {"x": ([1, 2, 5, 5], dtype)},
        lambda e, x: [e(op.make([x], **params))],
        reference,
        input_range=(-5, 5),
    )


_pool(nn.MaxPool2dOp, "f32", "max", kernel=3, stride=2, padding=1)
_pool(nn.MaxPool2dOp, "i8", "max", kernel=2, padding=1)
_pool(nn.MaxPool2dOp, "bf16", "max", kernel=2)
_pool(nn.AvgPool2dOp, "f32", "avg", kernel=3, stride=2, padding=1)
_pool(nn.AvgPool2dOp, "f16", "avg", kernel=2)
_pool(nn.AvgPool2dOp, "i32", "avg", kernel=2, stride=1, padding=1)

for dtype in ("f32", "bf16"):
    case(
        f"nn.global_avgpool-{dtype}",
        {"x": ([2, 3, 2, 3], dtype)},
        lambda e, x: [e(nn.GlobalAvgPoolOp.make([x]))],
        lambda x: [x.mean(axis=(2, 3), keepdims=True)],
    )

for dtype, axis in (("f32", -1), ("f32", 0), ("f16", 1)):
    case(
        f"nn.softmax-{dtype}-axis{axis}",
        {"x": ([2, 3, 4], dtype)},
        lambda e, x, axis=axis: [e(nn.SoftmaxOp.make([x], axis=axis))],
        lambda x, axis=axis: [softmax(x, axis)],
        input_range=(-4, 4),
    )


def _layernorm(dtype, shape, axis):
    gamma, beta = data(shape[axis:], dtype), data(shape[axis:], dtype)
    case(
        f"nn.layernorm-{dtype}-{shape}-axis{axis}",
        {"x": (shape, dtype)},
        lambda e, x: [e(nn.LayerNormOp.make([x, const(e, gamma, dtype, "g"), const(e, beta, dtype, "b")], axis=axis))],
        lambda x: [layernorm(x, wide(gamma), wide(beta), axis % len(shape), 1e-5)],
    )


_layernorm("f32", [2, 5], -1)
_layernorm("f32", [2, 3, 2], 1)
_layernorm("bf16", [3, 4], -1)


def _batchnorm(dtype, shape):
    c = shape[1]
    mean, gamma, beta = data([c], dtype), data([c], dtype), data([c], dtype)
    var = data([c], dtype, 0.5, 2)
    case(
        f"nn.batchnorm-{dtype}-{shape}",
        {"x": (shape, dtype)},
        lambda e, x: [e(nn.BatchNormOp.make([x] + [const(e, a, dtype) for a in (mean, var, gamma, beta)], eps=1e-3))],
        lambda x: [batchnorm(x, *(wide(a) for a in (mean, var, gamma, beta)), 1e-3)],
    )


_batchnorm("f32", [2, 3, 2, 2])
_batchnorm("f16", [3, 4])

for dtype, source, target in (
    ("f32", [2, 3, 4], [6, 4]),
    ("f32", [6, 4], [2, 3, 1, 4]),
    ("i8", [2, 3, 4], [4, 6]),
    ("f32", [1, 1], []),
    ("f32", [], [1, 1]),
):
    case(
        f"nn.reshape-{dtype}-{source}-{target}",
        {"x": (source, dtype)},
        lambda e, x, target=target: [e(nn.ReshapeOp.make([x], shape=target))],
        lambda x, target=target: [x.reshape(target)],
    )


def _reshape_then_compute():
    """A reshape view feeding a computation and a returned view."""
    case(
        "reshape-views",
        {"x": ([2, 6], "f32")},
        lambda e, x: [
            e(nn.ReluOp.make([e(nn.ReshapeOp.make([x], shape=[3, 4]))])),
            e(nn.ReshapeOp.make([e(nn.NegOp.make([x]))], shape=[12])),
        ],
        lambda x: [np.maximum(x.reshape(3, 4), 0), -x.reshape(12)],
    )


_reshape_then_compute()

for dtype, perm in (("f32", [2, 0, 1]), ("i32", [1, 0])):
    case(
        f"nn.transpose-{dtype}-{perm}",
        {"x": ([2, 3, 4][: len(perm)], dtype)},
        lambda e, x, perm=perm: [e(nn.TransposeOp.make([x], perm=perm))],
        lambda x, perm=perm: [np.transpose(x, perm)],
    )

for dtype in ("f32", "i8"):
    case(
        f"nn.slice-{dtype}",
        {"x": ([3, 8, 5], dtype)},
        lambda e, x: [e(nn.SliceOp.make([x], starts=[1, -4], ends=[3, 5], axes=[0, 2], steps=[1, 2]))],
        lambda x: [x[1:3, :, -4:5:2]],
    )

for dtype, axis in (("f32", 1), ("i8", 0)):
    case(
        f"nn.concat-{dtype}-axis{axis}",
        {"a": ([2, 2], dtype), "b": ([2, 3] if axis else [1, 2], dtype), "c": ([2, 1] if axis else [3, 2], dtype)},
        lambda e, a, b, c, axis=axis: [e(nn.ConcatOp.make([a, b, c], axis=axis))],
        lambda a, b, c, axis=axis: [np.concatenate([a, b, c], axis=axis)],
    )

_REDUCE = {nn.ReduceSumOp: np.sum, nn.ReduceMeanOp: np.mean, nn.ReduceMaxOp: np.max}
for op, dtype, axes, keepdims in (
    (nn.ReduceSumOp, "f32", [1], False),
    (nn.ReduceSumOp, "i8", None, False),
    (nn.ReduceSumOp, "f16", [0, 2], True),
    (nn.ReduceMeanOp, "f32", [-1], True),
    (nn.ReduceMeanOp, "bf16", None, False),
    (nn.ReduceMaxOp, "f32", [0], False),
    (nn.ReduceMaxOp, "i32", [1, 2], True),
    (nn.ReduceMaxOp, "f16", None, True),
):
    case(
        f"{op.name}-{dtype}-{axes}-keep{keepdims}",
        {"x": ([2, 3, 4], dtype)},
        lambda e, x, op=op, axes=axes, keepdims=keepdims: [e(op.make([x], axes=axes, keepdims=keepdims))],
        lambda x, op=op, axes=axes, keepdims=keepdims: [
            _REDUCE[op](x, axis=None if axes is None else tuple(axes), keepdims=keepdims)
        ],
        input_range=(-100, 100) if dtype == "i8" else (-2, 2),
    )


def _long_f16_sum():
    """2048 ones and a 2048 in f16: an f16 accumulator would stop at 2048."""
    case(
        "nn.sum-f16-accumulates-in-f32",
        {"x": ([4, 1024], "f16")},
        lambda e, x: [e(nn.ReduceSumOp.make([x]))],
        lambda x: [x.astype(np.float64).sum()],
    )
    CASES[-1].arrays = [np.full((4, 1024), 1.0, dtype=np.float16)]


_long_f16_sum()


def _results_that_need_copies():
    w = data([2, 3], "f32")
    case(
        "outputs-input-constant-twice",
        {"x": ([2, 3], "f32")},
        lambda e, x: [x, const(e, w, "f32", "w"), y := e(nn.ExpOp.make([x])), y],
        lambda x: [x, w, np.exp(x), np.exp(x)],
    )


_results_that_need_copies()


def _mlp():
    w1, b1 = data([4, 5], "f32"), data([5], "f32")
    w2, b2 = data([5, 3], "f32"), data([3], "f32")

    def build(e, x):
        h = e(nn.ReluOp.make([e(nn.AddOp.make([e(nn.MatmulOp.make([x, const(e, w1, "f32", "w1")])), const(e, b1, "f32", "b1")]))]))
        logits = e(nn.AddOp.make([e(nn.MatmulOp.make([h, const(e, w2, "f32", "w2")])), const(e, b2, "f32", "b2")]))
        return [e(nn.SoftmaxOp.make([logits]))]

    case("mlp", {"x": ([2, 4], "f32")}, build, lambda x: [softmax(np.maximum(x @ w1 + b1, 0) @ w2 + b2, -1)])


_mlp()


# What the CPU backend's emitter translates: anything else after the full
# pipeline would reach it untranslated.
LOOP_LEVEL_OPS = {
    "builtin.module",
    "func.func",
    "func.return",
    *(f"memref.{name}" for name in "alloc dealloc global get_global load store copy collapse_shape expand_shape".split()),
    "scf.for",
    "scf.yield",
    *(f"arith.{name}" for name in "constant addf subf mulf divf negf maximumf addi subi muli divsi maxsi cmpi select extf truncf extsi trunci".split()),
    *(f"math.{name}" for name in "exp tanh sqrt".split()),
}


@pytest.mark.parametrize("pipeline", [TO_BUFFERS, TO_LOOPS], ids=["bufferized", "loops"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_lowered_op_matches_numpy(case: Case, pipeline: str):
    arrays = case.arrays or [data(shape, dtype, *case.input_range) for shape, dtype in case.inputs.values()]
    module = model(case.inputs, case.build)
    function = next(iter(module.ops))
    out_dtypes = [nn.dtype_name(t.element_type) for t in function.function_type.outputs.data]
    oracle = run_model(function, dict(zip(case.inputs, arrays)))
    lowered = lower(module, pipeline)
    if pipeline == TO_LOOPS:
        assert {op.name for op in lowered.walk()} <= LOOP_LEVEL_OPS
    actual = run(lowered, arrays)
    expected = case.reference(*[wide(a) for a in arrays])
    assert len(actual) == len(expected) == len(out_dtypes) == len(oracle)
    for got, want, by_oracle, dtype in zip(actual, expected, oracle.values(), out_dtypes):
        assert_matches(got, rounded(np.asarray(want), dtype), dtype)
        assert_matches(got, by_oracle, dtype)
