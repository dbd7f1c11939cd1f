"""Whole models built with onnx.helper: onnxruntime, the reference
interpreter and the CPU target agree on them, and so does the .loom text
the writer makes of them."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

import compiler
from compiler import cli, interpreter
from compiler.frontend import load_file
from compiler.loom_writer import write_loom
from compiler.model import find_model, signature_of
from compiler.onnx import import_onnx, import_to_loom
from onnx_builders import loom_feeds, make_model, max_abs_error, run_onnxruntime, tensor

TOLERANCE = 1e-4


def _normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.normal(size=shape) * scale).astype(np.float32)


def mlp():
    """Gemm (PyTorch layout, transB=1) + Relu, twice, then Softmax."""
    rng = np.random.default_rng(1)
    nodes = [
        helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["h"], transB=1, name="fc1"),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu1"),
        helper.make_node("Gemm", ["h_relu", "fc2.weight", "fc2.bias"], ["logits"], transB=1, name="fc2"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    weights = {
        "fc1.weight": _normal(rng, 32, 20, scale=0.3),
        "fc1.bias": _normal(rng, 32, scale=0.1),
        "fc2.weight": _normal(rng, 10, 32, scale=0.3),
        "fc2.bias": _normal(rng, 10, scale=0.1),
    }
    model = make_model(nodes, {"input": ["batch", 20]}, ["probs"], weights, opset=13)
    return model, {"input": _normal(rng, 4, 20)}, {"batch": 4}


def cnn():
    """Conv + BatchNormalization + Relu + MaxPool, a SAME-padded strided
    Conv, GlobalAveragePool, Flatten and a Gemm classifier."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "bn.scale", "bn.bias", "bn.mean", "bn.var"], ["b1"], epsilon=1e-3, name="bn1"),
        helper.make_node("Relu", ["b1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
        helper.make_node("Conv", ["p1", "conv2.w"], ["c2"], strides=[2, 2], auto_pad="SAME_UPPER", name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1, name="fc"),
    ]
    weights = {
        "conv1.w": _normal(rng, 8, 3, 3, 3, scale=0.3),
        "conv1.b": _normal(rng, 8, scale=0.1),
        "bn.scale": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "bn.bias": _normal(rng, 8, scale=0.1),
        "bn.mean": _normal(rng, 8, scale=0.1),
        "bn.var": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "conv2.w": _normal(rng, 16, 8, 3, 3, scale=0.2),
        "fc.w": _normal(rng, 10, 16, scale=0.3),
        "fc.b": _normal(rng, 10, scale=0.1),
    }
    model = make_model(nodes, {"x": [1, 3, 18, 18]}, ["y"], weights)
    return model, {"x": _normal(rng, 1, 3, 18, 18)}, None


def attention():
    """Single-head self-attention with a residual and LayerNormalization;
    the 1/sqrt(d) scale is a Constant node."""
    rng = np.random.default_rng(3)
    d = 16
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Constant", [], ["scale"], value=tensor(np.array(np.sqrt(d), np.float32))),
        helper.make_node("Div", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["weights"], axis=-1),
        helper.make_node("MatMul", ["weights", "v"], ["context"]),
        helper.make_node("MatMul", ["context", "wo"], ["projected"]),
        helper.make_node("Add", ["x", "projected"], ["residual"]),
        helper.make_node("LayerNormalization", ["residual", "ln.gamma", "ln.beta"], ["y"], axis=-1, epsilon=1e-5, name="ln"),
    ]
    weights = {name: _normal(rng, d, d, scale=0.25) for name in ("wq", "wk", "wv", "wo")}
    weights["ln.gamma"] = rng.uniform(0.5, 1.5, d).astype(np.float32)
    weights["ln.beta"] = _normal(rng, d, scale=0.1)
    model = make_model(nodes, {"x": [2, 8, d]}, ["y"], weights)
    return model, {"x": _normal(rng, 2, 8, d)}, None


MODELS = {"mlp": mlp, "cnn": cnn, "attention": attention}


@functools.cache
def _case(name: str):
    model, feeds, dims = MODELS[name]()
    return model, feeds, dims, run_onnxruntime(model, feeds)


@pytest.mark.parametrize("name", MODELS)
def test_the_interpreter_matches_onnxruntime(name: str):
    model, feeds, dims, expected = _case(name)
    module = import_onnx(model, dims=dims)
    got = interpreter.interpret(module, loom_feeds(module, model, feeds))
    assert max_abs_error(got, expected) <= TOLERANCE


@pytest.mark.parametrize("name", MODELS)
def test_the_cpu_target_matches_onnxruntime(name: str):
    model, feeds, dims, expected = _case(name)
    module = import_onnx(model, dims=dims)
    artifact = compiler.compile(module, target="cpu")
    assert max_abs_error(artifact.run(**loom_feeds(module, model, feeds)), expected) <= TOLERANCE


@pytest.mark.parametrize("name", MODELS)
def test_the_written_loom_file_computes_the_same(name: str, tmp_path: Path):
    model, onnx_feeds, dims, _ = _case(name)
    module = import_onnx(model, dims=dims)
    feeds = loom_feeds(module, model, onnx_feeds)
    loom = tmp_path / "model.loom"
    loom.write_text(write_loom(module, tmp_path / "model.npz"))
    with np.load(tmp_path / "model.npz") as weights:
        reparsed = load_file(loom, weights={k: weights[k] for k in weights.files})
    want = interpreter.interpret(module, feeds)
    got = interpreter.interpret(reparsed, feeds)
    for output in want:
        np.testing.assert_array_equal(got[output], want[output])


def test_loom_import_then_loom_run(tmp_path: Path, capsys):
    model, feeds, _, expected = _case("cnn")
    onnx_path = tmp_path / "cnn.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    written = import_to_loom(onnx_path, tmp_path / "cnn.loom")
    assert written == [tmp_path / "cnn.loom", tmp_path / "cnn.npz"]
    np.savez(tmp_path / "inputs.npz", **feeds)
    status = cli.main([
        "run", str(tmp_path / "cnn.loom"), "--weights", str(tmp_path / "cnn.npz"),
        "--inputs", str(tmp_path / "inputs.npz"), "--check", "--save-outputs", str(tmp_path / "out.npz"),
    ])
    assert status == 0, capsys.readouterr().err
    with np.load(tmp_path / "out.npz") as outputs:
        assert max_abs_error({"y": outputs["y"]}, expected) <= TOLERANCE


def test_signature_and_param_names():
    model, _, dims, _ = _case("mlp")
    module = import_onnx(model, dims=dims)
    signature = signature_of(find_model(module, None))
    assert [(s.name, s.shape, s.dtype) for s in signature.inputs] == [("input_", (4, 20), "f32")]
    assert [(s.name, s.shape) for s in signature.outputs] == [("probs", (4, 10))]
    params = [op.param_name for op in module.walk() if getattr(op, "param_name", None)]
    assert params == ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"]


def test_the_model_is_named_after_the_file_or_the_argument(tmp_path: Path):
    model, _, _, _ = _case("attention")
    path = tmp_path / "my-attention.onnx"
    path.write_bytes(model.SerializeToString())
    assert import_onnx(path).ops.first.sym_name.data == "my_attention"
    assert import_onnx(model).ops.first.sym_name.data == "test_graph"
    assert import_onnx(model, model_name="block").ops.first.sym_name.data == "block"


def test_initializers_listed_as_graph_inputs_are_params():
    """IR version 3 models list every initializer among the graph inputs too."""
    bias = np.array([1.0, -1.0, 0.5], np.float32)
    model = make_model([helper.make_node("Add", ["x", "b"], ["y"])], {"x": [2, 3], "b": [3]}, ["y"], {"b": bias})
    module = import_onnx(model)
    signature = signature_of(find_model(module, None))
    assert [s.name for s in signature.inputs] == ["x"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(interpreter.interpret(module, {"x": x})["y"], x + bias)
