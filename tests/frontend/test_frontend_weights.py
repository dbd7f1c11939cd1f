"""Param values: weights files, load("x.npy") and seeded initializers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compiler.diagnostics import LoomError
from compiler.frontend import load_file, parse_source
from compiler.model import find_model
from dialects import nn


def param_arrays(module) -> dict[str, np.ndarray]:
    f = find_model(module, None)
    return {
        op.param_name: op.array()
        for op in f.body.block.ops
        if isinstance(op, nn.ConstantOp) and op.param_name is not None
    }


def model_with(decl: str, input_type: str = "f32[2, 3]") -> str:
    """A model declaring `decl` (a param w) and multiplying its input by w."""
    return f"model m {{\n  input x: {input_type}\n  {decl}\n  y = x * w\n  output y\n}}\n"


def test_weights_from_an_npz_file(tmp_path: Path):
    expected = np.arange(6, dtype=np.float64).reshape(2, 3) / 7
    np.savez(tmp_path / "w.npz", w=expected, other_model_param=np.ones(5))
    with np.load(tmp_path / "w.npz") as weights:
        module = parse_source(model_with("param w: f32[2, 3]"), weights=weights)
    np.testing.assert_array_equal(param_arrays(module)["w"], expected.astype(np.float32))


def test_an_initializer_wins_over_the_weights():
    module = parse_source(model_with("param w: f32[2, 3] = ones"), weights={"w": np.zeros((2, 3))})
    np.testing.assert_array_equal(param_arrays(module)["w"], np.ones((2, 3), np.float32))


@pytest.mark.parametrize(
    "value, message",
    [
        (np.ones((3, 2)), "the weights file value for 'w' has shape [3,2], but param 'w' is f32[2,3]"),
        (np.ones((2, 3), bool), "the weights file value for 'w' holds bool values"),
    ],
)
def test_bad_weights_are_reported_at_the_param(value, message):
    with pytest.raises(LoomError) as info:
        parse_source(model_with("param w: f32[2, 3]"), "t.loom", weights={"w": value})
    assert info.value.message.startswith(message)
    assert (info.value.location.line, info.value.location.column) == (3, 9)


def test_integer_params_take_only_exact_values():
    text = model_with("param w: i8[3]", input_type="i8[3]")
    module = parse_source(text, weights={"w": np.array([1.0, -2.0, 127.0])})
    np.testing.assert_array_equal(param_arrays(module)["w"], np.array([1, -2, 127], np.int8))
    for bad in (np.array([0.5, 1, 2]), np.array([1, 2, 300])):
        with pytest.raises(LoomError, match="cannot represent exactly"):
            parse_source(text, weights={"w": bad})


def test_load_reads_npy_relative_to_the_source_file(tmp_path: Path):
    (tmp_path / "data").mkdir()
    expected = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "data" / "w.npy", expected)
    source = tmp_path / "net.loom"
    source.write_text(model_with('param w: f32[2, 3] = load("data/w.npy")'))
    np.testing.assert_array_equal(param_arrays(load_file(source))["w"], expected)
    module = parse_source(source.read_text(), base_dir=tmp_path)
    np.testing.assert_array_equal(param_arrays(module)["w"], expected)


@pytest.mark.parametrize(
    "stored, message",
    [
        (np.ones(4, np.float32), "'w.npy' has shape [4], but param 'w' is f32[2,3]"),
        (np.ones((2, 3), np.complex64), "'w.npy' holds complex64 values"),
    ],
)
def test_load_checks_shape_and_dtype(tmp_path: Path, stored, message):
    np.save(tmp_path / "w.npy", stored)
    with pytest.raises(LoomError) as info:
        parse_source(model_with('param w: f32[2, 3] = load("w.npy")'), "t.loom", base_dir=tmp_path)
    assert info.value.message.startswith(message)
    assert (info.value.location.line, info.value.location.column) == (3, 24)


def test_load_of_an_npz_is_rejected(tmp_path: Path):
    np.savez(tmp_path / "w.npz", w=np.ones((2, 3)))
    with pytest.raises(LoomError, match="load\\(\\) reads one array from a .npy file"):
        parse_source(model_with('param w: f32[2, 3] = load("w.npz")'), base_dir=tmp_path)


@pytest.mark.parametrize("init", ["uniform(-2, 3, seed=11)", "normal(0.5, 2.0, seed=11)"])
def test_random_initializers_are_reproducible(init: str):
    text = model_with(f"param w: f32[2, 3] = {init}")
    first = param_arrays(parse_source(text))["w"]
    second = param_arrays(parse_source(text))["w"]
    np.testing.assert_array_equal(first, second)
    other_seed = param_arrays(parse_source(text.replace("seed=11", "seed=12")))["w"]
    assert not np.array_equal(first, other_seed)


def test_random_initializers_follow_numpy_default_rng():
    arrays = param_arrays(parse_source(model_with("param w: f32[2, 3] = uniform(-2, 3)")))
    expected = np.random.default_rng(0).uniform(-2, 3, (2, 3)).astype(np.float32)
    np.testing.assert_array_equal(arrays["w"], expected)
    assert arrays["w"].min() >= -2 and arrays["w"].max() < 3


def test_f16_params_are_stored_in_f16():
    text = model_with("param w: f16[2, 3] = normal(0, 1, seed=5)", input_type="f16[2, 3]")
    (w,) = param_arrays(parse_source(text)).values()
    assert w.dtype == np.float16
    np.testing.assert_array_equal(w, np.random.default_rng(5).normal(0, 1, (2, 3)).astype(np.float16))
