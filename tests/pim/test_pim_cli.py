"""`loom run --target pim --check --report json` end to end, emitted files, host/PIM overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pim_helpers import ROOT

import compiler
from backends.base import CompileOptions
from backends.pim.checker import check_trace
from compiler.artifact import random_inputs
from compiler.cli import main

REQUIRED = ("cycles", "row_hits", "row_misses", "energy_pj", "host_cycles", "pim_cycles", "max_abs_err")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("sample", ["mlp", "gpt_decoder"])
def test_run_reports_json(capsys, sample: str) -> None:
    code, out, err = run_cli(capsys, "run", str(ROOT / f"samples/{sample}.loom"), "--target", "pim",
                             "--check", "--report", "json")
    assert code == 0, err
    report = json.loads(out)
    for key in REQUIRED:
        assert key in report, key
    assert report["max_abs_err"] <= report["tolerance"] == 1e-4
    assert report["cycles"] >= max(report["pim_cycles"], report["host_cycles"]) > 0
    assert report["row_hits"] > 10 * report["row_misses"] > 0  # rows are read whole
    assert report["energy_pj"] > 0 and report["timing_check"] == "passed"
    assert any(p["mode"] in ("all-bank", "per-bank") for p in report["placement"])


def test_gpt_decoder_puts_every_product_with_a_resident_matrix_on_pim() -> None:
    artifact = compiler.compile(ROOT / "samples/gpt_decoder.loom", target="pim")
    layers = {p["layer"]: p for p in artifact.report["placement"]}
    assert set(layers) == {"w_query", "w_key", "w_value", "k_cache", "v_cache", "w_out", "w_up", "w_down"}
    assert all(p["mode"] != "host" for p in layers.values())
    assert layers["k_cache"]["k"] == 256 and layers["k_cache"]["n"] == 128  # q @ transpose(k_cache)


def test_int8_is_bit_exact(capsys, tmp_path) -> None:
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((8, 1, 784)).astype(np.float32))
    artifact = compiler.compile(ROOT / "samples/mlp.loom", target="pim",
                                options=CompileOptions(quantize="int8-per-channel",
                                                       calibration=str(tmp_path / "cal.npz"),
                                                       extra={"pim_mode": "all-bank"}))
    assert {p["dtype"] for p in artifact.report["placement"]} == {"i8"}
    for seed in range(3):
        assert compiler.check(artifact, random_inputs(artifact.signature, seed)).max_abs_err == 0.0


def test_f16_units_stay_within_half_precision() -> None:
    artifact = compiler.compile(ROOT / "samples/gpt_decoder.loom", target="pim",
                                options=CompileOptions(extra={"pim_precision": "f16"}))
    result = compiler.check(artifact, random_inputs(artifact.signature, 2))
    assert 0 < result.max_abs_err < 5e-3  # f16 operands, f32 accumulation
    assert {p["dtype"] for p in artifact.report["placement"]} == {"f16"}


def test_dual_row_buffers_overlap_host_and_pim(tmp_path) -> None:
    text = (ROOT / "samples/targets/pim-hbm.toml").read_text()
    path = tmp_path / "pim-neupims.toml"
    path.write_text(text.replace('name = "pim-hbm"', 'name = "pim-neupims"')
                    .replace("dual_row_buffers = false", "dual_row_buffers = true"))
    inputs = None
    reports = []
    for config in ("pim-hbm", str(path)):
        artifact = compiler.compile(ROOT / "samples/gpt_decoder.loom", target="pim",
                                    options=CompileOptions(target_config=config))
        inputs = inputs or random_inputs(artifact.signature, 0)
        assert compiler.check(artifact, inputs).max_abs_err <= 1e-4
        reports.append(artifact.report)
    serial, overlapped = reports
    assert serial["overlapped_cycles"] == 0 < overlapped["overlapped_cycles"]
    assert overlapped["cycles"] < serial["cycles"]


def test_emit_commands_bin_and_trace(tmp_path) -> None:
    artifact = compiler.compile(ROOT / "samples/mlp.loom", target="pim")
    (commands,) = artifact.emit("commands", str(tmp_path / "mlp.commands"))
    text = Path(commands).read_text()
    assert text.startswith("# w1 (all-bank)") and "MAC unit=all bank=0 row=0 col=0 reg=0 acc=0 first" in text
    (binary,) = artifact.emit("bin", str(tmp_path / "mlp.bin"))
    assert len(Path(binary).read_bytes()) == 8 * artifact.report["program_commands"]
    (trace,) = artifact.emit("trace", str(tmp_path / "mlp.trace"))
    lines = Path(trace).read_text().splitlines()
    assert len(lines) == artifact.report["trace_commands"] and lines[0].startswith("0 ch")
    assert check_trace(artifact.stack.trace_array(), artifact.program.config) == []
