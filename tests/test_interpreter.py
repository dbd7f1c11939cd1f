"""The reference interpreter, op by op, against independent computations.

Expected values come from hand computation, float64 numpy or naive loops
written here, never from the kernels under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from xdsl.dialects import func, test
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, StringAttr, TensorType, UnitAttr, bf16, f16, f32, i8, i32
from xdsl.ir import Attribute, Block, Region

from compiler import interpreter
from compiler.diagnostics import InternalError, LoomError
from dialects import nn

RNG = np.random.default_rng(1234)


def evaluate(op_class, arrays, element_type: Attribute = f32, **params) -> np.ndarray:
    """Build `op_class` on block arguments shaped like `arrays` and evaluate it."""
    block = Block(arg_types=[TensorType(element_type, a.shape) for a in arrays])
    op = op_class.make(list(block.args), **params)
    return interpreter.evaluate(op, [np.asarray(a) for a in arrays])


def normal(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert got.shape == want.shape
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# Elementwise
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op_class, fn",
    [
        (nn.AddOp, lambda a, b: a + b),
        (nn.SubOp, lambda a, b: a - b),
        (nn.MulOp, lambda a, b: a * b),
        (nn.DivOp, lambda a, b: a / b),
    ],
)
def test_binary_broadcasts(op_class, fn) -> None:
    a, b = normal(3, 1, 4), normal(2, 1) + 3
    got = evaluate(op_class, [a, b])
    assert got.dtype == np.float32
    close(got, fn(a.astype(np.float64), b.astype(np.float64)))


def test_scalar_literal_broadcasts() -> None:
    x = normal(2, 3)
    close(evaluate(nn.MulOp, [x, np.float32(2.5).reshape(())]), x * 2.5)


def test_integer_arithmetic_wraps() -> None:
    a = np.array([127, -128, 100, 5], dtype=np.int8)
    b = np.array([1, -1, 3, 2], dtype=np.int8)
    assert evaluate(nn.AddOp, [a, b], i8).tolist() == [-128, 127, 103, 7]
    assert evaluate(nn.MulOp, [a, b], i8).tolist() == [127, -128, 44, 10]  # 300 wraps to 44
    assert evaluate(nn.NegOp, [a], i8).tolist() == [-127, -128, -100, -5]
    big = np.array([2**31 - 1], dtype=np.int32)
    assert evaluate(nn.AddOp, [big, np.array([1], np.int32)], i32).tolist() == [-(2**31)]
    assert evaluate(nn.AddOp, [a, b], i8).dtype == np.int8


def test_integer_division_truncates_toward_zero() -> None:
    a = np.array([7, -7, 7, -7, 6, -1], dtype=np.int32)
    b = np.array([2, 2, -2, -2, 3, 5], dtype=np.int32)
    assert evaluate(nn.DivOp, [a, b], i32).tolist() == [3, -3, -3, 3, 2, 0]


def test_integer_division_by_zero_is_reported() -> None:
    with pytest.raises(LoomError, match="division by zero"):
        evaluate(nn.DivOp, [np.array([1, 2], np.int32), np.array([1, 0], np.int32)], i32)


def test_integer_relu_and_reductions() -> None:
    x = np.array([[-3, 100], [100, -128]], dtype=np.int8)
    assert evaluate(nn.ReluOp, [x], i8).tolist() == [[0, 100], [100, 0]]
    assert evaluate(nn.ReduceSumOp, [x], i8, axes=[1]).tolist() == [97, -28]  # 100 - 128
    assert evaluate(nn.ReduceMaxOp, [x], i8, axes=[0]).tolist() == [100, 100]


@pytest.mark.parametrize(
    "op_class, fn",
    [
        (nn.ReluOp, lambda x: np.where(x > 0, x, 0.0)),
        (nn.GeluOp, lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))),
        (nn.SigmoidOp, lambda x: 1 / (1 + np.exp(-x))),
        (nn.TanhOp, np.tanh),
        (nn.ExpOp, np.exp),
        (nn.NegOp, lambda x: -x),
    ],
)
def test_unary_against_float64(op_class, fn) -> None:
    x = normal(4, 5) * 3
    close(evaluate(op_class, [x]), fn(x.astype(np.float64)))


def test_sqrt() -> None:
    x = np.abs(normal(7)) * 10
    close(evaluate(nn.SqrtOp, [x]), np.sqrt(x.astype(np.float64)))


def test_sigmoid_saturates_without_nan() -> None:
    got = evaluate(nn.SigmoidOp, [np.array([-1000.0, -90.0, 0.0, 90.0, 1000.0], np.float32)])
    assert got.tolist() == [0.0, pytest.approx(0.0, abs=1e-38), 0.5, 1.0, 1.0]


def test_gelu_known_values() -> None:
    got = evaluate(nn.GeluOp, [np.array([0.0, 1.0, -1.0], np.float32)])
    close(got, np.array([0.0, 0.8411920, -0.1588080]), rtol=1e-6)


@pytest.mark.parametrize("k", [-1, 0, 2])
def test_tril(k: int) -> None:
    x = normal(2, 3, 4)
    got = evaluate(nn.TrilOp, [x], k=k, fill=-7.0)
    want = x.copy()
    for b, i, j in itertools.product(range(2), range(3), range(4)):
        if j - i > k:
            want[b, i, j] = -7.0
    assert np.array_equal(got, want)


# --------------------------------------------------------------------------
# Linear algebra and normalisation
# --------------------------------------------------------------------------


def test_matmul_batch_broadcast() -> None:
    a, b = normal(2, 1, 3, 4), normal(5, 4, 6)
    got = evaluate(nn.MatmulOp, [a, b])
    assert got.shape == (2, 5, 3, 6)
    want = np.einsum("xik,ykj->xyij", a[:, 0].astype(np.float64), b.astype(np.float64))
    close(got, want)


def test_matmul_is_close_to_float64() -> None:
    a, b = normal(8, 784), normal(784, 16)
    want = a.astype(np.float64) @ b.astype(np.float64)
    err = np.abs(evaluate(nn.MatmulOp, [a, b]) - want)
    assert np.max(err) <= 1e-5 * np.max(np.abs(a) @ np.abs(b))


def test_softmax_is_stable_and_normalised() -> None:
    x = np.array([[1000.0, 1001.0, 999.0], [-5.0, 0.0, 5.0]], np.float32)
    got = evaluate(nn.SoftmaxOp, [x], axis=-1)
    shifted = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    close(got, shifted / shifted.sum(axis=-1, keepdims=True), rtol=1e-6)


def test_softmax_other_axis() -> None:
    x = normal(3, 4)
    e = np.exp(x.astype(np.float64))
    close(evaluate(nn.SoftmaxOp, [x], axis=0), e / e.sum(axis=0))


def test_layernorm_over_trailing_dims_with_biased_variance() -> None:
    x, gamma, beta = normal(2, 3, 4) * 4 + 1, normal(3, 4), normal(3, 4)
    got = evaluate(nn.LayerNormOp, [x, gamma, beta], axis=-2, eps=1e-3)
    want = np.empty(x.shape)
    for n in range(2):
        v = x[n].astype(np.float64)
        want[n] = (v - v.mean()) / np.sqrt(v.var(ddof=0) + 1e-3) * gamma + beta
    close(got, want)


def test_batchnorm_per_channel() -> None:
    x = normal(2, 3, 4, 5)
    mean, gamma, beta = normal(3), normal(3), normal(3)
    var = np.abs(normal(3)) + 0.5
    got = evaluate(nn.BatchNormOp, [x, mean, var, gamma, beta], eps=1e-2)
    want = np.empty(x.shape)
    for c in range(3):
        want[:, c] = (x[:, c] - mean[c]) / math.sqrt(var[c] + 1e-2) * gamma[c] + beta[c]
    close(got, want)


# --------------------------------------------------------------------------
# Convolution and pooling, against direct loops
# --------------------------------------------------------------------------


def naive_conv2d(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, i, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + wd] = x
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, oh, ow))
    per_group = o // groups
    for b_, oc, y, xx in itertools.product(range(n), range(o), range(oh), range(ow)):
        g = oc // per_group
        acc = 0.0 if b is None else float(b[oc])
        for ic, u, v in itertools.product(range(i), range(kh), range(kw)):
            acc += xp[b_, g * i + ic, y * sh + u * dh, xx * sw + v * dw] * w[oc, ic, u, v]
        out[b_, oc, y, xx] = acc
    return out


@pytest.mark.parametrize(
    "stride, padding, dilation, groups, bias",
    [
        ((1, 1), (0, 0), (1, 1), 1, True),
        ((2, 1), (1, 2), (1, 1), 1, False),
        ((1, 2), (2, 1), (2, 1), 1, True),
        ((2, 2), (1, 1), (1, 2), 2, True),
        ((1, 1), (1, 1), (1, 1), 4, False),  # depthwise
    ],
)
def test_conv2d_matches_loops(stride, padding, dilation, groups, bias) -> None:
    x = normal(2, 4, 7, 6)
    w = normal(8, 4 // groups, 3, 2)
    b = normal(8) if bias else None
    operands = [x, w] + ([b] if bias else [])
    got = evaluate(nn.Conv2dOp, operands, stride=stride, padding=padding, dilation=dilation, groups=groups)
    close(got, naive_conv2d(x, w, b, stride, padding, dilation, groups), rtol=1e-5, atol=1e-5)


def naive_pool(x, kernel, stride, padding, reduce, pad_value):
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    xp = np.full((n, c, h + 2 * ph, w + 2 * pw), pad_value, dtype=np.float64)
    xp[:, :, ph : ph + h, pw : pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.empty((n, c, oh, ow))
    for y, xx in itertools.product(range(oh), range(ow)):
        out[:, :, y, xx] = reduce(xp[:, :, y * sh : y * sh + kh, xx * sw : xx * sw + kw])
    return out


def test_maxpool_padding_never_wins() -> None:
    x = -np.abs(normal(1, 2, 5, 5)) - 1  # all negative: zero padding would win
    got = evaluate(nn.MaxPool2dOp, [x], kernel=3, stride=2, padding=1)
    close(got, naive_pool(x, (3, 3), (2, 2), (1, 1), lambda v: v.max(axis=(2, 3)), -np.inf))
    assert np.all(got < 0)


def test_avgpool_padding_counts_as_zero() -> None:
    x = normal(2, 3, 6, 5) + 2
    got = evaluate(nn.AvgPool2dOp, [x], kernel=[2, 3], stride=[2, 1], padding=[1, 1])
    close(got, naive_pool(x, (2, 3), (2, 1), (1, 1), lambda v: v.sum(axis=(2, 3)) / 6, 0.0))


def test_avgpool_default_stride_is_kernel() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    got = evaluate(nn.AvgPool2dOp, [x], kernel=2)
    assert got.reshape(2, 2).tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_integer_maxpool_with_padding() -> None:
    x = np.full((1, 1, 2, 2), -100, dtype=np.int8)
    assert evaluate(nn.MaxPool2dOp, [x], i8, kernel=2, stride=1, padding=1).min() == -100


def test_global_avgpool_keeps_dims() -> None:
    x = normal(2, 3, 4, 5)
    got = evaluate(nn.GlobalAvgPoolOp, [x])
    close(got, x.astype(np.float64).mean(axis=(2, 3)).reshape(2, 3, 1, 1))


# --------------------------------------------------------------------------
# Data movement and reductions
# --------------------------------------------------------------------------


def test_reshape_transpose_concat() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert evaluate(nn.ReshapeOp, [x], shape=[4, -1]).tolist() == np.arange(24).reshape(4, 6).tolist()
    got = evaluate(nn.TransposeOp, [x], perm=[2, 0, 1])
    assert got.shape == (4, 2, 3) and got[3, 1, 2] == x[1, 2, 3]
    y = np.ones((2, 1, 4), np.float32)
    got = evaluate(nn.ConcatOp, [x, y], axis=1)
    assert got.shape == (2, 4, 4) and np.all(got[:, 3] == 1) and np.all(got[:, :3] == x)


def test_slice_is_numpy_basic_slicing() -> None:
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    got = evaluate(nn.SliceOp, [x], starts=[-3, 1], ends=[100, -1], axes=[2, 0], steps=[2, 1])
    np.testing.assert_array_equal(got, x[1:-1, :, -3::2])


@pytest.mark.parametrize("op_class, fn", [(nn.ReduceSumOp, np.sum), (nn.ReduceMeanOp, np.mean), (nn.ReduceMaxOp, np.max)])
@pytest.mark.parametrize("axes, keepdims", [(None, False), ([0, 2], True), ([-1], False)])
def test_reductions(op_class, fn, axes, keepdims) -> None:
    x = normal(2, 3, 4)
    got = evaluate(op_class, [x], axes=axes, keepdims=keepdims)
    axis = None if axes is None else tuple(a % 3 for a in axes)
    close(got, np.asarray(fn(x.astype(np.float64), axis=axis, keepdims=keepdims)))


# --------------------------------------------------------------------------
# Narrow float types: compute in f32, round the result once
# --------------------------------------------------------------------------


def test_f16_accumulates_in_f32_and_rounds_once() -> None:
    # Summed step by step in f16, 2048 + 1 + 1 stays 2048 (spacing 2 there).
    a = np.array([[2048.0, 1.0, 1.0]], np.float16)
    b = np.ones((3, 1), np.float16)
    got = evaluate(nn.MatmulOp, [a, b], f16)
    assert got.dtype == np.float16 and got.item() == 2050.0


def test_f16_result_is_rounded() -> None:
    got = evaluate(nn.DivOp, [np.array([1.0], np.float16), np.array([3.0], np.float16)], f16)
    assert got.dtype == np.float16 and got.item() == float(np.float16(1 / 3))


def test_bf16_result_is_rounded_to_bf16() -> None:
    a = np.array([1.0, 1.0, 256.0], np.float32)
    b = np.array([2.0**-9, 3 * 2.0**-8, 1.0], np.float32)
    got = evaluate(nn.AddOp, [a, b], bf16)
    assert got.dtype == np.float32
    # bf16 keeps 8 significant bits: 1 + 2^-9 rounds to 1, 1 + 3*2^-8 to the even 1 + 2^-6,
    # 257 to the even 256.
    assert got.tolist() == [1.0, 1.0 + 2.0**-6, 256.0]
    assert np.all(got.view(np.uint32) & 0xFFFF == 0)


# --------------------------------------------------------------------------
# Whole models
# --------------------------------------------------------------------------


def make_model(element_type: Attribute = f32) -> ModuleOp:
    """y = relu(x @ w + 1), z = sum(x) for x: T[2, 3]."""
    x_type = TensorType(element_type, [2, 3])
    block = Block(arg_types=[x_type])
    w = nn.ConstantOp(np.arange(12, dtype=np.float32).reshape(3, 4) - 5, element_type, name="w")
    one = nn.ConstantOp(np.array(1.0, np.float32), element_type)
    mm = nn.MatmulOp.make([block.args[0], w])
    add = nn.AddOp.make([mm, one])
    y = nn.ReluOp.make([add])
    z = nn.ReduceSumOp.make([block.args[0]])
    block.add_ops([w, one, mm, add, y, z, func.ReturnOp(y, z)])
    f = func.FuncOp("m", ([x_type], [y.result.type, z.result.type]), Region(block))
    f.attributes[nn.MODEL_ATTR] = UnitAttr()
    f.attributes[nn.INPUTS_ATTR] = ArrayAttr([StringAttr("x")])
    f.attributes[nn.OUTPUTS_ATTR] = ArrayAttr([StringAttr("y"), StringAttr("z")])
    module = ModuleOp([f])
    module.verify()
    return module


def test_interpret_returns_outputs_by_name() -> None:
    x = normal(2, 3)
    out = interpreter.interpret(make_model(), {"x": x})
    w = np.arange(12).reshape(3, 4) - 5
    close(out["y"], np.maximum(x.astype(np.float64) @ w + 1, 0))
    close(out["z"], np.asarray(x.astype(np.float64).sum()))


def test_interpret_checks_inputs() -> None:
    with pytest.raises(LoomError, match="missing input"):
        interpreter.interpret(make_model(), {})
    with pytest.raises(LoomError, match="shape"):
        interpreter.interpret(make_model(), {"x": np.zeros((3, 2))})


def test_run_model_rounds_bf16_inputs() -> None:
    module = make_model(bf16)
    x = np.full((2, 3), 1 + 2.0**-10, np.float32)  # not a bf16 value: rounds to 1
    out = interpreter.run_model(module.body.block.first_op, {"x": x})
    assert out["z"].item() == 6.0


def test_unknown_op_is_an_internal_error() -> None:
    op = test.TestOp(result_types=[TensorType(f32, [1])])
    with pytest.raises(InternalError, match="test.op"):
        interpreter.evaluate(op, [])


def test_every_nn_op_has_a_kernel() -> None:
    missing = [
        op.name
        for op in nn.NN.operations
        if op is not nn.ConstantOp and op not in interpreter.KERNELS
    ]
    assert missing == []
