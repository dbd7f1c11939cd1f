"""Quantized ONNX models against onnxruntime: QLinearMatMul and QLinearConv
models, QDQ models made by onnxruntime's own quantize_static, and the
errors for what Loom does not implement. The reference interpreter and the
CPU target must give exactly onnxruntime's integers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, StringAttr, UnitAttr, i32
from xdsl.ir import Block, Region

import compiler
from compiler import interpreter
from compiler.diagnostics import LoomError
from compiler.onnx import import_onnx, import_to_loom
from compiler.onnx.quant_ops import QUANTIZATION_OPERATORS
from dialects import quant
from dialects.nn import tensor
from onnx_builders import loom_feeds, make_model, run_onnxruntime

RNG = np.random.default_rng(11)
U8, S8 = TensorProto.UINT8, TensorProto.INT8


def randn(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.normal(size=shape) * scale).astype(np.float32)


def integers(elem_type: int, *shape: int) -> np.ndarray:
    if elem_type == U8:
        return RNG.integers(0, 256, shape).astype(np.uint8)
    return RNG.integers(-127, 128, shape).astype(np.int8)


def zero_point(elem_type: int, value: int, count: int | None = None) -> np.ndarray:
    """A zero point of `elem_type`, `value` above the middle of its range."""
    dtype = np.uint8 if elem_type == U8 else np.int8
    value += 128 if elem_type == U8 else 0
    return np.full(count, value, dtype) if count else np.array(value, dtype)


def f32(value) -> np.ndarray:
    return np.asarray(value, np.float32)


def ops_of(module) -> list[str]:
    return [op.name for op in module.ops.first.body.block.ops]


def assert_exact_on_interpreter_and_cpu(model, feeds: list[dict[str, np.ndarray]]) -> object:
    """Every output of every feed equal to onnxruntime's, bit for bit, on
    the interpreter and on the CPU target; returns the imported module."""
    module = import_onnx(model)
    artifact = compiler.compile(module, target="cpu")
    for feed in feeds:
        expected = run_onnxruntime(model, feed)
        inputs = loom_feeds(module, model, feed)
        for got in (interpreter.interpret(module, inputs), artifact.run(**inputs)):
            assert sorted(got) == sorted(expected)
            for name, want in expected.items():
                np.testing.assert_array_equal(got[name], want, err_msg=name)
    return module


# ---- QLinearMatMul and QLinearConv --------------------------------------------------------


@dataclass
class QLinearCase:
    """x (float) -> QuantizeLinear -> the QLinear node -> y, dequantized
    unless it is INT8 (Loom has no UINT8 outputs)."""

    id: str
    node: object
    x_shape: tuple[int, ...]
    x_type: int
    y_type: int
    initializers: dict[str, np.ndarray]
    x_scale: float = 0.05
    x_zero_point: int = 3
    y_scale: float = 0.4
    y_zero_point: int = -5
    input_scale: float = 1.0
    opset: int = 13

    def model(self):
        initializers = dict(self.initializers)
        initializers |= {
            "x_scale": f32(self.x_scale), "x_zero_point": zero_point(self.x_type, self.x_zero_point),
            "y_scale": f32(self.y_scale), "y_zero_point": zero_point(self.y_type, self.y_zero_point),
        }
        nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero_point"], ["xq"], name="quantize_x"),
                 self.node]
        output, output_type = "yq", TensorProto.INT8
        if self.y_type == U8:
            nodes.append(helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zero_point"], ["y"]))
            output, output_type = "y", TensorProto.FLOAT
        return make_model(nodes, {"x": list(self.x_shape)}, [output], initializers, self.opset, output_type)

    def feeds(self, count: int = 3) -> list[dict[str, np.ndarray]]:
        rng = np.random.default_rng(0)
        return [{"x": (rng.normal(size=self.x_shape) * self.input_scale).astype(np.float32)} for _ in range(count)]


def qlinear_matmul(a_type: int, b_type: int, y_type: int, a_shape: tuple[int, ...], k: int, n: int,
                   per_column: bool, b_scale: float = 0.01, **kwargs) -> QLinearCase:
    b_scale = RNG.uniform(0.002, 0.02, n).astype(np.float32) if per_column else f32(b_scale)
    initializers = {
        "b": integers(b_type, k, n), "b_scale": b_scale,
        "b_zero_point": zero_point(b_type, 0, n if per_column else None),
    }
    node = helper.make_node(
        "QLinearMatMul", ["xq", "x_scale", "x_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"],
        ["yq"], name="matmul",
    )
    return QLinearCase(f"matmul_{kwargs.pop('id')}", node, a_shape, a_type, y_type, initializers, **kwargs)


def qlinear_conv(x_type: int, w_type: int, y_type: int, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
                 per_channel: bool, bias: bool, **attributes) -> QLinearCase:
    channels = w_shape[0]
    w_scale = RNG.uniform(0.002, 0.02, channels).astype(np.float32) if per_channel else f32(0.01)
    initializers = {
        "w": integers(w_type, *w_shape), "w_scale": w_scale,
        "w_zero_point": zero_point(w_type, 0, channels if per_channel else None),
    }
    inputs = ["xq", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point"]
    if bias:
        initializers["bias"] = RNG.integers(-3000, 3000, channels).astype(np.int32)
        inputs.append("bias")
    case_id = attributes.pop("id")
    node = helper.make_node("QLinearConv", inputs, ["yq"], name="conv", **attributes)
    return QLinearCase(f"conv_{case_id}", node, x_shape, x_type, y_type, initializers, y_scale=0.8)


QLINEAR_CASES = [
    qlinear_matmul(U8, S8, U8, (6, 32), 32, 12, per_column=True, id="u8_s8_per_column"),
    qlinear_matmul(S8, S8, S8, (2, 5, 24), 24, 7, per_column=False, id="s8_batched_int8_output"),
    # Power-of-two scales (a factor of 1/8) put one sum in eight exactly
    # halfway between two integers: those must round to even.
    qlinear_matmul(U8, U8, U8, (8, 16), 16, 8, per_column=False, id="u8_u8_ties_to_even",
                   x_scale=2.0**-4, b_scale=2.0**-3, y_scale=2.0**-4, input_scale=0.1),
    qlinear_conv(U8, S8, U8, (1, 3, 9, 9), (4, 3, 3, 3), per_channel=True, bias=True, strides=[2, 2],
                 pads=[1, 1, 1, 1], id="u8_s8_per_channel_bias_strided"),
    qlinear_conv(S8, S8, S8, (2, 4, 7, 7), (6, 2, 3, 3), per_channel=False, bias=False, group=2,
                 dilations=[2, 2], pads=[2, 2, 2, 2], id="s8_grouped_dilated"),
    qlinear_conv(U8, U8, U8, (1, 2, 6, 6), (3, 2, 2, 2), per_channel=False, bias=True, kernel_shape=[2, 2],
                 auto_pad="VALID", id="u8_u8_valid"),
]


@pytest.mark.parametrize("case", QLINEAR_CASES, ids=lambda c: c.id)
def test_qlinear_operators_match_onnxruntime_exactly(case: QLinearCase):
    module = assert_exact_on_interpreter_and_cpu(case.model(), case.feeds())
    assert "quant.requantize_float" in ops_of(module)


def test_ties_really_occur_in_the_ties_case():
    """The ties case only tests ties if sums land halfway (zero points
    cancel in the differences, so Loom's stored ones do here)."""
    case = next(c for c in QLINEAR_CASES if c.id.endswith("ties_to_even"))
    x = np.concatenate([feed["x"] for feed in case.feeds()])
    q = quant.quantize_values(x, quant.UniformQuantAttr.get(case.x_scale, case.x_zero_point, 8))
    sums = (q - case.x_zero_point) @ (case.initializers["b"].astype(np.int64) - 128)
    scaled = sums / 8
    assert np.mean(scaled - np.floor(scaled) == 0.5) > 0.05
    assert np.mean(np.abs(scaled) < 120) > 0.9  # mostly not saturated


# ---- QDQ models --------------------------------------------------------------------------


class Samples(CalibrationDataReader):
    def __init__(self, shape: tuple[int, ...], count: int = 8):
        self._samples = iter([{"x": randn(*shape)} for _ in range(count)])

    def get_next(self):
        return next(self._samples, None)


def quantized(float_model, tmp_path, shape: tuple[int, ...], **options):
    """`float_model` in the QDQ format, by onnxruntime's quantize_static."""
    source, target = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    source.write_bytes(float_model.SerializeToString())
    quantize_static(str(source), str(target), Samples(shape), quant_format=QuantFormat.QDQ,
                    weight_type=QuantType.QInt8, **options)
    return target


def float_mlp():
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1, name="fc2"),
    ]
    weights = {"w1": randn(32, 20, scale=0.3), "b1": randn(32, scale=0.1),
               "w2": randn(10, 32, scale=0.3), "b2": randn(10, scale=0.1)}
    return make_model(nodes, {"x": [4, 20]}, ["y"], weights, opset=13)


def float_cnn():
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1], group=2,
                         name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc"),
    ]
    weights = {"c1w": randn(4, 3, 3, 3, scale=0.3), "c1b": randn(4, scale=0.1),
               "c2w": randn(8, 2, 3, 3, scale=0.3), "c2b": randn(8, scale=0.1),
               "fw": randn(10, 8, scale=0.3), "fb": randn(10, scale=0.1)}
    return make_model(nodes, {"x": [1, 3, 12, 12]}, ["y"], weights, opset=13)


@pytest.mark.parametrize(
    "options",
    [{"activation_type": QuantType.QInt8, "per_channel": True},
     {"activation_type": QuantType.QUInt8, "per_channel": False}],
    ids=["s8_per_channel", "u8_per_tensor"],
)
def test_quantize_static_mlp_runs_on_integers_like_onnxruntime(tmp_path, options):
    path = quantized(float_mlp(), tmp_path, (4, 20), **options)
    model = onnx.load(str(path))
    module = assert_exact_on_interpreter_and_cpu(model, [{"x": randn(4, 20, scale=2.0)} for _ in range(4)])
    ops = ops_of(module)
    assert ops.count("quant.matmul") == 2 and "nn.matmul" not in ops
    assert ops.count("quant.requantize_float") == 2
    # The systolic target runs the integer matmuls on the array.
    feed = {"x": randn(4, 20, scale=2.0)}
    systolic = compiler.compile(module, target="systolic")
    np.testing.assert_array_equal(systolic.run(**feed)["y"], interpreter.interpret(module, feed)["y"])
    assert "quant.matmul" not in {op["op"] for op in systolic.report["host_ops"]}


def test_quantize_static_cnn_runs_on_integers_like_onnxruntime(tmp_path):
    path = quantized(float_cnn(), tmp_path, (1, 3, 12, 12), activation_type=QuantType.QUInt8, per_channel=True)
    model = onnx.load(str(path))
    module = assert_exact_on_interpreter_and_cpu(model, [{"x": randn(1, 3, 12, 12)} for _ in range(4)])
    ops = ops_of(module)
    assert ops.count("quant.conv2d") == 2 and ops.count("quant.matmul") == 1
    assert "nn.conv2d" not in ops and "nn.matmul" not in ops


def test_qdq_operators_without_an_integer_form_compute_what_the_graph_says(tmp_path):
    """A residual block: the QDQ Add and GlobalAveragePool stay float ops
    between dequantize and quantize, as written; onnxruntime without its
    graph rewrites (which substitute its own integer kernels) runs exactly that."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "x"], ["a"]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["y"]),
    ]
    weights = {"w": randn(4, 4, 3, 3, scale=0.3), "b": randn(4, scale=0.1)}
    path = quantized(make_model(nodes, {"x": [1, 4, 6, 6]}, ["y"], weights, opset=13), tmp_path, (1, 4, 6, 6),
                     activation_type=QuantType.QUInt8, per_channel=True)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    module = import_onnx(path)
    assert {"quant.conv2d", "nn.add", "nn.global_avgpool"} <= set(ops_of(module))
    for _ in range(8):
        x = randn(1, 4, 6, 6)
        np.testing.assert_array_equal(interpreter.interpret(module, {"x": x})["y"], session.run(None, {"x": x})[0])


def test_qdq_relu_becomes_the_lower_clamp():
    """DQ -> MatMul -> Relu -> Q with a zero point inside the range: the ReLU
    is the clamp at the output zero point."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=1),
        helper.make_node("MatMul", ["xd", "wd"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    initializers = {
        "xs": f32(0.02), "xz": np.uint8(130), "w": integers(S8, 16, 6),
        "ws": RNG.uniform(0.005, 0.02, 6).astype(np.float32), "wz": np.zeros(6, np.int8),
        "ys": f32(0.01), "yz": np.int8(-20),
    }
    model = make_model(nodes, {"x": [5, 16]}, ["y"], initializers, opset=13)
    module = assert_exact_on_interpreter_and_cpu(model, [{"x": randn(5, 16)} for _ in range(3)])
    (requantize,) = [op for op in module.ops.first.body.block.ops if isinstance(op, quant.FloatRequantizeOp)]
    assert requantize.params()["clamp"] == [-20, 127]
    assert "nn.relu" not in ops_of(module)


def test_per_axis_and_blocked_quantization():
    """Per-axis QuantizeLinear/DequantizeLinear (UINT8) and blocked INT4
    weights (opset 21); the weights have no integer form for a matmul
    (scales vary along K), so the matmul stays in float."""
    k, n, block = 10, 6, 4
    weights = helper.make_tensor("w", TensorProto.INT4, [k, n], RNG.integers(-8, 8, k * n).tolist())
    weight_zero_points = helper.make_tensor("wz", TensorProto.INT4, [3, n], RNG.integers(-3, 3, 3 * n).tolist())
    nodes = [
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0, block_size=block),
        helper.make_node("MatMul", ["x", "wd"], ["m"]),
        helper.make_node("QuantizeLinear", ["x", "qs", "qz"], ["xq"], axis=1),
        helper.make_node("DequantizeLinear", ["xq", "qs", "qz"], ["xd"], axis=1),
    ]
    initializers = {
        "w": weights, "ws": RNG.uniform(0.05, 0.2, (3, n)).astype(np.float32), "wz": weight_zero_points,
        "qs": RNG.uniform(0.005, 0.05, k).astype(np.float32), "qz": RNG.integers(0, 256, k).astype(np.uint8),
    }
    model = make_model(nodes, {"x": [3, k]}, ["wd", "xd", "m"], initializers, opset=21)
    model.ir_version = 10
    feed = {"x": randn(3, k)}
    expected = run_onnxruntime(model, feed)
    module = import_onnx(model)
    assert "nn.matmul" in ops_of(module)
    for got in (interpreter.interpret(module, feed), compiler.compile(module, target="cpu").run(**feed)):
        np.testing.assert_array_equal(got["wd"], expected["wd"])
        np.testing.assert_array_equal(got["xd"], expected["xd"])
        np.testing.assert_allclose(got["m"], expected["m"], rtol=1e-5, atol=1e-5)


def test_requantize_float_on_the_cpu_rounds_half_to_even_and_saturates():
    """Ties to even, the clamp (narrowed like a ReLU's), per-channel scales,
    i32 extremes and products beyond the f32 range, on the CPU target."""
    acc = np.array([1, 3, 5, -1, -3, 7, 2**31 - 1, -(2**31)], np.int32)
    block = Block(arg_types=[tensor(i32, [2, 8])])
    op = quant.FloatRequantizeOp.make([block.args[0]], scale=[0.5, 1e30], axis=0, zero_point=4, clamp=[-10, 100])
    block.add_ops([op, func.ReturnOp(op.result)])
    f = func.FuncOp("requantize", ([tensor(i32, [2, 8])], [op.result.type]), Region(block))
    f.attributes |= {"loom.model": UnitAttr(), "loom.inputs": ArrayAttr([StringAttr("acc")]),
                     "loom.outputs": ArrayAttr([StringAttr("y")])}
    module = ModuleOp([f])
    want = [[4, 6, 6, 4, 2, 8, 100, -10], [100, 100, 100, -10, -10, 100, 100, -10]]
    feed = {"acc": np.stack([acc, acc])}
    np.testing.assert_array_equal(interpreter.interpret(module, feed)["y"], want)
    np.testing.assert_array_equal(compiler.compile(module, target="cpu").run(**feed)["y"], want)


# ---- import to a file -------------------------------------------------------------------


def test_loom_import_writes_a_quantized_model_as_mlir(tmp_path):
    case = QLINEAR_CASES[0]
    model = case.model()
    path = tmp_path / "q.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(LoomError, match=r"write its IR instead \(-o .*q\.mlir\)"):
        import_to_loom(path, tmp_path / "q.loom")
    assert import_to_loom(path, tmp_path / "q.mlir") == [tmp_path / "q.mlir"]
    feed = case.feeds(1)[0]
    got = compiler.compile(str(tmp_path / "q.mlir"), target="cpu").run(**feed)
    np.testing.assert_array_equal(got["y"], run_onnxruntime(model, feed)["y"])


# ---- errors --------------------------------------------------------------------------------


def quantize(output: str = "q", **attributes):
    return helper.make_node("QuantizeLinear", ["x", "s", "z"], [output], name="quant", **attributes)


SCALAR = {"s": f32(0.1), "z": np.uint8(128)}


ERRORS = [
    ("unsigned_result_into_add",
     make_model([quantize(), helper.make_node("Add", ["q", "q"], ["a"], name="add"),
                 helper.make_node("DequantizeLinear", ["a", "s", "z"], ["y"])], {"x": [4]}, ["y"], SCALAR),
     "QuantizeLinear node 'quant': its UINT8 result reaches Add (node 'add')"),
    ("unsigned_graph_output",
     make_model([quantize(), helper.make_node("Reshape", ["q", "shape"], ["y"])], {"x": [4]}, ["y"],
                SCALAR | {"shape": np.array([2, 2], np.int64)}, output_type=TensorProto.UINT8),
     "QuantizeLinear node 'quant': graph output 'y' is UINT8, which Loom does not have"),
    ("per_row_a_scale",
     make_model([helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sb", "zb"], ["y"], name="mm")],
                {"a": ([3, 4], TensorProto.INT8)}, ["y"],
                {"sa": np.full(3, 0.1, np.float32), "za": np.zeros(3, np.int8), "b": np.ones((4, 2), np.int8),
                 "sb": f32(0.1), "zb": np.int8(0)}, output_type=TensorProto.INT8),
     "QLinearMatMul node 'mm': a_scale of shape [3]: per-row quantization of a is not supported, only per tensor"),
    ("per_channel_weight_zero_points",
     make_model([helper.make_node("QLinearConv", ["x", "s", "z", "w", "ws", "wz", "s", "z"], ["y"], name="qconv")],
                {"x": ([1, 1, 4, 4], TensorProto.INT8)}, ["y"],
                {"s": f32(0.1), "z": np.int8(0), "w": np.ones((2, 1, 3, 3), np.int8),
                 "ws": np.full(2, 0.1, np.float32), "wz": np.array([0, 1], np.int8)}, output_type=TensorProto.INT8),
     "QLinearConv node 'qconv': w_zero_points that differ per channel are not supported"),
    ("asymmetric_padding",
     make_model([helper.make_node("QLinearConv", ["x", "s", "z", "w", "s", "z", "s", "z"], ["y"], name="qconv",
                                  pads=[0, 0, 1, 1])],
                {"x": ([1, 1, 4, 4], TensorProto.INT8)}, ["y"],
                {"s": f32(0.1), "z": np.int8(0), "w": np.ones((2, 1, 3, 3), np.int8)}, output_type=TensorProto.INT8),
     "QLinearConv node 'qconv': asymmetric padding"),
    ("int16_output",
     make_model([quantize(output_dtype=TensorProto.INT16), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])],
                {"x": [4]}, ["y"], {"s": f32(0.1), "z": np.int16(0)}, opset=21),
     "QuantizeLinear node 'quant': quantizing to values of type INT16 is not supported"),
    ("float16_input",
     make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
                {"x": ([4], TensorProto.FLOAT16)}, ["y"], {"s": np.float16(0.1), "z": np.int8(0)}, opset=19,
                output_type=TensorProto.FLOAT16),
     "QuantizeLinear node 'quant': quantizing f16[4] values is not supported (only FLOAT)"),
    ("precision",
     make_model([quantize(precision=TensorProto.FLOAT16), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
                {"x": [4]}, ["y"], SCALAR, opset=23),
     "QuantizeLinear node 'quant': precision=FLOAT16 is not supported (only FLOAT)"),
    ("scale_not_constant",
     make_model([helper.make_node("DequantizeLinear", ["x", "s"], ["y"], name="dq")],
                {"x": ([4], TensorProto.INT8), "s": [1]}, ["y"]),
     "DequantizeLinear node 'dq': the scale (input 's') must be a constant"),
    ("per_axis_scale_size",
     make_model([quantize(axis=1), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)],
                {"x": [2, 4]}, ["y"], {"s": np.full(3, 0.1, np.float32), "z": np.zeros(3, np.uint8)}),
     "QuantizeLinear node 'quant': per-axis scales must have one value per index of dim 1 (4), got shape [3]"),
]


@pytest.mark.parametrize("model, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_unsupported_quantization_is_an_error_naming_the_node(model, message):
    with pytest.raises(LoomError) as info:
        import_onnx(model)
    assert message in info.value.message


def test_every_quantization_operator_is_exercised():
    covered = {node.op_type for case in QLINEAR_CASES for node in case.model().graph.node}
    assert QUANTIZATION_OPERATORS <= covered
