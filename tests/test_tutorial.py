"""docs/tutorial.md runs as written: its model file and every shell command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", TUTORIAL.read_text(), flags=re.S)


def test_tutorial_commands_run_in_an_empty_directory(tmp_path: Path) -> None:
    (model,) = blocks("loom")
    (tmp_path / "tiny.loom").write_text(model)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    outputs = {}
    for command in (line for block in blocks("sh") for line in block.splitlines() if line.strip()):
        proc = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{command}\n{proc.stderr}"
        outputs[command] = proc.stdout
    assert {"tiny.so", "tiny.h", "cal.npz", "tiny.q.mlir"} <= {p.name for p in tmp_path.iterdir()}
    explained = next(out for cmd, out in outputs.items() if "--explain" in cmd)
    assert "add + relu" in explained
    quantized = next(out for cmd, out in outputs.items() if cmd.startswith("loom run tiny.q.mlir"))
    assert "max_abs_err: 0\n" in quantized
    report = json.loads(next(out for cmd, out in outputs.items() if "--target systolic" in cmd))
    assert report["cycles"] > 0 and report["max_abs_err"] <= 1e-4
