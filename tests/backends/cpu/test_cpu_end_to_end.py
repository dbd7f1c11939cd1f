"""nn models built op by op, lowered by the real CPU pipeline and run natively.

Expected values come from numpy formulas written here, independently of the
reference interpreter.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, StringAttr, UnitAttr
from xdsl.ir import Block, Region, SSAValue

from backends.cpu import CpuArtifact, CpuBackend
from compiler import CompileOptions
from compiler.context import make_context
from compiler.model import find_model, signature_of
from compiler.pass_manager import PassManager
from dialects import nn
from dialects.nn import DTYPES, INPUTS_ATTR, MODEL_ATTR, OUTPUTS_ATTR, round_to_bf16, tensor

class ModelBuilder:
    """Appends nn ops to a model body; `op` and `const` return the new value."""

    def __init__(self, block: Block):
        self.block = block

    def op(self, cls: type[nn.NNOperation], *operands: SSAValue, **params) -> SSAValue:
        created = cls.make(list(operands), **params)
        self.block.add_op(created)
        return created.result

    def const(self, array: np.ndarray, dtype: str = "f32", name: str | None = None) -> SSAValue:
        created = nn.ConstantOp(array, DTYPES[dtype], name)
        self.block.add_op(created)
        return created.result


def compile_nn(name: str, inputs: dict[str, tuple[str, tuple[int, ...]]],
               body: Callable[[ModelBuilder, dict[str, SSAValue]], dict[str, SSAValue]]) -> CpuArtifact:
    types = [tensor(DTYPES[dtype], shape) for dtype, shape in inputs.values()]
    block = Block(arg_types=types)
    outputs = body(ModelBuilder(block), dict(zip(inputs, block.args)))
    block.add_op(func.ReturnOp(*outputs.values()))
    model = func.FuncOp(name, (types, [v.type for v in outputs.values()]), Region(block))
    model.attributes[MODEL_ATTR] = UnitAttr()
    model.attributes[INPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in inputs])
    model.attributes[OUTPUTS_ATTR] = ArrayAttr([StringAttr(n) for n in outputs])
    module = ModuleOp([model])
    module.verify()
    signature = signature_of(find_model(module, None))
    backend, options = CpuBackend(), CompileOptions()
    PassManager.from_pipeline(make_context(), backend.pipeline(options)).run(module)
    return backend.build(module, signature, options)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_mlp(rng):
    w1 = rng.normal(0, 0.1, (20, 16)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 16).astype(np.float32)
    w2 = rng.normal(0, 0.1, (16, 5)).astype(np.float32)

    def body(m: ModelBuilder, args):
        h = m.op(nn.ReluOp, m.op(nn.AddOp, m.op(nn.MatmulOp, args["x"], m.const(w1, name="w1")),
                                 m.const(b1, name="b1")))
        return {"y": m.op(nn.SoftmaxOp, m.op(nn.MatmulOp, h, m.const(w2, name="w2")), axis=-1)}

    art = compile_nn("mlp", {"x": ("f32", (3, 20))}, body)
    x = rng.standard_normal((3, 20)).astype(np.float32)
    logits = np.maximum(x @ w1 + b1, 0) @ w2
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(art.run(x=x)["y"], expected, rtol=0, atol=1e-5)


def test_layernorm_and_activations(rng):
    gamma = rng.uniform(0.5, 1.5, 12).astype(np.float32)
    beta = rng.normal(0, 0.1, 12).astype(np.float32)

    def body(m: ModelBuilder, args):
        x = args["x"]
        normed = m.op(nn.LayerNormOp, x, m.const(gamma), m.const(beta), axis=-1, eps=1e-5)
        return {"gelu": m.op(nn.GeluOp, normed), "sigmoid": m.op(nn.SigmoidOp, x),
                "tanh": m.op(nn.TanhOp, x), "sqrt": m.op(nn.SqrtOp, m.op(nn.ExpOp, x))}

    art = compile_nn("acts", {"x": ("f32", (4, 12))}, body)
    x = rng.standard_normal((4, 12)).astype(np.float32)
    out = art.run(x=x)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    n = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta
    gelu = 0.5 * n * (1 + np.tanh(np.sqrt(2 / np.pi) * (n + 0.044715 * n ** 3)))
    np.testing.assert_allclose(out["gelu"], gelu, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["sigmoid"], 1 / (1 + np.exp(-x)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["tanh"], np.tanh(x), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out["sqrt"], np.sqrt(np.exp(x)), rtol=1e-6)


def test_conv_pool_and_reductions(rng):
    weight = rng.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32)

    def body(m: ModelBuilder, args):
        conv = m.op(nn.Conv2dOp, args["x"], m.const(weight), stride=1, padding=1)
        pooled = m.op(nn.MaxPool2dOp, conv, kernel=2, stride=2)
        return {"pooled": pooled,
                "total": m.op(nn.ReduceSumOp, pooled, axes=[2, 3], keepdims=False),
                "flat": m.op(nn.TransposeOp, m.op(nn.ReshapeOp, pooled, shape=[1, 4, 9]), perm=[0, 2, 1])}

    art = compile_nn("cnn", {"x": ("f32", (1, 2, 6, 6))}, body)
    x = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    out = art.run(x=x)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
    conv = np.einsum("nchwij,ocij->nohw", windows, weight)
    pooled = conv.reshape(1, 4, 3, 2, 3, 2).max(axis=(3, 5))
    np.testing.assert_allclose(out["pooled"], pooled, rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["total"], pooled.sum(axis=(2, 3)), rtol=0, atol=1e-4)
    np.testing.assert_allclose(out["flat"], pooled.reshape(1, 4, 9).transpose(0, 2, 1), rtol=0, atol=1e-5)


def test_narrow_float_matmul(rng):
    def body(m: ModelBuilder, args):
        return {"h": m.op(nn.AddOp, m.op(nn.MatmulOp, args["a"], args["b"]), args["a"]),
                "g": m.op(nn.MulOp, args["c"], args["c"])}

    art = compile_nn("narrow", {"a": ("f16", (4, 4)), "b": ("f16", (4, 4)), "c": ("bf16", (9,))}, body)
    a = rng.standard_normal((4, 4)).astype(np.float16)
    b = rng.standard_normal((4, 4)).astype(np.float16)
    c = round_to_bf16(rng.standard_normal(9).astype(np.float32))
    out = art.run(a=a, b=b, c=c)
    product = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float16)
    expected_h = (product.astype(np.float32) + a.astype(np.float32)).astype(np.float16)
    # Narrow types accumulate in f32 and round once per op; allow one f16 ulp of slack.
    np.testing.assert_allclose(out["h"].astype(np.float32), expected_h.astype(np.float32), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(out["g"], round_to_bf16(c * c))


def test_integer_arithmetic():
    def body(m: ModelBuilder, args):
        return {"q": m.op(nn.DivOp, args["x"], args["y"]),
                "s": m.op(nn.AddOp, m.op(nn.MulOp, args["x"], args["y"]), args["x"])}

    art = compile_nn("ints", {"x": ("i32", (8,)), "y": ("i32", (8,))}, body)
    x = np.array([7, -7, 7, -7, 100, -100, 0, 5], dtype=np.int32)
    y = np.array([2, 2, -2, -2, 7, 7, 3, 1], dtype=np.int32)
    out = art.run(x=x, y=y)
    np.testing.assert_array_equal(out["q"], np.trunc(x / y).astype(np.int32))
    np.testing.assert_array_equal(out["s"], x * y + x)
