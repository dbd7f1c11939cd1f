"""The Python call path of CPU artifacts: buffers staged in call frames, large
tensors in place, fresh outputs, overlapping calls."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import compiler
from backends.cpu.abi import ALIGNMENT, STAGED_BYTES, address, aligned_empty


def affine(rows: int, dtype: str = "f32") -> compiler.Artifact:
    source = f"""
model affine {{
  input x : {dtype}[{rows}, 64]
  input s : {dtype}[64]
  y = x * s + 1
  z = sum(x, axis=1)
  output y
  output z
}}"""
    return compiler.compile(source, target="cpu")


def expected(x: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x * s + 1, x.sum(axis=1)


SMALL, LARGE = 4, 2 * STAGED_BYTES // (64 * 4)  # y of 1 KiB, and of twice the staging limit


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(11)


@pytest.fixture(scope="module")
def small():
    return affine(SMALL)


@pytest.fixture(scope="module")
def large():
    return affine(LARGE)


def check(artifact: compiler.Artifact, x: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    out = artifact.run(x=x, s=s)
    y, z = expected(np.asarray(x, np.float32), np.asarray(s, np.float32))
    np.testing.assert_allclose(out["y"], y, rtol=1e-6, atol=1e-6)  # x * s + 1 may be one FMA
    np.testing.assert_allclose(out["z"], z, rtol=1e-5, atol=1e-5)
    return out


@pytest.mark.parametrize("which", ["small", "large"])
def test_every_call_returns_fresh_outputs(request, which, rng):
    artifact = request.getfixturevalue(which)
    rows = SMALL if which == "small" else LARGE
    s = rng.standard_normal(64, dtype=np.float32)
    x1, x2 = (rng.standard_normal((rows, 64), dtype=np.float32) for _ in range(2))
    first = check(artifact, x1, s)
    kept = {name: value.copy() for name, value in first.items()}
    second = check(artifact, x2, s)
    for name in first:
        assert first[name] is not second[name] and not np.shares_memory(first[name], second[name])
        np.testing.assert_array_equal(first[name], kept[name])  # the second call left the first's alone
    first["y"][...] = 0  # the caller owns its outputs
    check(artifact, x1, s)


@pytest.mark.parametrize("aligned", [True, False])
def test_large_inputs_aligned_or_not(large, rng, aligned):
    storage = aligned_empty((LARGE * 64 + 1,), np.dtype(np.float32))
    x = storage[: LARGE * 64] if aligned else storage[1:]
    x = x.reshape(LARGE, 64)
    x[...] = rng.standard_normal((LARGE, 64))
    assert (address(x) % ALIGNMENT == 0) == aligned
    check(large, x, rng.standard_normal(64, dtype=np.float32))
    check(large, x[::-1], np.ones(64, np.float32))  # a non-contiguous view is copied


def test_inputs_are_converted_and_checked(small, rng):
    x = rng.standard_normal((SMALL, 64))  # float64, converted on the way in
    check(small, x, [1.0] * 64)
    check(small, np.asfortranarray(x), np.full(64, 2.0))
    with pytest.raises(compiler.LoomError, match="must have shape"):
        small.run(x=x[:, :32], s=np.ones(64))
    with pytest.raises(compiler.LoomError, match="missing input"):
        small.run(x=x)
    with pytest.raises(compiler.LoomError, match="no input named t"):
        small.run(x=x, s=np.ones(64), t=1)


def test_overlapping_calls_from_threads(large, rng):
    """Calls release the GIL, so they overlap; each takes its own call frame."""
    inputs = [(rng.standard_normal((LARGE, 64), dtype=np.float32), rng.standard_normal(64, dtype=np.float32))
              for _ in range(4)]
    failures = []

    def work(x, s):
        try:
            for _ in range(30):
                check(large, x, s)
        except AssertionError as error:
            failures.append(error)

    threads = [threading.Thread(target=work, args=pair) for pair in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


@pytest.mark.parametrize("rows", [SMALL, LARGE])
def test_bf16_tensors_cross_as_raw_bits(rows, rng):
    artifact = affine(rows, "bf16")
    x = rng.standard_normal((rows, 64), dtype=np.float32)
    s = rng.standard_normal(64, dtype=np.float32)
    result = compiler.check(artifact, {"x": x, "s": s})
    assert result.outputs["y"].dtype == np.float32
    assert result.max_abs_err <= 0.1
