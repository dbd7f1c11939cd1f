"""fold-batchnorm: IR before and after, folded values against the formula,
and the folded model against the reference interpreter."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects.builtin import ModuleOp, f32

import compiler
from compiler.context import make_context
from compiler.interpreter import run_model
from compiler.mlir import parse_mlir
from compiler.model import find_model
from compiler.pass_manager import PassManager
from dialects import nn
from passes import registry

RNG = np.random.default_rng(5)


def param(name: str, array: np.ndarray, t=f32) -> str:
    dense = nn.dense_from_array(array, t)
    return f'%{name} = "nn.constant"() <{{value = {dense}, sym_name = "{name}"}}> : () -> {dense.type}'


def tensor_type(shape, dtype: str) -> str:
    return f"tensor<{'x'.join(map(str, shape))}x{dtype}>"


def conv_bn_model(
    w: np.ndarray,
    b: np.ndarray | None,
    stats: dict[str, np.ndarray],
    stride: tuple[int, int] = (1, 1),
    groups: int = 1,
    extra_use: bool = False,
    dtype: str = "f32",
) -> str:
    """`y = batchnorm(conv2d(x, w, b?))` on a 1x4x5x5 input with 3x3 kernels
    and padding 1, optionally also returning the convolution."""
    t = nn.DTYPES[dtype]
    o = w.shape[0]
    x_type = tensor_type([1, 4, 5, 5], dtype)
    y_type = tensor_type([1, o, 4 // stride[0] + 1, 4 // stride[1] + 1], dtype)
    channel_type = tensor_type([o], dtype)
    conv_operands = ["%x", "%w"] + (["%b"] if b is not None else [])
    conv_types = [x_type, tensor_type(w.shape, dtype)] + ([channel_type] if b is not None else [])
    params = {"w": w, **({"b": b} if b is not None else {}), **stats}
    conv_attrs = (
        f"stride = array<i64: {stride[0]}, {stride[1]}>, padding = array<i64: 1, 1>, "
        f"dilation = array<i64: 1, 1>, groups = {groups} : i64"
    )
    results = ["%y", "%c"] if extra_use else ["%y"]
    lines = [param(name, value, t) for name, value in params.items()] + [
        f"%c = nn.conv2d {', '.join(conv_operands)} {{{conv_attrs}}} : ({', '.join(conv_types)}) -> {y_type}",
        f"%y = nn.batchnorm %c, %mean, %var, %gamma, %beta {{eps = 1.0e-3 : f64}} : "
        f"({y_type}, {', '.join([channel_type] * 4)}) -> {y_type}",
        f"func.return {', '.join(results)} : {', '.join([y_type] * len(results))}",
    ]
    outputs = ", ".join(f'"{r[1:]}"' for r in results)
    body = "\n    ".join(lines)
    return f"""
builtin.module {{
  func.func @m(%x: {x_type}) -> ({", ".join([y_type] * len(results))}) attributes {{loom.inputs = ["x"], loom.model, loom.outputs = [{outputs}]}} {{
    {body}
  }}
}}
"""


def statistics(channels: int) -> dict[str, np.ndarray]:
    return {
        "mean": RNG.normal(0, 0.5, channels).astype(np.float32),
        "var": RNG.uniform(0.5, 1.5, channels).astype(np.float32),
        "gamma": RNG.uniform(0.5, 1.5, channels).astype(np.float32),
        "beta": RNG.normal(0, 0.5, channels).astype(np.float32),
    }


def fold(text: str) -> tuple[ModuleOp, ModuleOp]:
    before = parse_mlir(text)
    after = before.clone()
    PassManager.from_pipeline(make_context(), "fold-batchnorm").run(after)
    return before, after


def ops(module: ModuleOp) -> list[str]:
    return [op.name for op in module.walk() if op.name.startswith("nn.")]


def constants(module: ModuleOp) -> dict[str | None, np.ndarray]:
    return {op.param_name: op.array() for op in module.walk() if isinstance(op, nn.ConstantOp)}


def run(module: ModuleOp, x: np.ndarray) -> list[np.ndarray]:
    return list(run_model(find_model(module, None), {"x": x}).values())


def expected_fold(w, b, s, eps=1e-3):
    """The folded weights and bias by the formula, in float64."""
    scale = s["gamma"].astype(np.float64) / np.sqrt(s["var"].astype(np.float64) + eps)
    bias = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    return w * scale[:, None, None, None], (bias - s["mean"]) * scale + s["beta"]


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
def test_conv_then_batchnorm_becomes_one_conv(with_bias: bool) -> None:
    w = RNG.normal(0, 0.3, (3, 4, 3, 3)).astype(np.float32)
    b = RNG.normal(0, 0.3, 3).astype(np.float32) if with_bias else None
    stats = statistics(3)
    before, after = fold(conv_bn_model(w, b, stats))
    assert ops(before) == ["nn.constant"] * (6 if with_bias else 5) + ["nn.conv2d", "nn.batchnorm"]
    assert ops(after) == ["nn.constant", "nn.constant", "nn.conv2d"]

    (conv,) = [op for op in after.walk() if isinstance(op, nn.Conv2dOp)]
    assert conv.params() == {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    assert conv.result.name_hint == "y"
    folded = constants(after)
    bias_name = "b.bn_folded" if with_bias else "beta.bn_folded"
    assert set(folded) == {"w.bn_folded", bias_name}
    want_w, want_b = expected_fold(w, b, stats)
    np.testing.assert_array_equal(folded["w.bn_folded"], want_w.astype(np.float32))
    np.testing.assert_array_equal(folded[bias_name], want_b.astype(np.float32))

    x = RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(after, x)[0], run(before, x)[0], atol=1e-5, rtol=1e-5)


def test_grouped_strided_conv_folds_per_output_channel() -> None:
    w = RNG.normal(0, 0.3, (4, 2, 3, 3)).astype(np.float32)
    b = RNG.normal(0, 0.3, 4).astype(np.float32)
    before, after = fold(conv_bn_model(w, b, statistics(4), stride=(2, 1), groups=2))
    assert ops(after) == ["nn.constant", "nn.constant", "nn.conv2d"]
    (conv,) = [op for op in after.walk() if isinstance(op, nn.Conv2dOp)]
    assert conv.params()["groups"] == 2 and conv.params()["stride"] == [2, 1]
    x = RNG.standard_normal((1, 4, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run(after, x)[0], run(before, x)[0], atol=1e-5, rtol=1e-5)


def test_f16_parameters_are_rounded_once_to_f16() -> None:
    w = RNG.normal(0, 0.3, (2, 4, 3, 3)).astype(np.float16)
    stats = {k: v.astype(np.float16) for k, v in statistics(2).items()}
    before, after = fold(conv_bn_model(w, None, stats, dtype="f16"))
    folded = constants(after)
    want_w, want_b = expected_fold(w.astype(np.float64), None, {k: v.astype(np.float64) for k, v in stats.items()})
    assert folded["w.bn_folded"].dtype == np.float16
    np.testing.assert_array_equal(folded["w.bn_folded"], want_w.astype(np.float16))
    np.testing.assert_array_equal(folded["beta.bn_folded"], want_b.astype(np.float16))
    x = RNG.standard_normal((1, 4, 5, 5)).astype(np.float16)
    np.testing.assert_allclose(run(after, x)[0].astype(np.float32), run(before, x)[0].astype(np.float32), atol=2e-2)


def test_conv_used_elsewhere_is_not_folded() -> None:
    text = conv_bn_model(RNG.normal(0, 0.3, (3, 4, 3, 3)).astype(np.float32), None, statistics(3), extra_use=True)
    before, after = fold(text)
    assert str(after) == str(before)


def test_non_constant_statistics_are_not_folded() -> None:
    text = conv_bn_model(RNG.normal(0, 0.3, (3, 4, 3, 3)).astype(np.float32), None, statistics(3))
    # The mean becomes a computed value: the relu of a constant.
    text = text.replace("%y = nn.batchnorm %c, %mean,", "%m = nn.relu %mean : (tensor<3xf32>) -> tensor<3xf32>\n    %y = nn.batchnorm %c, %m,")
    before, after = fold(text)
    assert str(after) == str(before)


def test_batchnorm_after_other_ops_is_kept() -> None:
    stats = statistics(4)
    lines = "\n    ".join(param(name, value) for name, value in stats.items())
    text = f"""
builtin.module {{
  func.func @m(%x: tensor<2x4xf32>) -> tensor<2x4xf32> attributes {{loom.inputs = ["x"], loom.model, loom.outputs = ["y"]}} {{
    {lines}
    %r = nn.relu %x : (tensor<2x4xf32>) -> tensor<2x4xf32>
    %y = nn.batchnorm %r, %mean, %var, %gamma, %beta {{eps = 1.0e-5 : f64}} : (tensor<2x4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>, tensor<4xf32>) -> tensor<2x4xf32>
    func.return %y : tensor<2x4xf32>
  }}
}}
"""
    before, after = fold(text)
    assert str(after) == str(before)


@pytest.mark.parametrize("passes", ["", "fold-batchnorm"], ids=["unfolded", "folded"])
def test_resblock_matches_the_unfolded_interpreter(root, passes: str) -> None:
    # fusion=False keeps the model pipeline from folding on its own
    artifact = compiler.compile(root / "samples" / "resblock.loom", target="cpu", passes=passes,
                                options=compiler.CompileOptions(fusion=False))
    x = np.random.default_rng(0).standard_normal((1, 16, 16, 16)).astype(np.float32)
    result = compiler.check(artifact, {"x": x})
    assert result.max_abs_err <= 1e-5
    assert ("nn.batchnorm" in artifact.stages.nn) == (not passes)
    if passes:
        assert '"conv1_w.bn_folded"' in artifact.stages.nn and '"bn2_beta.bn_folded"' in artifact.stages.nn


def test_pass_is_registered() -> None:
    assert registry.get_pass("fold-batchnorm").name == "fold-batchnorm"
