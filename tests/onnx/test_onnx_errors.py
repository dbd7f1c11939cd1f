"""What the importer refuses, and how it says so: one LoomError naming the
node (or input) and the reason, never a traceback or a silent approximation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from compiler.diagnostics import LoomError
from compiler.onnx import import_onnx, import_to_loom
from onnx_builders import make_model, tensor


def f32(*shape: int) -> np.ndarray:
    return np.ones(shape, np.float32)


def error_of(model, **kwargs) -> str:
    with pytest.raises(LoomError) as info:
        import_onnx(model, **kwargs)
    return info.value.message


def test_every_unsupported_operator_is_listed_at_once():
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["up"], name="up1"),
        helper.make_node("Relu", ["up"], ["r"], name="relu"),
        helper.make_node("LSTM", ["r", "w", "rw"], ["h"], name="lstm", hidden_size=4),
        helper.make_node("Pow", ["h", "qs"], ["q"], name="pow"),
        helper.make_node("Erf", ["q"], ["e"]),
        helper.make_node("FusedMatMul", ["e", "e"], ["y"], name="fused", domain="com.microsoft"),
    ]
    # The model is never checked further: the operators alone decide.
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert error_of(model) == (
        "unsupported ONNX operators: Resize (node 'up1'), LSTM (node 'lstm'), "
        "Pow (node 'pow'), Erf (node with output 'e'), "
        "com.microsoft.FusedMatMul (node 'fused')"
    )


def test_a_dynamic_dimension_names_the_input_and_the_dim():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["batch", 3, "seq"]}, ["y"])
    message = error_of(model)
    assert "'batch' (dim 0 of input 'x')" in message
    assert "'seq' (dim 2 of input 'x')" in message
    assert "(dims={'batch': 1} in the API, --dim batch=1 on the command line)" in message
    assert "'seq' (dim 2 of input 'x')" in error_of(model, dims={"batch": 2})
    function = import_onnx(model, dims={"batch": 2, "seq": 5}).ops.first
    assert function.function_type.inputs.data[0].get_shape() == (2, 3, 5)


def test_dims_must_be_used_and_positive():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["N", 3]}, ["y"])
    assert error_of(model, dims={"N": 1, "M": 2}) == "dims names 'M', which no input has"
    assert error_of(model, dims={"N": 0}) == "dims['N'] must be a positive integer, got 0"


def test_a_dimension_without_size_or_name():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["N", 3]}, ["y"])
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    assert error_of(model) == "input 'x' has a dimension of unknown size (dim 0); Loom needs static shapes"


def test_unsupported_input_type():
    model = make_model([helper.make_node("Identity", ["ids"], ["y"])], {"ids": ([4], TensorProto.INT64)}, ["y"],
                       output_type=TensorProto.INT64)
    assert error_of(model).startswith("input 'ids' has element type INT64; Loom supports FLOAT, FLOAT16")


@dataclass
class Refusal:
    id: str
    node: object
    expected: str
    initializers: dict = field(default_factory=dict)
    opset: int = 17
    input_shape: tuple = (1, 3, 6, 6)
    output_type: int = TensorProto.FLOAT


REFUSALS = [
    Refusal(
        "asymmetric_pads",
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[0, 0, 1, 1], name="c1"),
        "Conv node 'c1': asymmetric padding (begin [0, 0], end [1, 1], auto_pad=NOTSET) is not supported",
        {"w": f32(2, 3, 3, 3)},
    ),
    Refusal(
        "same_upper_asymmetric",
        helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2], name="c2"),
        "Conv node 'c2': asymmetric padding (begin [0, 0], end [1, 1], auto_pad=SAME_UPPER) is not supported",
        {"w": f32(2, 3, 3, 3)},
    ),
    Refusal(
        "conv1d",
        helper.make_node("Conv", ["x", "w"], ["y"], name="c3"),
        "Conv node 'c3': only 2-D convolution (NCHW input) is supported, got f32[1,3,6]",
        {"w": f32(2, 3, 3)},
        input_shape=(1, 3, 6),
    ),
    Refusal(
        "count_include_pad",
        helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="pool"),
        "AveragePool node 'pool': count_include_pad=0 with padding is not supported: nn.avgpool2d counts "
        "padded cells (export with count_include_pad=1 or without padding)",
    ),
    Refusal(
        "ceil_mode_partial_window",
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="pool"),
        "MaxPool node 'pool': ceil_mode=1 is not supported where it adds a partial window",
    ),
    Refusal(
        "pool_dilations",
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2], name="pool"),
        "MaxPool node 'pool': dilated pooling is not supported",
    ),
    Refusal(
        "pool_padding_beyond_half_the_kernel",
        helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[2, 2, 2, 2], name="pool"),
        "MaxPool node 'pool': maxpool2d padding [2, 2] must be at most half the kernel [3, 3]",
    ),
    Refusal(
        "exact_gelu",
        helper.make_node("Gelu", ["x"], ["y"], name="act"),
        "Gelu node 'act': exact gelu not supported, export with approximate='tanh'",
        opset=20,
    ),
    Refusal(
        "batchnorm_training",
        helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1, name="bn"),
        "BatchNormalization node 'bn': training mode is not supported",
        {n: f32(3) for n in "sbmv"},
        opset=15,
    ),
    Refusal(
        "cast_to_f16",
        helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT16, name="half"),
        "Cast node 'half': Cast from FLOAT to FLOAT16 is not supported; only casts that change nothing, "
        "or casts of constants",
        output_type=TensorProto.FLOAT16,
    ),
    Refusal(
        "unknown_attribute",
        helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT, round_mode="down", name="cast"),
        "Cast node 'cast': attribute 'round_mode' is not supported",
        opset=24,
    ),
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.id)
def test_attributes_without_an_exact_nn_equivalent(refusal: Refusal):
    model = make_model(
        [refusal.node], {"x": list(refusal.input_shape)}, ["y"], refusal.initializers,
        opset=refusal.opset, output_type=refusal.output_type,
    )
    assert error_of(model) == refusal.expected


def test_a_used_second_output_is_an_error():
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="ln"),
        helper.make_node("Identity", ["mean"], ["m"]),
    ]
    model = make_model(nodes, {"x": [2, 4]}, ["y", "m"], {"g": f32(4)})
    assert error_of(model) == (
        "LayerNormalization node 'ln': output 'mean' is used, but only the first output of "
        "LayerNormalization is supported"
    )
    unused = make_model(nodes[:1], {"x": [2, 4]}, ["y"], {"g": f32(4)})
    import_onnx(unused)


def test_an_int64_constant_cannot_be_data():
    nodes = [helper.make_node("Constant", [], ["y"], value=tensor(np.array([1, 2], np.int64)))]
    model = make_model(nodes, {}, ["y"], output_type=TensorProto.INT64)
    assert error_of(model).startswith("output 'y' is a constant of element type INT64, which Loom cannot compute with")


def test_old_opsets_and_bad_files(tmp_path: Path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [2]}, ["y"], opset=6)
    assert error_of(model) == "the model uses ONNX opset 6; Loom imports opset 7 and newer"
    assert error_of(tmp_path / "missing.onnx") == f"no such file: '{tmp_path / 'missing.onnx'}'"
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffnot a protobuf")
    assert error_of(tmp_path / "junk.onnx").startswith(f"cannot read '{tmp_path / 'junk.onnx'}' as an ONNX model")


def test_names_become_unique_identifiers():
    nodes = [
        helper.make_node("Add", ["input", "fc.weight"], ["a"]),
        helper.make_node("Add", ["a", "fc/weight"], ["1out"]),
    ]
    model = make_model(nodes, {"input": [2]}, ["1out"], {"fc.weight": f32(2), "fc/weight": f32(2)})
    function = import_onnx(model).ops.first
    assert [s.data for s in function.attributes["loom.inputs"].data] == ["input_"]
    assert [s.data for s in function.attributes["loom.outputs"].data] == ["v1out"]
    params = [op.param_name for op in function.walk() if getattr(op, "param_name", None)]
    assert params == ["fc_weight", "fc_weight_2"]


def test_a_failed_import_writes_nothing(tmp_path: Path):
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": ["N"]}, ["y"])
    path = tmp_path / "dyn.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(LoomError) as info:
        import_to_loom(path, tmp_path / "dyn.loom")
    assert info.value.render().startswith("error: dynamic input dimensions 'N' (dim 0 of input 'x')")
    assert not (tmp_path / "dyn.loom").exists()


def test_folding_reports_the_node_it_cannot_evaluate():
    """Shape arithmetic is evaluated at import time; a failure names the node."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["s", "bad"], ["r"], name="shape_math"),
             helper.make_node("Reshape", ["x", "r"], ["y"])]
    model = make_model(nodes, {"x": [2, 3]}, ["y"], {"bad": np.array([5], np.int64)})
    with pytest.raises(LoomError, match="Reshape \\(node 'shape_math'\\) could not be evaluated at import time"):
        import_onnx(model)
