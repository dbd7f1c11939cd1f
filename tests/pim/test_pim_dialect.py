"""The pim dialect: printing and parsing, verification, and the semantics of the expanded ops."""

from __future__ import annotations

import numpy as np
import pytest
from pim_helpers import ROOT, hbm
from xdsl.dialects.builtin import StringAttr

import compiler
from backends.base import CompileOptions
from compiler.diagnostics import LoomError
from compiler.mlir import parse_mlir
from dialects.pim import GemvOp, MacOp, broadcast_values, mac_values, reduce_values
from passes.pim_map import make_layout


def lowered(sample: str, **extra) -> str:
    return compiler.compile(ROOT / f"samples/{sample}.loom", target="pim",
                            options=CompileOptions(extra=extra)).stages.lowered


@pytest.mark.parametrize("sample, extra", [("mlp", {}), ("gpt_decoder", {"pim_mode": "per-bank"}),
                                           ("mlp", {"pim_mode": "host"})])
def test_print_parse_round_trip(sample: str, extra: dict) -> None:
    text = lowered(sample, **extra)
    assert "#pim.layout<m = 1, k = " in text
    assert str(parse_mlir(text)) == text


def test_verifier_rejects_a_bad_mode_and_a_wrong_result() -> None:
    module = parse_mlir(lowered("mlp"))
    mac = next(op for op in module.walk() if isinstance(op, MacOp))
    mac.properties["mode"] = StringAttr("some-banks")
    with pytest.raises(Exception, match="mode must be one of all-bank, per-bank"):
        mac.verify()
    text = lowered("mlp").replace("tensor<1x4x128x8xf32>", "tensor<1x4x128x4xf32>")
    with pytest.raises(LoomError, match="the result must be f32\\[1,4,128,8\\]"):
        parse_mlir(text)


def test_layout_attribute_is_checked() -> None:
    text = lowered("mlp").replace("elem_bytes = 4", "elem_bytes = 3", 1)
    with pytest.raises(LoomError, match="elem_bytes must be 4, 2 or 1"):
        parse_mlir(text)
    text = lowered("mlp").replace("m = 1, k = 784", "k = 784, m = 1", 1)
    with pytest.raises(LoomError, match="#pim.layout takes m, k, n"):
        parse_mlir(text)


@pytest.mark.parametrize("elem_bytes, splits, transposed", [(4, 1, False), (2, 3, True), (1, 2, False)])
def test_broadcast_mac_reduce_is_a_matrix_product(elem_bytes: int, splits: int, transposed: bool) -> None:
    layout = make_layout(hbm(), 3, 700, 45, transposed, elem_bytes, splits)
    rng = np.random.default_rng(elem_bytes)
    shape = (45, 700) if transposed else (700, 45)
    if elem_bytes == 1:
        x, w = rng.integers(-128, 128, (3, 700)).astype(np.int8), rng.integers(-128, 128, shape).astype(np.int8)
        zero_points = (-128, 3)
        acc = mac_values(broadcast_values(x, layout), w, layout)
        got = reduce_values(acc, layout, (3, 45), np.dtype(np.int32), x, w, zero_points)
        kn = w.T if transposed else w
        want = (x.astype(np.int64) + 128) @ (kn.astype(np.int64) - 3)
        np.testing.assert_array_equal(got, want.astype(np.int32))
    else:
        x, w = rng.standard_normal((3, 700)).astype(np.float32), rng.standard_normal(shape).astype(np.float32)
        acc = mac_values(broadcast_values(x, layout), w, layout)
        got = reduce_values(acc, layout, (3, 45), np.dtype(np.float32))
        kn = w.T if transposed else w
        unit = np.float16 if elem_bytes == 2 else np.float32
        want = x.astype(unit).astype(np.float64) @ kn.astype(unit).astype(np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_gemv_carries_the_quantized_zero_points(tmp_path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((4, 1, 784)).astype(np.float32))
    artifact = compiler.compile(ROOT / "samples/mlp.loom", target="pim", passes="",
                                options=CompileOptions(quantize="int8", calibration=str(tmp_path / "cal.npz"),
                                                       extra={"pim_mode": "all-bank"}))
    assert "pim.reduce" in artifact.stages.lowered and "lhs_zero_point = -128" in artifact.stages.lowered
    assert not any(isinstance(op, GemvOp) for op in parse_mlir(artifact.stages.lowered).walk())
