"""write_loom: nn modules printed as .loom source read back as modules that
compute the same values the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from xdsl.dialects import arith
from xdsl.dialects.builtin import ArrayAttr, IntegerAttr, ModuleOp, StringAttr, i32

from compiler import interpreter
from compiler.api import load_module
from compiler.artifact import random_inputs
from compiler.diagnostics import LoomError
from compiler.frontend import load_file, parse_source
from compiler.loom_writer import render_loom, to_identifier, write_loom
from compiler.model import find_model, models, signature_of
from dialects import nn
from harness import SAMPLES
from onnx_builders import dataflow


def round_trip(module: ModuleOp) -> tuple[ModuleOp, str]:
    text, weights = render_loom(module)
    return parse_source(text, weights=weights), text


def assert_same_computation(module: ModuleOp, again: ModuleOp) -> None:
    assert dataflow(again) == dataflow(module)
    for f in models(module):
        name = f.sym_name.data
        inputs = random_inputs(signature_of(f), 0)
        want = interpreter.interpret(module, inputs, name)
        got = interpreter.interpret(again, inputs, name)
        assert list(got) == list(want)
        for output in want:
            np.testing.assert_array_equal(got[output], want[output])


@pytest.mark.parametrize("sample", [p.name for p in SAMPLES])
def test_samples_round_trip(sample: str, root: Path):
    module = load_module(root / "samples" / sample)
    assert_same_computation(module, round_trip(module)[0])


EVERY_OP = """
model every_op {
  input x: f32[2, 4, 6, 6]
  input s: f32[3, 5]
  input k: i32[2, 3]
  param w: f32[4, 2, 3, 3] = normal(0.0, 0.3, seed=1)
  param b: f32[4] = normal(0.0, 0.1, seed=2)
  param var: f32[4] = uniform(0.5, 1.5, seed=3)
  param g: f32[5] = uniform(0.5, 1.5, seed=4)
  param m: f32[5, 5] = normal(0.0, 0.3, seed=5)
  c = conv2d(x, w, b, stride=[1, 2], padding=1, dilation=[2, 1], groups=2)
  n = batchnorm(c, b, var, b, b, eps=0.001)
  pooled = maxpool2d(relu(n), kernel=2, stride=1, padding=1) - avgpool2d(n, kernel=[2, 2], stride=1, padding=1)
  glob = flatten(global_avgpool(x))
  h = layernorm(s @ m, g, g, eps=1e-3) / sqrt(exp(-s) + 2.0)
  t = transpose(concat(h, gelu(h), sigmoid(h), axis=0), perm=[1, 0])
  v = slice(t, starts=[-3, 1], ends=[100, 8], axes=[1, 0], steps=[2, 1])
  u = tril(softmax(tanh(t), axis=0), k=-1, fill=-1e9)
  r = sum(u, axis=1, keepdims=true) + mean(u, axis=[0, 1]) * max(u)
  q = reshape(k * 3 - k / -2, [3, 2])
  output pooled, glob, r, q, v
}
"""


def test_every_nn_op_round_trips():
    module = parse_source(EVERY_OP)
    computing = {op for op in nn.NN.operations if issubclass(op, nn.NNOperation)}
    assert computing <= {type(op) for op in module.walk()}
    again, text = round_trip(module)
    assert_same_computation(module, again)
    assert "k / (-2)" in text and "fill=-1000000000.0" in text


def test_literals_keep_their_exact_values():
    source = """
model literals {
  input x: f16[3]
  a = x * 0.1 + -0.0
  b = 1e999 - x
  c = (x - -2.5) / 3
  output a, b, c
}
"""
    module = parse_source(source)
    again, text = round_trip(module)
    assert_same_computation(module, again)
    assert "param" not in text
    assert "x * 0.0999755859375" in text and "+ (-0.0)" in text and "1e999 - x" in text


def _module_with_constant(value: float, use: str) -> ModuleOp:
    """A model using a rank-0 unnamed constant as an operand of `use`."""
    module = parse_source("model m {\n  input x: f32[1]\n  y = relu(x)\n  output y\n}\n")
    f = find_model(module, None)
    block = f.body.block
    relu = block.first_op.next_op if isinstance(block.first_op, nn.ConstantOp) else block.first_op
    constant = nn.ConstantOp(np.array(value, np.float32), nn.DTYPES["f32"])
    block.insert_op_before(constant, relu)
    if use == "add":
        result = nn.AddOp.make([relu.operands[0], constant])
    elif use == "two_literals":
        other = nn.ConstantOp(np.array(2.0, np.float32), nn.DTYPES["f32"])
        block.insert_op_before(other, relu)
        result = nn.AddOp.make([relu.operands[0], nn.AddOp.make([constant, other])])
        block.insert_op_before(result.operands[1].owner, relu)
    else:
        result = nn.AddOp.make([relu.operands[0], nn.ReshapeOp.make([constant], shape=[1])])
        block.insert_op_before(result.operands[1].owner, relu)
    block.insert_op_before(result, relu)
    relu.operands[0] = result.results[0]
    module.verify()
    return module


@pytest.mark.parametrize(
    "value, use",
    [(float("nan"), "add"), (2.0, "two_literals"), (3.0, "reshape")],
    ids=["nan", "two_literals_meet", "operand_of_reshape"],
)
def test_constants_that_cannot_be_literals_become_params(value: float, use: str):
    module = _module_with_constant(value, use)
    text, weights = render_loom(module)
    assert "param const: f32[]" in text
    again = parse_source(text, weights=weights)
    inputs = {"x": np.array([1.5], np.float32)}
    want, got = interpreter.interpret(module, inputs), interpreter.interpret(again, inputs)
    np.testing.assert_array_equal(got["y"], want["y"])


def test_outputs_that_are_inputs_params_or_repeated():
    source = """
model outputs {
  input x: f32[2]
  param w: f32[2] = ones
  y = relu(x) * w
  z = y
  output x, y, z, w
}
"""
    module = parse_source(source)
    again, text = round_trip(module)
    assert_same_computation(module, again)
    assert "  z = y\n" in text and "  w_2 = w\n" not in text


def test_models_share_one_weights_file():
    source = """
model first {
  input x: f32[2]
  param w: f32[2] = ones
  param same: f32[2] = ones
  y = x * w + same
  output y
}

model second {
  input x: f32[2]
  param w: f32[2] = zeros
  param same: f32[2] = ones
  y = (x + w) * same
  output y
}
"""
    module = parse_source(source)
    text, weights = render_loom(module)
    assert sorted(weights) == ["same", "w", "w_2"]
    assert text.count("param same: f32[2]") == 2
    assert "param w: f32[2]" in text and "param w_2: f32[2]" in text
    again = parse_source(text, weights=weights)
    for name in ("first", "second"):
        inputs = {"x": np.array([1.5, -2.0], np.float32)}
        np.testing.assert_array_equal(
            interpreter.interpret(again, inputs, name)["y"], interpreter.interpret(module, inputs, name)["y"]
        )


def test_weights_file_and_header(tmp_path: Path):
    module = load_module(Path(__file__).resolve().parents[2] / "samples" / "mlp.loom")
    text = write_loom(module, tmp_path / "mlp.npz")
    assert text.startswith("# Params have no initializer: their values come from mlp.npz (--weights).")
    (tmp_path / "mlp.loom").write_text(text)
    with np.load(tmp_path / "mlp.npz") as weights:
        assert sorted(weights.files) == ["b1", "b2", "w1", "w2"]
        again = load_file(tmp_path / "mlp.loom", {k: weights[k] for k in weights.files})
    assert_same_computation(module, again)


def test_what_cannot_be_written():
    module = parse_source("model m {\n  input x: f32[2]\n  y = relu(x)\n  output y\n}\n")
    f = find_model(module, None)
    f.attributes["loom.inputs"] = ArrayAttr([StringAttr("x.0")])
    with pytest.raises(LoomError, match="model 'm': input name 'x.0' is not a .loom identifier"):
        render_loom(module)

    module = parse_source("model m {\n  input x: f32[2]\n  y = relu(x)\n  output y\n}\n")
    find_model(module, None).body.block.insert_op_before(
        arith.ConstantOp(IntegerAttr(1, i32)), find_model(module, None).body.block.first_op
    )
    with pytest.raises(LoomError, match="'arith.constant' is not an nn op"):
        render_loom(module)

    with pytest.raises(LoomError, match="the module defines no model to write"):
        render_loom(ModuleOp([]))


def test_identifiers():
    assert to_identifier("fc.weight") == "fc_weight"
    assert to_identifier("/layer1/Conv_output_0") == "layer1_Conv_output_0"
    assert to_identifier("onnx::MatMul_12") == "onnx_MatMul_12"
    assert to_identifier("12") == "v12"
    assert to_identifier("input") == "input_"
    assert to_identifier("relu") == "relu_"
    assert to_identifier("...") == "v"
