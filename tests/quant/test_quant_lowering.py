"""Quant ops lowered to linalg and compiled for the CPU give exactly the
integers (and floats) the reference interpreter computes, including
rounding ties, saturation, NaN and zero-point padding."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from xdsl.dialects import func
from xdsl.dialects.linalg.ops import GenericOp
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, StringAttr, UnitAttr, f32, i8, i32
from xdsl.ir import Block, Operation, Region, SSAValue

import compiler
from backends.base import CompileOptions
from compiler.context import make_context
from compiler.interpreter import interpret
from compiler.pass_manager import PassManager
from dialects import nn, quant
from dialects.nn import tensor

Body = Callable[..., tuple[list[Operation], list[SSAValue]]]


def model(arg_types: Sequence, body: Body) -> ModuleOp:
    """A model function over `arg_types` whose ops and outputs `body` returns."""
    block = Block(arg_types=list(arg_types))
    ops, outputs = body(*block.args)
    block.add_ops([*ops, func.ReturnOp(*outputs)])
    f = func.FuncOp("m", (list(arg_types), [v.type for v in outputs]), Region(block))
    f.attributes["loom.model"] = UnitAttr()
    f.attributes["loom.inputs"] = ArrayAttr([StringAttr(f"in{i}") for i in range(len(arg_types))])
    f.attributes["loom.outputs"] = ArrayAttr([StringAttr(f"out{i}") for i in range(len(outputs))])
    module = ModuleOp([f])
    module.verify()
    return module


def assert_cpu_matches_interpreter(module: ModuleOp, inputs: dict[str, np.ndarray], fusion: bool) -> None:
    """Every output equal bit for bit, except float sums (a float matmul after
    a dequantize), whose order of additions differs."""
    expected = interpret(module, inputs)
    artifact = compiler.compile(module, target="cpu", options=CompileOptions(fusion=fusion, threads=1))
    got = artifact.run(**inputs)
    (f,) = module.ops
    float_sums = {f"out{i}" for i, v in enumerate(f.body.block.last_op.operands) if isinstance(v.owner, nn.MatmulOp)}
    for name, want in expected.items():
        assert got[name].dtype == want.dtype
        if name in float_sums:
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want, err_msg=name)


rng = np.random.default_rng(7)


def quantize_case():
    """Per-tensor and per-channel (scale and zero point) quantization of
    values hitting ties, saturation, infinities and NaN."""
    scales = np.array([[0.5, 0.25, 0.125, 2.0]], np.float32)
    per_channel = quant.UniformQuantAttr.get(scales, np.array([[3, -2, 0, 100]]), 8, [6, 1])
    per_tensor = quant.UniformQuantAttr.get(0.5, -7, 8)

    def body(x):
        a = quant.QuantizeOp.make([x], quant_type=per_channel)
        b = quant.QuantizeOp.make([x], quant_type=per_tensor)
        c = quant.DequantizeOp.make([a], quant_type=per_channel)
        return [a, b, c], [a.result, b.result, c.result]

    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 1e9, -1e9, np.inf, -np.inf, np.nan], np.float32)
    x = np.concatenate([x[:6], rng.normal(0, 20, 14).astype(np.float32), x[6:]]).reshape(6, 4)
    return model([tensor(f32, [6, 4])], body), {"in0": x}


def dequantize_case():
    """i32 per-axis and grouped 4-bit weights with a partial last group,
    dequantized in front of a float matmul."""
    acc_type = quant.UniformQuantAttr.get(rng.uniform(1e-4, 1e-2, (1, 5)).astype(np.float32), 0, 32, [3, 1])
    groups = quant.UniformQuantAttr.get(
        rng.uniform(0.01, 0.1, (3, 5)).astype(np.float32), rng.integers(-8, 8, (3, 5)), 4, [16, 1]
    )

    def body(acc, x):
        w = nn.ConstantOp(rng.integers(-8, 8, (40, 5)), i8, "w")
        deq = quant.DequantizeOp.make([w], quant_type=groups)
        mm = nn.MatmulOp.make([x, deq])
        a = quant.DequantizeOp.make([acc], quant_type=acc_type)
        return [w, deq, mm, a], [mm.result, a.result]

    inputs = {"in0": rng.integers(-(1 << 30), 1 << 30, (3, 5)).astype(np.int32),
              "in1": rng.normal(0, 1, (3, 40)).astype(np.float32)}
    return model([tensor(i32, [3, 5]), tensor(f32, [3, 40])], body), inputs


def matmul_case():
    """Batched quant.matmul with both zero points, bias in i32, per-channel requantize."""
    multiplier, shift = quant.fixed_point(rng.uniform(1e-4, 1e-3, 6))

    def body(a):
        b = nn.ConstantOp(rng.integers(-128, 128, (12, 6)), i8, "b")
        mm = quant.MatmulOp.make([a, b], lhs_zero_point=-3, rhs_zero_point=5)
        bias = nn.ConstantOp(rng.integers(-5000, 5000, (6,)), i32, "bias")
        acc = nn.AddOp.make([mm, bias])
        out = quant.RequantizeOp.make([acc], multiplier=multiplier.tolist(), shift=shift.tolist(), axis=2,
                                      zero_point=-10, clamp=[-10, 127])
        return [b, mm, bias, acc, out], [acc.result, out.result]

    inputs = {"in0": rng.integers(-128, 128, (2, 3, 12)).astype(np.int8)}
    return model([tensor(i8, [2, 3, 12])], body), inputs


def conv_case():
    """Grouped, strided, dilated quant.conv2d whose padding is the input's zero point."""

    def body(x):
        w = nn.ConstantOp(rng.integers(-128, 128, (6, 2, 3, 3)), i8, "w")
        bias = nn.ConstantOp(rng.integers(-100, 100, (6,)), i32, "bias")
        conv = quant.Conv2dOp.make([x, w, bias], stride=[2, 1], padding=[2, 1], dilation=[1, 2], groups=2,
                                   input_zero_point=-7, weight_zero_point=3)
        dense_w = nn.ConstantOp(rng.integers(-128, 128, (5, 4, 3, 3)), i8, "dense_w")
        plain = quant.Conv2dOp.make([x, dense_w], padding=1, input_zero_point=100)
        return [w, bias, conv, dense_w, plain], [conv.result, plain.result]

    inputs = {"in0": rng.integers(-128, 128, (1, 4, 7, 8)).astype(np.int8)}
    return model([tensor(i8, [1, 4, 7, 8])], body), inputs


def requantize_ties_case():
    """Accumulators at exact halves after the multiply, per tensor and per channel."""

    def body(acc):
        half = quant.RequantizeOp.make([acc], multiplier=[1 << 30], shift=[31], zero_point=0, clamp=[-128, 127])
        channels = quant.RequantizeOp.make([acc], multiplier=[1 << 30, 3 << 29, 0], shift=[31, 33, 62], axis=1,
                                           zero_point=4, clamp=[-128, 127])
        return [half, channels], [half.result, channels.result]

    acc = np.array([[1, 1, 1], [-1, -1, -1], [3, 3, 3], [-3, -3, -3], [5, 4, 9], [-5, -4, -9],
                    [255, 1 << 20, 1 << 30], [-257, -(1 << 20), -(1 << 31)]], np.int32)
    return model([tensor(i32, [8, 3])], body), {"in0": acc}


CASES = [quantize_case, dequantize_case, matmul_case, conv_case, requantize_ties_case]


@pytest.mark.parametrize("fusion", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_cpu_computes_what_the_interpreter_computes(case, fusion: bool) -> None:
    module, inputs = case()
    assert_cpu_matches_interpreter(module, inputs, fusion)


def test_requantize_ties_round_away_from_zero() -> None:
    module, inputs = requantize_ties_case()
    half = interpret(module, inputs)["out0"][:, 0]
    np.testing.assert_array_equal(half, [1, -1, 2, -2, 3, -3, 127, -128])


def test_quant_ops_lower_to_integer_generics_only() -> None:
    module, _ = matmul_case()
    PassManager.from_pipeline(make_context(), "convert-quant-to-linalg").run(module)
    assert not [op for op in module.walk() if isinstance(op, quant.QuantOperation)]
    (contraction,) = [op for op in module.walk() if isinstance(op, GenericOp)
                      and op.attributes["loom.op"] == StringAttr("quant.matmul")]
    body_types = {str(v.type) for op in contraction.body.block.ops for v in op.results}
    assert body_types == {"i32"}
