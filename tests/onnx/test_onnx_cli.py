"""The ONNX front door as users reach it: `loom import` and compiling a .onnx path."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

import compiler
from compiler.cli import main
from onnx_builders import make_model, max_abs_error, run_onnxruntime


def dense_relu(batch: int | str = 3):
    """Gemm (PyTorch layout) + Relu on an input named `x`."""
    rng = np.random.default_rng(7)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["h"], transB=1, name="fc"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    weights = {"w": rng.normal(size=(5, 8)).astype(np.float32), "b": rng.normal(size=5).astype(np.float32)}
    model = make_model(nodes, {"x": [batch, 8]}, ["y"], weights)
    return model, {"x": rng.normal(size=(3, 8)).astype(np.float32)}


def test_compile_accepts_an_onnx_path(tmp_path) -> None:
    model, feeds = dense_relu()
    path = tmp_path / "dense.onnx"
    onnx.save(model, path)
    got = compiler.compile(str(path), target="cpu").run(**feeds)
    assert max_abs_error(got, run_onnxruntime(model, feeds)) <= 1e-4


def test_loom_import_writes_source_and_weights_that_run(tmp_path, capsys) -> None:
    model, feeds = dense_relu(batch="N")
    onnx.save(model, tmp_path / "dense.onnx")
    out = tmp_path / "dense.loom"
    assert main(["import", str(tmp_path / "dense.onnx"), "-o", str(out), "--dim", "N=3"]) == 0
    weights = out.with_suffix(".npz")
    assert out.is_file() and weights.is_file()
    got = compiler.compile(out, target="cpu", weights=weights).run(**feeds)
    assert max_abs_error(got, run_onnxruntime(model, feeds)) <= 1e-4
    capsys.readouterr()
    assert main(["run", str(out), "--weights", str(weights), "--check"]) == 0


def test_loom_import_errors_write_nothing(tmp_path, capsys) -> None:
    model, _ = dense_relu(batch="N")
    onnx.save(model, tmp_path / "dense.onnx")
    out = tmp_path / "dense.loom"
    assert main(["import", str(tmp_path / "dense.onnx"), "-o", str(out), "--dim", "N=zero"]) == 1
    assert "--dim expects NAME=SIZE" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "dense.onnx"), "-o", str(out)]) == 1
    assert "N" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.onnx"]
