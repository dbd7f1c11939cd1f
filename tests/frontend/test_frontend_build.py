"""Well-formed .loom sources build the expected, verified nn IR."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, StringAttr, UnitAttr

from compiler.frontend import ast, parse_ast, parse_source
from compiler.model import find_model, signature_of
from dialects import nn

MLP = """\
# the example from the DSL reference
model mlp {
  input  x : f32[1, 784]
  param  w1: f32[784, 128]
  param  b1: f32[128] = zeros
  param  w2: f32[128, 10] = normal(0.0, 0.05, seed=2)
  param  b2: f32[10]

  h = relu(x @ w1 + b1)
  y = softmax(h @ w2 + b2, axis=-1)
  output y
}
"""

MLP_WEIGHTS = {"w1": np.full((784, 128), 0.01), "b2": np.arange(10, dtype=np.float64)}


def ops_of(function: func.FuncOp) -> list:
    return list(function.body.block.ops)


def op_names(function: func.FuncOp) -> list[str]:
    return [op.name for op in ops_of(function)]


def constants_by_name(function: func.FuncOp) -> dict[str, nn.ConstantOp]:
    return {
        op.param_name: op
        for op in ops_of(function)
        if isinstance(op, nn.ConstantOp) and op.param_name is not None
    }


def build_one(text: str, **kwargs) -> func.FuncOp:
    module = parse_source(text, "test.loom", **kwargs)
    module.verify()
    return find_model(module, None)


def test_mlp_example_builds_and_verifies():
    f = build_one(MLP, weights=MLP_WEIGHTS)
    sig = signature_of(f)
    assert sig.name == "mlp"
    assert [(s.name, s.shape, s.dtype) for s in sig.inputs] == [("x", (1, 784), "f32")]
    assert [(s.name, s.shape, s.dtype) for s in sig.outputs] == [("y", (1, 10), "f32")]
    assert isinstance(f.attributes[nn.MODEL_ATTR], UnitAttr)
    assert f.attributes[nn.INPUTS_ATTR] == ArrayAttr([StringAttr("x")])
    assert f.attributes[nn.OUTPUTS_ATTR] == ArrayAttr([StringAttr("y")])
    assert op_names(f) == [
        "nn.constant", "nn.matmul", "nn.constant", "nn.add", "nn.relu",
        "nn.constant", "nn.matmul", "nn.constant", "nn.add", "nn.softmax", "func.return",
    ]
    softmax = next(op for op in ops_of(f) if isinstance(op, nn.SoftmaxOp))
    assert softmax.params() == {"axis": 1}


def test_ir_names_follow_the_source():
    f = build_one(MLP, weights=MLP_WEIGHTS)
    assert f.body.block.args[0].name_hint == "x"
    text = str(f)
    for name in ("%x", "%w1", "%b1", "%h", "%y"):
        assert name in text
    assert 'sym_name = "w2"' in text


def test_param_values_come_from_weights_and_initializers():
    f = build_one(MLP, weights=MLP_WEIGHTS)
    constants = constants_by_name(f)
    assert set(constants) == {"w1", "b1", "w2", "b2"}
    np.testing.assert_array_equal(constants["w1"].array(), np.full((784, 128), 0.01, np.float32))
    np.testing.assert_array_equal(constants["b1"].array(), np.zeros(128, np.float32))
    np.testing.assert_array_equal(constants["b2"].array(), np.arange(10, dtype=np.float32))
    expected_w2 = np.random.default_rng(2).normal(0.0, 0.05, (128, 10)).astype(np.float32)
    np.testing.assert_array_equal(constants["w2"].array(), expected_w2)


def test_unused_params_are_dropped():
    f = build_one("""
model m {
  input x: f32[2]
  param used: f32[2] = ones
  param unused: f32[7] = zeros
  output y
  y = x * used
}
""")
    assert set(constants_by_name(f)) == {"used"}


EVERY_BUILTIN = """
model everything {
  input img: f32[2, 3, 8, 8]
  input seq: f32[2, 4, 6]
  param k:   f32[4, 3, 3, 3] = uniform(-0.1, 0.1, seed=1)
  param kb:  f32[4] = zeros
  param dw:  f32[4, 1, 3, 3] = ones
  param mu:  f32[4] = zeros
  param var: f32[4] = ones
  param g:   f32[6] = ones
  param be:  f32[6] = zeros
  param w:   f32[6, 6] = normal(0, 0.1)

  c  = conv2d(img, k, kb, stride=1, padding=1)
  c2 = conv2d(c, dw, groups=4, padding=[1, 1], dilation=1)
  bn = batchnorm(c2, mu, var, kb, kb, eps=1e-3)
  mp = maxpool2d(relu(c), kernel=2)
  ap = avgpool2d(c, 2, 2, 0)
  gp = global_avgpool(ap)
  fl = flatten(mp)
  r  = reshape(gp, [2, -1])
  cat = concat(r, r, axis=1)

  t  = transpose(seq, perm=[0, 2, 1])
  tt = transpose(seq)
  m  = matmul(seq, w)
  ln = layernorm(m, g, be, eps=1e-6)
  a  = gelu(ln) + sigmoid(ln) - tanh(ln)
  e  = exp(a) * sqrt(exp(a)) / 2
  sm = softmax(tril(seq @ transpose(seq, perm=[0, 2, 1]), k=0, fill=-1e9), -1)
  s1 = sum(e, axis=1)
  s2 = mean(e, axis=[1, 2], keepdims=true)
  s3 = max(e)
  n  = -s1
  output cat, fl, t, tt, sm, s2, s3, n, bn
}
"""


def test_every_builtin_builds_with_the_expected_shapes():
    f = build_one(EVERY_BUILTIN)
    shapes = {s.name: s.shape for s in signature_of(f).outputs}
    assert shapes == {
        "cat": (2, 8),
        "fl": (2, 64),
        "t": (2, 6, 4),
        "tt": (6, 4, 2),
        "sm": (2, 4, 4),
        "s2": (2, 1, 1),
        "s3": (),
        "n": (2, 6),
        "bn": (2, 4, 8, 8),
    }
    built = {op.name for op in ops_of(f)}
    expected = {f"nn.{name}" for name in (
        "conv2d", "batchnorm", "maxpool2d", "avgpool2d", "global_avgpool", "reshape", "concat",
        "transpose", "matmul", "layernorm", "gelu", "sigmoid", "tanh", "exp", "sqrt", "softmax",
        "tril", "sum", "mean", "max", "neg", "relu", "add", "sub", "mul", "div", "constant",
    )}
    assert expected <= built
    by_type = {type(op): op for op in ops_of(f)}
    assert by_type[nn.TrilOp].params() == {"k": 0, "fill": -1e9}
    assert by_type[nn.AvgPool2dOp].params() == {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]}
    assert by_type[nn.ReduceMeanOp].params() == {"axes": [1, 2], "keepdims": True}
    assert by_type[nn.LayerNormOp].params() == {"axis": 2, "eps": 1e-6}


def test_defs_are_inlined_at_each_call():
    f = build_one("""
def dense(x, w, b) {
  t = x @ w
  return act(t + b)
}
def act(v) { return relu(v) }
model two_layers {
  input x: f32[3, 4]
  param w1: f32[4, 5] = ones; param b1: f32[5] = zeros
  param w2: f32[5, 2] = ones; param b2: f32[2] = zeros
  y = dense(dense(x, w1, b1), w2, b2)
  output y
}
""")
    assert not [op for op in f.parent.ops if op is not f and isinstance(op, func.FuncOp)]
    assert op_names(f).count("nn.matmul") == 2
    assert op_names(f).count("nn.relu") == 2
    assert signature_of(f).outputs[0].shape == (3, 2)


def test_literals_take_the_dtype_of_the_other_operand():
    f = build_one("""
model m {
  input a: f16[4]
  input i: i8[4]
  ha = a * 0.5 + 1
  hi = 2 * i - 3
  folded = a * (2 * 3 - 1)
  output ha, hi, folded
}
""")
    literals = [op for op in ops_of(f) if isinstance(op, nn.ConstantOp)]
    assert [(nn.dtype_name(op.result.type.element_type), op.result.type.get_shape(), op.array().item())
            for op in literals] == [
        ("f16", (), 0.5), ("f16", (), 1.0), ("i8", (), 2), ("i8", (), 3), ("f16", (), 5.0),
    ]


def test_precedence_unary_minus_then_matmul_then_mul_then_add():
    program = parse_ast("model m { y = -a @ b * c + d }")
    (assign,) = program.models[0].body
    add = assign.value
    assert isinstance(add, ast.Binary) and add.op == "+"
    mul = add.left
    assert isinstance(mul, ast.Binary) and mul.op == "*"
    matmul = mul.left
    assert isinstance(matmul, ast.Binary) and matmul.op == "@"
    assert isinstance(matmul.left, ast.Neg)


def test_statements_split_by_semicolons_and_calls_span_lines():
    f = build_one("""
model m { input x: f32[2, 3]; param w: f32[3, 3] = ones
  y = softmax(
        x @ w,   # a comment inside the call
        axis=-(
          -1)
      ) ; output y }
""")
    assert signature_of(f).outputs[0].shape == (2, 3)


def test_several_models_in_one_file_share_defs():
    module = parse_source("""
def double(x) { return x + x }
model a { input x: f32[2]; y = double(x); output y }
model b { input x: i32[3]; y = double(x); output y }
""")
    assert signature_of(find_model(module, "a")).outputs[0].dtype == "f32"
    assert signature_of(find_model(module, "b")).outputs[0].shape == (3,)


def test_scalar_and_low_precision_types():
    f = build_one("""
model m {
  input s: bf16[]
  input v: bf16[3]
  param c: bf16[] = normal(1, 0.5, seed=7)
  y = v * s + c
  output y
}
""")
    assert signature_of(f).inputs[0].shape == ()
    (c,) = constants_by_name(f).values()
    value = float(np.random.default_rng(7).normal(1, 0.5))
    assert c.array().item() == pytest.approx(value, rel=1e-2)
    assert c.array().item() == nn.round_to_bf16(np.float32(value)).item()


def test_outputs_may_be_inputs_and_repeat_values():
    f = build_one("model m { input x: f32[2]; y = x; output x, y }")
    sig = signature_of(f)
    assert [s.name for s in sig.outputs] == ["x", "y"]
    ret = ops_of(f)[-1]
    assert list(ret.operands) == [f.body.block.args[0]] * 2
