"""`loom quantize`, and quantized models through `loom run` and `loom passes`."""

from __future__ import annotations

import json

import numpy as np

from compiler.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_quantize_writes_ir_that_runs_bit_exactly(capsys, digits, tmp_path) -> None:
    out = tmp_path / "q.mlir"
    code, table, err = run_cli(capsys, "quantize", digits.model, "--weights", digits.weights,
                               "--calibration", digits.calibration, "--scheme", "int8-per-channel", "-o", out)
    assert code == 0, err
    assert f"wrote {out}" in err
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["layer", "precision"]
    assert [line.split()[0] for line in lines[1:4]] == ["w1", "w2", "w3"]
    assert "output logits: SQNR" in table and "of 68904 in fp32" in table
    assert "quant.matmul" in out.read_text()

    np.savez(tmp_path / "x.npz", x=digits.test_x[:1])
    code, report, err = run_cli(capsys, "run", out, "--inputs", tmp_path / "x.npz", "--check", "--report", "json")
    assert code == 0, err
    assert json.loads(report)["max_abs_err"] == 0


def test_quantize_json_report(capsys, digits, tmp_path) -> None:
    code, out, err = run_cli(capsys, "quantize", digits.model, "--weights", digits.weights, "--calibration",
                             digits.calibration, "--scheme", "w4-awq", "-o", tmp_path / "q.mlir", "--report", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["scheme"] == "w4-awq" and report["calibration_samples"] == 128
    assert [layer["precision"] for layer in report["layers"]] == ["w4 group 64 awq"] * 3
    assert all(0 <= layer["awq_alpha"] <= 1 and layer["sqnr_db"] > 15 for layer in report["layers"])
    assert report["packed_param_bytes"] < report["param_bytes"] < report["float_param_bytes"]


def test_bad_calibration_data_fails_cleanly(capsys, digits, tmp_path) -> None:
    np.savez(tmp_path / "c.npz", x=np.zeros((4, 65), np.float32))
    out = tmp_path / "q.mlir"
    code, _, err = run_cli(capsys, "quantize", digits.model, "--weights", digits.weights,
                           "--calibration", tmp_path / "c.npz", "-o", out)
    assert code == 1
    assert "array 'x' has shape [4, 65], but input x: f32[1,64] needs [S, 1, 64] or [S, 64]" in err
    assert "Traceback" not in err and not out.exists()


def test_int8_without_calibration_is_refused(capsys, digits, tmp_path) -> None:
    code, _, err = run_cli(capsys, "quantize", digits.model, "--weights", digits.weights, "-o", tmp_path / "q.mlir")
    assert code == 1 and "needs calibration inputs (--calibration C.npz)" in err


def test_run_with_weight_only_quantization(capsys, digits) -> None:
    code, out, err = run_cli(capsys, "run", digits.model, "--weights", digits.weights, "--quantize", "w4-group32")
    assert code == 0, err
    assert "output logits: float32[1, 10]" in out


def test_passes_lists_quantization(capsys) -> None:
    _, out, _ = run_cli(capsys, "passes")
    names = {line.split()[0] for line in out.splitlines()}
    assert {"quantize", "convert-quant-to-linalg"} <= names
