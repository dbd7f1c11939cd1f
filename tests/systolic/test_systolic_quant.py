"""Quantized models on the systolic target: int8 layers run on the array as
i8 x i8 -> i32 products with the input zero point folded into the bias and
requantization in the output unit, bit for bit what the interpreter computes
on the quantized module; weight-only int4 layers dequantize on the host and
multiply in f32; quantize and dequantize run on the host."""

from __future__ import annotations

import functools
import importlib.util
import sys

import numpy as np
import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, StringAttr, UnitAttr, i8
from xdsl.ir import Block, Region
from xdsl.utils.exceptions import VerifyException

import compiler
from backends.base import CompileOptions
from backends.systolic import isa
from backends.systolic.simulator import Simulator
from compiler.api import load_module, model_pipeline, select_model
from compiler.artifact import random_inputs
from compiler.context import make_context
from compiler.mlir import parse_mlir
from compiler.pass_manager import PassManager
from dialects import nn, quant
from dialects import systolic as sy
from dialects.systolic import ArrayConfig
from systolic_models import ROOT, options

INT8_SCHEMES = ("int8", "int8-per-channel")
SCHEMES = (*INT8_SCHEMES, "w4-group64", "mixed")
CONFIGS = (("16x16", "ws"), ("8x8", "os"))

# A strided, padded convolution with bias and relu, then a dilated depthwise one.
GROUPED = """model grouped {
  input x: f32[1, 4, 9, 9]
  param w: f32[8, 4, 3, 3] = normal(0.0, 0.3, seed=1)
  param b: f32[8] = normal(0.0, 0.2, seed=2)
  param dw: f32[8, 1, 3, 3] = normal(0.0, 0.5, seed=3)
  h = relu(conv2d(x, w, b, padding=1, stride=2))
  d = conv2d(h, dw, groups=8, padding=1, dilation=2)
  output d
}"""


# --------------------------------------------------------------------------
# Models, quantized once per scheme
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits classifier trained by samples/digits/train_digits.py, its calibration and test sets."""
    spec = importlib.util.spec_from_file_location("train_digits", ROOT / "samples" / "digits" / "train_digits.py")
    trainer = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = trainer
    spec.loader.exec_module(trainer)
    out = tmp_path_factory.mktemp("digits")
    trainer.main(out)
    test = np.load(out / "digits_test.npz")
    return out, test["x"], test["y"]


@pytest.fixture(scope="module")
def calibrations(tmp_path_factory, digits):
    """Calibration inputs per model: random images and vectors, the digits training images."""
    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(3)
    arrays = {"lenet": rng.standard_normal((4, 1, 1, 28, 28)), "mlp": rng.uniform(0, 1, (4, 1, 784)),
              "grouped": rng.standard_normal((4, 1, 4, 9, 9))}
    paths = {name: folder / f"{name}.npz" for name in arrays}
    for name, array in arrays.items():
        np.savez(paths[name], x=array.astype(np.float32))
    paths["digits"] = digits[0] / "digits_calibration.npz"
    return paths


SOURCES = {"lenet": ROOT / "samples" / "lenet.loom", "mlp": ROOT / "samples" / "mlp.loom",
           "digits": ROOT / "samples" / "digits" / "digits_mlp.loom", "grouped": GROUPED}


@functools.cache
def _quantized(model: str, scheme: str, calibration: str, weights: str | None) -> str:
    module = select_model(load_module(SOURCES[model], weights), None)
    pipeline = model_pipeline(CompileOptions(quantize=scheme, calibration=calibration))
    PassManager.from_pipeline(make_context(), pipeline).run(module)
    return str(module)


def quantized(model: str, scheme: str, calibrations, digits) -> ModuleOp:
    """The model after the model pipeline with `scheme`: what the target consumes and is checked against."""
    weights = str(digits[0] / "digits_mlp.npz") if model == "digits" else None
    return parse_mlir(_quantized(model, scheme, str(calibrations[model]), weights))


def inputs_for(model: str, artifact, digits, count: int = 2) -> list[dict[str, np.ndarray]]:
    if model == "digits":
        return [{"x": row[None]} for row in digits[1][:count]]
    return [random_inputs(artifact.signature, seed) for seed in range(count)]


def quantized_products(module: ModuleOp) -> list:
    return [op for op in module.walk() if isinstance(op, quant.MatmulOp | quant.Conv2dOp)]


# --------------------------------------------------------------------------
# Every scheme, against the interpreter on the quantized module
# --------------------------------------------------------------------------


# lenet and the digits classifier on both arrays; the larger mlp sample on one each.
CASES = [(model, scheme, *config) for model in ("lenet", "digits") for scheme in SCHEMES for config in CONFIGS] + [
    ("mlp", scheme, *CONFIGS[i % 2]) for i, scheme in enumerate(SCHEMES)]


@pytest.mark.parametrize("model, scheme, array, dataflow", CASES)
def test_quantized_models_match_the_interpreter(model, scheme, array, dataflow, calibrations, digits) -> None:
    module = quantized(model, scheme, calibrations, digits)
    artifact = compiler.compile(module, target="systolic", options=options(array, dataflow))
    float_products = any(isinstance(op, nn.MatmulOp | nn.Conv2dOp) for op in module.walk())
    assert float_products != (scheme in INT8_SCHEMES) or scheme == "mixed"  # mixed: the budget decides
    for inputs in inputs_for(model, artifact, digits):
        result = compiler.check(artifact, inputs)
        for name, want in result.reference.items():
            if float_products:  # the array sums in another order than the interpreter
                np.testing.assert_allclose(result.outputs[name], want, rtol=1e-5, atol=1e-5, err_msg=name)
            else:
                np.testing.assert_array_equal(result.outputs[name], want, err_msg=name)
    # every integer layer is on the array, and only conversions and non-products are left to the host
    report = artifact.report
    on_array = [layer for layer in report["layers"] if layer["fused"][0].startswith("quant.")]
    assert len(on_array) == len(quantized_products(module))
    assert {h["op"] for h in report["host_ops"]} <= {"quant.quantize", "quant.dequantize", "maxpool2d", "reshape",
                                                     "transpose", "relu", "mul", "softmax"}


def test_digits_accuracy_on_the_array_equals_the_cpu(calibrations, digits) -> None:
    """int8-per-channel: the same logits as the CPU on every test image, hence the same accuracy."""
    module = quantized("digits", "int8-per-channel", calibrations, digits)
    _, test_x, test_y = digits
    logits = {}
    for target, extra in (("cpu", CompileOptions()), ("systolic", options("16x16", "ws"))):
        artifact = compiler.compile(module, target=target, options=extra)
        logits[target] = np.stack([artifact.run(x=row[None])["logits"][0] for row in test_x])
    np.testing.assert_array_equal(logits["systolic"], logits["cpu"])
    assert np.mean(np.argmax(logits["systolic"], axis=1) == test_y) >= 0.95


@pytest.mark.parametrize("array, dataflow", [("4x4", "is"), ("8x8", "ws")])
def test_grouped_strided_convolutions_with_zero_point_padding(array, dataflow, calibrations, digits) -> None:
    module = quantized("grouped", "int8-per-channel", calibrations, digits)
    artifact = compiler.compile(module, target="systolic", options=options(array, dataflow))
    assert [layer["groups"] for layer in artifact.report["layers"]] == [1, 8]
    program = artifact.compiled.program
    assert {i["pad_value"] for i in program if i.mnemonic == "view.im2col"} - {0}  # a non-zero input zero point
    requantizing = [i for i in program if i.mnemonic == "post" and isa.POST_MODES[i["mode"]] == "requant"]
    assert requantizing and all(i["per_channel"] for i in requantizing)  # h; d's accumulators are dequantized
    assert isa.assemble(isa.disassemble(program)) == program == isa.from_binary(isa.to_binary(program))
    for seed in range(3):
        result = compiler.check(artifact, random_inputs(artifact.signature, seed))
        np.testing.assert_array_equal(result.outputs["d"], result.reference["d"])


def test_without_fusion_the_array_returns_accumulators(calibrations, digits) -> None:
    module = quantized("lenet", "int8", calibrations, digits)
    artifact = compiler.compile(module, target="systolic", options=CompileOptions(fusion=False))
    assert [layer["fused"] for layer in artifact.report["layers"]] == [["quant.conv2d"]] * 2 + [["quant.matmul"]] * 3
    assert [h["op"] for h in artifact.report["host_ops"]].count("quant.requantize") == 4
    result = compiler.check(artifact, random_inputs(artifact.signature, 5))
    np.testing.assert_array_equal(result.outputs["logits"], result.reference["logits"])


# --------------------------------------------------------------------------
# The lowering
# --------------------------------------------------------------------------


def _expected_gemm(product) -> dict:
    """What the gemm replacing a quantized product should hold: the bias
    minus zp * (column sums of the weights), the padding value, and the
    requantization (with relu where the clamp starts at the zero point)."""
    p = product.params()
    zero_point = p.get("input_zero_point", p.get("lhs_zero_point"))
    user = next(iter(product.result.uses)).operation
    bias = product.operands[2] if isinstance(product, quant.Conv2dOp) else user.operands[1]
    requantize = next(iter(user.result.uses)).operation if isinstance(user, nn.AddOp) else user
    weights = product.operands[1].owner.array().astype(np.int64)
    column_sums = weights.reshape(weights.shape[0], -1).sum(axis=1) if weights.ndim == 4 else weights.sum(axis=0)
    expected = {"bias": bias.owner.array().astype(np.int64) - zero_point * column_sums,
                "pad": zero_point if isinstance(product, quant.Conv2dOp) else 0, "requant": None, "relu": False}
    if isinstance(requantize, quant.RequantizeOp):
        r = requantize.params()
        expected["requant"] = sy.Requantization(tuple(r["multiplier"]), tuple(r["shift"]), r["zero_point"])
        expected["relu"] = r["clamp"][0] == r["zero_point"] != -128
    return expected


def test_zero_points_fold_into_the_bias_and_requantization_into_the_output_unit(calibrations, digits) -> None:
    module = quantized("lenet", "int8-per-channel", calibrations, digits)
    expected = {op.attributes["loom.quant"].data["layer"].data: _expected_gemm(op) for op in quantized_products(module)}
    PassManager.from_pipeline(make_context(), "convert-to-systolic,dce").run(module)
    gemms = [op for op in module.walk() if isinstance(op, sy.GemmOp)]
    assert [g.layer.data for g in gemms] == list(expected)
    for gemm in gemms:
        want = expected[gemm.layer.data]
        np.testing.assert_array_equal(gemm.bias.owner.array(), want["bias"])
        assert gemm.padding_value() == want["pad"]
        assert gemm.requantization() == want["requant"] and (gemm.relu is not None) == want["relu"]
    assert [g.requantization() is not None and g.requantization().per_channel for g in gemms] == [True] * 4 + [False]
    assert gemms[-1].result.type.element_type.width.data == 32  # dequantized on the host
    host = {op.name: op.attributes[sy.HOST_ATTR].data for op in module.walk() if sy.HOST_ATTR in op.attributes}
    assert "converts floats to integers" in host["quant.quantize"]
    assert "converts integers to floats" in host["quant.dequantize"]

    PassManager.from_pipeline(make_context(), "tile-systolic").run(module)
    kernels = [op for op in module.walk() if isinstance(op, sy.KernelOp)]
    posts = [op for kernel in kernels[:-1] for op in kernel.body.ops if isinstance(op, sy.PostprocessOp)]
    assert posts and all(post.mode.data == "requant" and post.scales is not None for post in posts)
    scales = kernels[0].inputs[3].owner.array()
    np.testing.assert_array_equal(scales, [gemms[0].multiplier.get_values(), gemms[0].shift.get_values()])


@pytest.mark.parametrize(
    "types, requant, message",
    [
        (("f32", "f32", "f32", "f32"), (1, 1, 0), "only i8 products are requantized"),
        (("i8", "i8", "i8", "i32"), (1, 1, 0), "i8 operands give i8 results when requantized"),
        (("i8", "i8", "i8", "i8"), (1, 1, 0), "the bias must hold 3 i32 values"),
        (("i8", "i8", "i32", "i8"), None, "the bias must hold 3 i8 values"),
        (("i8", "i8", "i32", "i8"), (1, 0, 0), "shifts in \\[1, 62\\]"),
        (("i8", "i8", "i32", "i8"), (1, 1, 200), "zero point in \\[-128, 127\\]"),
    ],
)
def test_quantized_gemms_are_verified(types, requant, message) -> None:
    x, w, bias, y = (nn.DTYPES[t] for t in types)
    block = Block(arg_types=[nn.tensor(x, [2, 4]), nn.tensor(w, [4, 3]), nn.tensor(bias, [3])])
    requantization = None if requant is None else sy.Requantization((requant[0],), (requant[1],), requant[2])
    gemm = sy.GemmOp(*block.args, nn.tensor(y, [2, 3]), layer="l", fused=["quant.matmul"], relu=False,
                     requant=requantization)
    with pytest.raises(VerifyException, match=message):
        gemm.verify()


def _model(x_type, w_type, products) -> ModuleOp:
    """A model of quant.matmuls of input x by weights (an input, or constant
    when `w_type` is an array), one output per (lhs, rhs) zero-point pair."""
    args = [x_type] + ([] if isinstance(w_type, np.ndarray) else [w_type])
    block = Block(arg_types=args)
    ops = []
    if isinstance(w_type, np.ndarray):
        ops.append(nn.ConstantOp(w_type, i8, "w"))
        w = ops[-1].result
    else:
        w = block.args[1]
    for lhs, rhs in products:
        ops.append(quant.MatmulOp.make([block.args[0], w], lhs_zero_point=lhs, rhs_zero_point=rhs))
    outputs = [op.result for op in ops if isinstance(op, quant.MatmulOp)]
    block.add_ops([*ops, func.ReturnOp(*outputs)])
    f = func.FuncOp("m", (args, [v.type for v in outputs]), Region(block))
    f.attributes["loom.model"] = UnitAttr()
    f.attributes["loom.inputs"] = ArrayAttr([StringAttr(n) for n in ("x", "w")[:len(args)]])
    f.attributes["loom.outputs"] = ArrayAttr([StringAttr(f"y{i}") for i in range(len(outputs))])
    return ModuleOp([f])


def test_what_the_integer_datapath_cannot_take_stays_on_the_host() -> None:
    rng = np.random.default_rng(0)
    weights = rng.integers(-128, 128, (20, 5)).astype(np.int8)
    x_type = nn.tensor(i8, [3, 20])
    constant = _model(x_type, weights, [(5, 3), (5, 0)])
    computed = _model(x_type, nn.tensor(i8, [20, 5]), [(5, 0), (0, 0)])
    for module, on_host in ((constant, "a weight zero point"), (computed, "needs constant weights")):
        artifact = compiler.compile(module, target="systolic", options=options("4x4", "ws"))
        (host,) = artifact.report["host_ops"]
        assert host["op"] == "quant.matmul" and on_host in host["reason"]
        assert len(artifact.report["layers"]) == 1
        inputs = {"x": rng.integers(-128, 128, (3, 20)).astype(np.int8),
                  "w": rng.integers(-128, 128, (20, 5)).astype(np.int8)}
        result = compiler.check(artifact, {spec.name: inputs[spec.name] for spec in artifact.signature.inputs})
        for name, want in result.reference.items():
            np.testing.assert_array_equal(result.outputs[name], want)


# --------------------------------------------------------------------------
# The instruction set and the output unit
# --------------------------------------------------------------------------


CONFIG = ArrayConfig(4, 4, "ws", 4096, 4096, 4096, 1 << 20, 8.0, 10, 1e9, ("i8",))


def test_new_fields_default_to_the_old_behaviour() -> None:
    post = isa.make("post", tag=1, bias=0, relu=0, mode=2, out_dtype=0, multiplier=3, shift=4, zero_point=-7)
    assert post["per_channel"] == 0
    assert isa.assemble(isa.format_instruction(post).replace(" per_channel=0", "")) == [post]
    channel = isa.make("post", tag=1, bias=1, relu=1, mode=2, out_dtype=0, multiplier=0, shift=0, zero_point=5,
                       per_channel=1)
    assert isa.decode(isa.encode(channel)) == channel
    view = isa.make("view.im2col", slot=1, spad=0, dtype=0, offset=0, rows=9, cols=9, oh0=0, ow0=0, c0=0, kh0=0, kw0=0, out_w=3,
                    kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, dilation_h=1, dilation_w=1, row0=1, col0=1,
                    band_h=3, band_w=3, channel_stride=9, transpose=0, pad_value=-3)
    assert isa.decode(isa.encode(view))["pad_value"] == -3


def test_output_unit_requantizes_per_column_after_wrapping_the_bias_add() -> None:
    acc = np.array([[-300, 2**31 - 10, 0, 5], [6, 7, 100000, -100000], [13, 14, 15, -2**31]], np.int32)
    bias = np.array([10, 20, 30, -40], np.int32)  # wraps column 1 (and 3) past the i32 range
    multipliers = np.array([3, 1 << 30, 5, 1 << 29], np.int32)
    shifts = np.array([2, 31, 1, 33], np.int32)
    dram = np.zeros(512, np.uint8)
    dram[0:48] = acc.view(np.uint8).reshape(-1)
    dram[64:80] = bias.view(np.uint8)
    dram[128:160] = np.stack([multipliers, shifts]).view(np.uint8).reshape(-1)
    program = """
        config rows=4 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32
        dma.load tag=0 spad=ofmap spad_addr=0 dram_addr=0 rows=3 row_bytes=16 dram_stride=16 spad_stride=16
        dma.load tag=1 spad=filter spad_addr=0 dram_addr=64 rows=1 row_bytes=16 dram_stride=16 spad_stride=16
        dma.load tag=2 spad=filter spad_addr=64 dram_addr=128 rows=2 row_bytes=16 dram_stride=16 spad_stride=16
        wait tag=0
        wait tag=1
        wait tag=2
        view slot=4 spad=ofmap dtype=i32 offset=0 rows=3 cols=4 row_stride=4 col_stride=1
        view slot=5 spad=filter dtype=i32 offset=0 rows=1 cols=4 row_stride=0 col_stride=1
        view slot=6 spad=ofmap dtype=i8 offset=64 rows=3 cols=4 row_stride=4 col_stride=1
        view slot=7 spad=filter dtype=i32 offset=64 rows=2 cols=4 row_stride=4 col_stride=1
        post tag=3 bias=1 relu=1 mode=requant out_dtype=i8 multiplier=0 shift=0 zero_point=-5 per_channel=1
        wait tag=3
        dma.store tag=4 spad=ofmap spad_addr=64 dram_addr=256 rows=1 row_bytes=12 dram_stride=12 spad_stride=12
        wait tag=4
        halt
    """
    Simulator(CONFIG).run(isa.assemble(program), dram)
    summed = (acc.astype(np.int64) + bias).astype(np.int32)  # the unit's adder wraps like the i32 IR ops
    params = {"multiplier": multipliers.tolist(), "shift": shifts.tolist(), "axis": 1, "zero_point": -5,
              "clamp": [-5, 127]}
    np.testing.assert_array_equal(dram[256:268].view(np.int8).reshape(3, 4), quant.requantize_values(summed, params))


def test_im2col_padding_reads_the_pad_value() -> None:
    sim = Simulator(CONFIG)
    sim.spads[0][:9] = np.arange(1, 10, dtype=np.int8).view(np.uint8)
    sim.views = [None] * isa.VIEW_SLOTS
    sim.views[1] = isa.make("view.im2col", slot=1, spad=0, dtype=0, offset=0, rows=9, cols=9, oh0=0, ow0=0, c0=0, kh0=0, kw0=0,
                            out_w=3, kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, dilation_h=1, dilation_w=1,
                            row0=1, col0=1, band_h=3, band_w=3, channel_stride=9, transpose=0, pad_value=-7)
    image = np.pad(np.arange(1, 10).reshape(3, 3), 1, constant_values=-7)
    expected = np.array([image[r:r + 3, c:c + 3].reshape(-1) for r in range(3) for c in range(3)])
    np.testing.assert_array_equal(sim.read(1), expected)
