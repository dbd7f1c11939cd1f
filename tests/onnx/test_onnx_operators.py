"""Each supported operator, with the attributes that change its meaning,
against onnxruntime: run by the reference interpreter and the CPU target,
and written as .loom and read back, which must compute bit-identical results."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from onnx import TensorProto, helper

import compiler
from compiler import interpreter
from compiler.frontend import parse_source
from compiler.loom_writer import render_loom
from compiler.onnx import import_onnx, supported_operators
from compiler.onnx.quant_ops import QUANTIZATION_OPERATORS
from dialects.nn import round_to_bf16
from onnx_builders import ELEMENT_TYPES, loom_feeds, make_model, max_abs_error, run_onnxruntime, tensor

RNG = np.random.default_rng(7)


def randn(*shape: int) -> np.ndarray:
    return RNG.normal(size=shape).astype(np.float32)


def node(op_type: str, inputs: list[str], **attributes):
    return helper.make_node(op_type, inputs, ["y"], **attributes)


def ints(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@dataclass
class Case:
    id: str
    nodes: list
    inputs: dict[str, np.ndarray]
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    opset: int = 17
    tolerance: float = 1e-5

    @property
    def op_types(self) -> set[str]:
        return {n.op_type for n in self.nodes}


def unary(op_type: str, x: np.ndarray, opset: int = 17, **attributes) -> Case:
    return Case(op_type.lower(), [node(op_type, ["x"], **attributes)], {"x": x}, opset=opset)


def scalar(name: str, value, dtype=np.float32):
    return helper.make_node("Constant", [], [name], value=tensor(np.array(value, dtype)))


CASES = [
    # elementwise, with numpy broadcasting
    Case("add_broadcast", [node("Add", ["x", "b"])], {"x": randn(2, 3, 4)}, {"b": randn(4)}),
    Case("sub_two_way_broadcast", [node("Sub", ["x", "z"])], {"x": randn(2, 1, 4), "z": randn(3, 1)}),
    Case("mul", [node("Mul", ["x", "z"])], {"x": randn(3, 4), "z": randn(3, 4)}),
    Case("div_by_constant_scalar", [scalar("c", 3.0), node("Div", ["x", "c"])], {"x": randn(2, 5)}),
    Case("constant_scalar_on_the_left", [scalar("c", -2.5), node("Sub", ["c", "x"])], {"x": randn(2, 5)}),
    Case("div_int32_truncates", [node("Div", ["x", "z"])],
         {"x": np.array([7, -7, 9, -9], np.int32), "z": np.array([2, 2, -4, -4], np.int32)}),
    Case("add_float16", [node("Add", ["x", "z"])], {"x": randn(3, 4).astype(np.float16), "z": randn(4).astype(np.float16)},
         tolerance=1e-3),
    unary("Relu", randn(3, 4)),
    unary("Sigmoid", randn(3, 4)),
    unary("Tanh", randn(3, 4)),
    unary("Exp", randn(3, 4)),
    unary("Sqrt", np.abs(randn(3, 4))),
    unary("Neg", randn(3, 4)),
    unary("Identity", randn(3, 4)),
    unary("Gelu", randn(3, 4), opset=20, approximate="tanh"),
    Case("dropout_inference", [node("Dropout", ["x", "ratio"])], {"x": randn(3, 4)}, {"ratio": np.array(0.3, np.float32)}),
    # linear algebra
    Case("matmul_batched", [node("MatMul", ["x", "w"])], {"x": randn(2, 3, 4)}, {"w": randn(4, 5)}),
    Case("matmul_batch_broadcast", [node("MatMul", ["x", "z"])], {"x": randn(2, 1, 3, 4), "z": randn(3, 4, 2)}),
    Case("matmul_vector_left", [node("MatMul", ["v", "x"])], {"v": randn(4), "x": randn(2, 4, 3)}),
    Case("matmul_vector_right", [node("MatMul", ["x", "v"])], {"x": randn(2, 3, 4), "v": randn(4)}),
    Case("gemm_transposes_alpha_beta", [node("Gemm", ["a", "b", "c"], transA=1, transB=1, alpha=0.5, beta=2.0)],
         {"a": randn(4, 3)}, {"b": randn(5, 4), "c": randn(1, 5)}),
    Case("gemm_without_c", [node("Gemm", ["a", "b"], alpha=1.5)], {"a": randn(3, 4), "b": randn(4, 2)}),
    # normalisation
    Case("softmax_opset13_middle_axis", [node("Softmax", ["x"], axis=1)], {"x": randn(2, 3, 4)}),
    Case("softmax_opset11_flattens_from_axis", [node("Softmax", ["x"], axis=1)], {"x": randn(2, 3, 4)}, opset=11),
    Case("softmax_opset11_default_axis", [node("Softmax", ["x"])], {"x": randn(3, 5)}, opset=11),
    Case("layernorm_two_axes_without_bias", [node("LayerNormalization", ["x", "g"], axis=-2, epsilon=1e-3)],
         {"x": randn(2, 3, 4)}, {"g": randn(3, 4)}),
    Case("batchnorm", [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-2)], {"x": randn(2, 3, 4, 4)},
         {"s": randn(3), "b": randn(3), "m": randn(3), "v": np.abs(randn(3)) + 0.5}),
    # convolution and pooling
    Case("conv_stride_dilation_groups_pads",
         [node("Conv", ["x", "w", "b"], strides=[2, 1], dilations=[1, 2], group=2, pads=[1, 2, 1, 2])],
         {"x": randn(1, 4, 9, 8)}, {"w": randn(6, 2, 3, 3), "b": randn(6)}),
    Case("conv_same_upper_stride2", [node("Conv", ["x", "w"], strides=[2, 2], auto_pad="SAME_UPPER")],
         {"x": randn(1, 2, 9, 9)}, {"w": randn(3, 2, 3, 3)}),
    Case("conv_same_lower", [node("Conv", ["x", "w"], auto_pad="SAME_LOWER", kernel_shape=[3, 3])],
         {"x": randn(1, 2, 6, 6)}, {"w": randn(3, 2, 3, 3)}),
    Case("conv_valid", [node("Conv", ["x", "w"], auto_pad="VALID")], {"x": randn(2, 2, 7, 6)}, {"w": randn(3, 2, 2, 3)}),
    Case("maxpool_padded", [node("MaxPool", ["x"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])],
         {"x": randn(1, 2, 7, 7)}),
    Case("maxpool_default_stride_is_one", [node("MaxPool", ["x"], kernel_shape=[2, 2])], {"x": randn(1, 2, 5, 5)}),
    Case("maxpool_ceil_mode_without_partial_windows",
         [node("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)], {"x": randn(1, 2, 8, 8)}),
    Case("avgpool_count_include_pad", [node("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)],
         {"x": randn(1, 2, 6, 6)}),
    Case("avgpool_unpadded", [node("AveragePool", ["x"], kernel_shape=[2, 2], strides=[2, 2])], {"x": randn(1, 3, 6, 6)}),
    unary("GlobalAveragePool", randn(2, 3, 4, 5)),
    unary("GlobalMaxPool", randn(2, 3, 4, 5)),
    # data movement
    Case("reshape_zero_and_minus_one", [node("Reshape", ["x", "shape"])], {"x": randn(2, 3, 4)}, {"shape": ints(0, -1)}),
    Case("reshape_shape_from_constant_node",
         [helper.make_node("Constant", [], ["shape"], value_ints=[-1, 2, 0]), node("Reshape", ["x", "shape"])],
         {"x": randn(3, 2, 4)}),
    Case("flatten_axis0", [node("Flatten", ["x"], axis=0)], {"x": randn(2, 3, 4)}),
    Case("flatten_axis2", [node("Flatten", ["x"], axis=2)], {"x": randn(2, 3, 4)}),
    Case("flatten_negative_axis", [node("Flatten", ["x"], axis=-1)], {"x": randn(2, 3, 4)}),
    Case("concat_with_an_initializer", [node("Concat", ["x", "c", "z"], axis=1)],
         {"x": randn(2, 1, 3), "z": randn(2, 2, 3)}, {"c": randn(2, 4, 3)}),
    Case("transpose_default_reverses", [node("Transpose", ["x"])], {"x": randn(2, 3, 4)}),
    Case("transpose_perm", [node("Transpose", ["x"], perm=[1, 2, 0])], {"x": randn(2, 3, 4)}),
    Case("slice_inputs_negative_bounds_and_step", [node("Slice", ["x", "starts", "ends", "axes", "steps"])],
         {"x": randn(3, 8, 5)}, {"starts": ints(-7, 1), "ends": ints(2**62, -1), "axes": ints(1, -1), "steps": ints(2, 1)}),
    Case("slice_leading_axes", [node("Slice", ["x", "starts", "ends"])], {"x": randn(4, 6)}, {"starts": ints(1), "ends": ints(3)}),
    Case("slice_attributes_opset9", [node("Slice", ["x"], starts=[0, 2], ends=[1, 100], axes=[0, 2])], {"x": randn(2, 3, 5)}, opset=9),
    Case("split_sizes_input_reordered",
         [helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1), node("Concat", ["c", "a", "b"], axis=1)],
         {"x": randn(2, 7, 3)}, {"sizes": ints(2, 4, 1)}),
    Case("split_num_outputs_uneven",
         [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=-1, num_outputs=3), node("Concat", ["c", "b", "a"], axis=-1)],
         {"x": randn(2, 8)}, opset=18),
    Case("split_equal_parts_opset11", [helper.make_node("Split", ["x"], ["a", "b"]), node("Sub", ["a", "b"])],
         {"x": randn(4, 3)}, opset=11),
    # shape arithmetic the importer evaluates: the second half of the last dim, as exporters spell chunk()
    Case("slice_bounds_from_shape_arithmetic",
         [helper.make_node("Shape", ["x"], ["s"], start=-1), helper.make_node("Div", ["s", "two"], ["half"]),
          node("Slice", ["x", "half", "s", "minus_one"])],
         {"x": randn(2, 3, 8)}, {"two": ints(2), "minus_one": ints(-1)}),
    Case("squeeze_axes_input", [node("Squeeze", ["x", "axes"])], {"x": randn(1, 3, 1, 2)}, {"axes": ints(0, -2)}, opset=13),
    Case("squeeze_all_unit_dims", [node("Squeeze", ["x"])], {"x": randn(1, 3, 1, 2)}, opset=13),
    Case("unsqueeze_axes_attribute", [node("Unsqueeze", ["x"], axes=[0, 3])], {"x": randn(3, 2)}, opset=11),
    Case("unsqueeze_negative_axes_input", [node("Unsqueeze", ["x", "axes"])], {"x": randn(3, 2)}, {"axes": ints(-1, 1)}, opset=13),
    # reductions
    Case("reducesum_axes_input", [node("ReduceSum", ["x", "axes"], keepdims=0)], {"x": randn(2, 3, 4)}, {"axes": ints(0, 2)}, opset=13),
    Case("reducesum_axes_attribute", [node("ReduceSum", ["x"], axes=[1])], {"x": randn(2, 3, 4)}, opset=11),
    Case("reducesum_noop_with_empty_axes", [node("ReduceSum", ["x"], noop_with_empty_axes=1)], {"x": randn(2, 3)}, opset=13),
    Case("reducemean_axes_input", [node("ReduceMean", ["x", "axes"])], {"x": randn(2, 3, 4)}, {"axes": ints(-1)}, opset=18),
    Case("reducemean_axes_attribute", [node("ReduceMean", ["x"], axes=[0, 1], keepdims=0)], {"x": randn(2, 3, 4)}),
    Case("reducemax_all_axes", [node("ReduceMax", ["x"], keepdims=0)], {"x": randn(2, 3, 4)}),
    # constants and casts
    Case("cast_that_changes_nothing", [node("Cast", ["x"], to=TensorProto.FLOAT)], {"x": randn(2, 3)}),
    Case("cast_of_a_constant",
         [helper.make_node("Constant", [], ["k"], value=tensor(np.array([1, -2, 3], np.int32))),
          helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT), node("Mul", ["x", "kf"])],
         {"x": randn(2, 3)}),
    Case("constant_value_floats",
         [helper.make_node("Constant", [], ["c"], value_floats=[0.5, -1.0, 2.0]), node("Add", ["x", "c"])],
         {"x": randn(2, 3)}),
]

def build(case: Case):
    inputs = {name: (list(a.shape), ELEMENT_TYPES[a.dtype]) for name, a in case.inputs.items()}
    output_type = ELEMENT_TYPES[next(iter(case.inputs.values())).dtype]
    return make_model(case.nodes, inputs, ["y"], case.initializers, case.opset, output_type)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_operator_matches_onnxruntime(case: Case):
    model = build(case)
    expected = run_onnxruntime(model, case.inputs)
    module = import_onnx(model)
    feeds = loom_feeds(module, model, case.inputs)
    got = interpreter.interpret(module, feeds)
    assert max_abs_error(got, expected) <= case.tolerance

    text, weights = render_loom(module)
    again = interpreter.interpret(parse_source(text, weights=weights), feeds)
    np.testing.assert_array_equal(again["y"], got["y"])


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_operator_on_the_cpu_target(case: Case):
    model = build(case)
    module = import_onnx(model)
    got = compiler.compile(module, target="cpu").run(**loom_feeds(module, model, case.inputs))
    assert max_abs_error(got, run_onnxruntime(model, case.inputs)) <= case.tolerance


def test_every_converter_is_exercised():
    covered = set().union(*(case.op_types for case in CASES))
    # The quantization operators are exercised in test_onnx_quant.py.
    assert set(supported_operators()) - QUANTIZATION_OPERATORS <= covered


def test_bfloat16_values_are_rounded_once_per_op():
    """onnxruntime has no bf16 Add on CPU; the expected values follow the nn
    numeric model: compute in f32, round the result to bf16."""
    b = np.array([1.0, 0.333, -2.7], np.float32)
    model = make_model(
        [node("Add", ["x", "b"])], {"x": ([3], TensorProto.BFLOAT16)}, ["y"],
        {"b": helper.make_tensor("b", TensorProto.BFLOAT16, [3], b)}, output_type=TensorProto.BFLOAT16,
    )
    x = np.array([0.1, 100.0, 3.14159], np.float32)
    got = interpreter.interpret(import_onnx(model), {"x": x})["y"]
    np.testing.assert_array_equal(got, round_to_bf16(round_to_bf16(x) + round_to_bf16(b)))
