"""`loom run --target systolic` with the target's own flags."""

from __future__ import annotations

import json

from compiler.cli import main

REQUIRED = ("cycles", "compute_cycles", "utilization", "dram_bytes", "sram_reads", "sram_writes", "max_abs_err")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_reports_json_with_array_and_dataflow(capsys, root) -> None:
    code, out, err = run_cli(capsys, "run", str(root / "samples/resblock.loom"), "--target", "systolic",
                             "--array", "8x8", "--dataflow", "os", "--report", "json", "--check")
    assert code == 0, err
    report = json.loads(out)
    for key in REQUIRED:
        assert key in report, key
    assert report["array"] == "8x8" and report["dataflow"] == "os"
    assert report["max_abs_err"] <= 1e-5 and report["tolerance"] == 1e-4
    assert report["cycles"] >= report["compute_cycles"] > 0 and 0 < report["utilization"] <= 1
    assert [layer["name"] for layer in report["layers"]] == ["h", "conv2_w"]
    assert [h["op"] for h in report["host_ops"]] == ["add", "relu"]


def test_text_report_and_defaults_from_the_description(capsys, root) -> None:
    code, out, err = run_cli(capsys, "run", str(root / "samples/xor.loom"), "--target", "systolic")
    assert code == 0, err
    assert "model xor on systolic" in out and "array: 16x16" in out and "dataflow: ws" in out


def test_bad_array_is_a_user_error(capsys, root) -> None:
    code, _, err = run_cli(capsys, "run", str(root / "samples/xor.loom"), "--target", "systolic", "--array", "8by8")
    assert code == 1
    assert "error: --array expects ROWSxCOLS" in err and "Traceback" not in err


def test_compile_emits_the_program(capsys, root, tmp_path) -> None:
    out = tmp_path / "xor.s"
    code, _, err = run_cli(capsys, "compile", str(root / "samples/xor.loom"), "--target", "systolic",
                           "--dataflow", "is", "-o", str(out))
    assert code == 0, err
    text = out.read_text()
    assert text.startswith("# loom systolic program") and "config rows=16 cols=16 dataflow=is" in text
