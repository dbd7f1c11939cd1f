"""Pareto filtering and the dse command."""

from __future__ import annotations

import json

from fpga_models import ROOT, calibration

from backends.fpga.dse import DesignPoint, dominates, fastest_fitting, pareto
from compiler.cli import main


def point(reuse: int, latency: int, dsp: int, lut: int, bram: int, fits: bool = True) -> DesignPoint:
    return DesignPoint(reuse, 0, "dataflow", latency, latency, dsp, lut, bram, fits)


def test_pareto_front() -> None:
    a = point(1, 100, 50, 1000, 10, fits=False)
    b = point(2, 200, 20, 800, 10)
    c = point(4, 250, 20, 900, 10)  # dominated by b
    d = point(8, 400, 10, 900, 12)  # cheaper in DSPs only: stays
    e = point(16, 200, 20, 800, 10)  # equal to b: only the first is kept
    assert dominates(b, c) and not dominates(b, d) and not dominates(b, e)
    assert pareto([a, b, c, d, e]) == [a, b, d]
    assert fastest_fitting([a, b, c, d, e]) == b
    assert fastest_fitting([a]) is None


def test_dse_command(tmp_path_factory, capsys) -> None:
    cal = calibration("mlp", tmp_path_factory.getbasetemp())
    argv = ["dse", str(ROOT / "samples/mlp.loom"), "--quantize", "int8", "--calibration", cal,
            "--reuse", "256,1024,4096", "--partition", "0,2", "--report", "json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    points = [DesignPoint(**{k: p[k] for k in ("reuse_factor", "partition", "mode", "fits")},
                          latency=p["latency_cycles"], interval=p["interval_cycles"], dsp=p["dsp"], lut=p["lut"],
                          bram=p["bram"]) for p in out["points"]]
    assert len(points) == 6
    front = [p for p in points if not any(dominates(q, p) for q in points)]
    assert {(p["reuse_factor"], p["partition"]) for p in out["pareto"]} <= {(p.reuse_factor, p.partition) for p in front}
    best = out["fastest_fitting"]
    assert best["fits"] and best["latency_cycles"] == min(p.latency for p in points if p.fits)
    assert main(argv[:-2]) == 0
    text = capsys.readouterr()
    assert "fastest design that fits" in text.out and "exploring" in text.err


def test_dse_rejects_bad_lists(capsys) -> None:
    assert main(["dse", str(ROOT / "samples/mlp.loom"), "--reuse", "4,x"]) == 1
    assert "--reuse expects" in capsys.readouterr().err
