"""The samples, run by the reference interpreter.

Besides running every sample, this checks the interpreter on whole models
against forward passes written here directly in float64 numpy, with the
params re-created from the initializers the samples declare (the DSL
reference defines `normal(mean, std, seed=S)` as numpy's
`default_rng(S).normal(mean, std, shape)` rounded to the param's dtype).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler.artifact import random_inputs
from compiler.frontend import load_file
from compiler.interpreter import interpret
from compiler.model import find_model, signature_of

# Not imported from conftest: with several conftest.py files in the tree, the
# module that name refers to depends on which tests are collected.
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
SAMPLES = sorted(p.name for p in SAMPLES_DIR.glob("*.loom"))
TOLERANCE = 1e-5


def load(sample: str):
    return load_file(SAMPLES_DIR / sample)


def normal(mean: float, std: float, seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, std, shape).astype(np.float32).astype(np.float64)


def uniform(lo: float, hi: float, seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype(np.float32).astype(np.float64)


def run(sample: str, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The interpreter's outputs on random inputs, and the (single) input used."""
    module = load(sample)
    inputs = random_inputs(signature_of(find_model(module, None)), seed)
    (x,) = inputs.values()
    return interpret(module, inputs), x.astype(np.float64)


def assert_matches(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.max(np.abs(got.astype(np.float64) - want)) <= TOLERANCE


# --------------------------------------------------------------------------
# Independent float64 building blocks
# --------------------------------------------------------------------------


def relu(x):
    return np.maximum(x, 0.0)


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def conv2d(x, w, padding):
    """Stride-1 NCHW convolution as a sum over kernel offsets of shifted images."""
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = h + 2 * padding - kh + 1, wd + 2 * padding - kw + 1
    out = np.zeros((n, o, oh, ow))
    for u in range(kh):
        for v in range(kw):
            out += np.tensordot(xp[:, :, u : u + oh, v : v + ow], w[:, :, u, v], axes=([1], [1])).transpose(0, 3, 1, 2)
    return out


def maxpool2(x):
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def layernorm(x, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sample", SAMPLES)
def test_sample_runs_with_finite_outputs_of_declared_shapes(sample: str) -> None:
    module = load(sample)
    signature = signature_of(find_model(module, None))
    outputs = interpret(module, random_inputs(signature, 0))
    assert list(outputs) == [spec.name for spec in signature.outputs]
    for spec in signature.outputs:
        value = outputs[spec.name]
        assert value.shape == spec.shape and value.dtype == spec.numpy_dtype
        assert np.all(np.isfinite(value)), spec.name


@pytest.mark.parametrize("sample", SAMPLES)
def test_interp_target_agrees_with_the_interpreter(sample: str) -> None:
    # The interp target runs the module after the nn-level simplification
    # pipeline, whose conv-batchnorm folding rounds differently.
    artifact = compiler.compile(SAMPLES_DIR / sample, target="interp")
    inputs = random_inputs(artifact.signature, 5)
    reference = interpret(load(sample), inputs)
    for name, value in artifact.run(**inputs).items():
        np.testing.assert_allclose(value, reference[name], rtol=1e-5, atol=1e-5)


def test_xor_truth_table() -> None:
    x = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
    y = interpret(load("xor.loom"), {"x": x})["y"]
    assert np.array_equal(y, np.array([[0], [1], [1], [0]], np.float32))


def test_mlp_against_numpy() -> None:
    outputs, x = run("mlp.loom")
    h = relu(x @ normal(0.0, 0.05, 1, 784, 128))
    assert_matches(outputs["y"], softmax(h @ normal(0.0, 0.05, 2, 128, 10)))


def test_lenet_against_numpy() -> None:
    outputs, x = run("lenet.loom")
    c1 = maxpool2(relu(conv2d(x, normal(0.0, 0.28, 11, 6, 1, 5, 5), padding=2)))
    c2 = maxpool2(relu(conv2d(c1, normal(0.0, 0.115, 12, 16, 6, 5, 5), padding=0)))
    f1 = relu(c2.reshape(1, 400) @ normal(0.0, 0.07, 13, 400, 120))
    f2 = relu(f1 @ normal(0.0, 0.13, 14, 120, 84))
    assert_matches(outputs["logits"], f2 @ normal(0.0, 0.15, 15, 84, 10))


def test_resblock_against_numpy() -> None:
    outputs, x = run("resblock.loom")

    def conv_bn(h, first_seed):
        w = normal(0.0, 0.118, first_seed, 16, 16, 3, 3)
        mean = normal(0.0, 0.1, first_seed + 1, 16)
        var = uniform(0.5, 1.5, first_seed + 2, 16)
        gamma = uniform(0.8, 1.2, first_seed + 3, 16)
        beta = normal(0.0, 0.1, first_seed + 4, 16)
        per_channel = (slice(None), None, None)
        return (conv2d(h, w, padding=1) - mean[per_channel]) / np.sqrt(var[per_channel] + 1e-5) * gamma[
            per_channel
        ] + beta[per_channel]

    assert_matches(outputs["y"], relu(conv_bn(relu(conv_bn(x, 21)), 26) + x))


def test_transformer_block_against_numpy() -> None:
    outputs, x = run("transformer_block.loom")
    wq, wk, wv, wo = (normal(0.0, 0.125, seed, 64, 64) for seed in (31, 32, 33, 34))
    h = layernorm(x)
    scores = (h @ wq) @ (h @ wk).T / 8
    scores[np.triu_indices(16, k=1)] = -1e9  # token i sees tokens 0..i
    x1 = x + softmax(scores) @ (h @ wv) @ wo
    mlp = gelu(layernorm(x1) @ normal(0.0, 0.125, 35, 64, 256)) @ normal(0.0, 0.0625, 36, 256, 64)
    assert_matches(outputs["y"], x1 + mlp)
