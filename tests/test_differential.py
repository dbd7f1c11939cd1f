"""Every sample on every executable target against the reference interpreter.

This is the harness the whole project leans on: a lowering, pass or backend
bug anywhere shows up here as a numerical difference.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
from compiler.artifact import random_inputs
from harness import SAMPLES, compiled

TARGETS = ["cpu", "interp", "systolic", "pim"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("sample", [p.name for p in SAMPLES])
def test_sample_matches_interpreter(sample: str, target: str) -> None:
    artifact = compiled(sample, target)
    for seed in (0, 1):
        result = compiler.check(artifact, random_inputs(artifact.signature, seed))
        assert result.max_abs_err <= 1e-4, (sample, target, seed, result.max_abs_err)
        for name, value in result.outputs.items():
            assert np.all(np.isfinite(value)), name


def test_report_has_required_fields() -> None:
    artifact = compiled("mlp.loom", "cpu")
    compiler.check(artifact, random_inputs(artifact.signature, 0))
    report = artifact.report
    assert report["target"] == "cpu" and report["model"] == "mlp"
    assert report["outputs"] == {"y": {"shape": [1, 10], "dtype": "f32"}}
    assert report["wall_time_s"] > 0
    assert "max_abs_err" in report


def test_extra_pipeline_keeps_semantics() -> None:
    source = (compiled("transformer_block.loom", "interp").reference_module)
    artifact = compiler.compile(source, target="cpu", passes="cse,canonicalize,dce")
    result = compiler.check(artifact, random_inputs(artifact.signature, 3))
    assert result.max_abs_err <= 1e-4


CONFIGURATIONS = {
    "no-fusion": {"fusion": False},
    "one-thread": {"threads": 1},
    "no-fusion-one-thread": {"fusion": False, "threads": 1},
    "small-tiles": {"tiles": {"matmul": (1, 8, 16), "conv2d": (1, 4, 2, 1, 1, 1, 8)}},
}


def _options(sample: str, config: str) -> compiler.CompileOptions:
    """The configuration, with tile overrides only for op kinds the sample has
    (an override naming no op is an error)."""
    fields = dict(CONFIGURATIONS[config])
    if "tiles" in fields:
        kinds = {op.name.removeprefix("nn.") for op in compiled(sample, "interp").reference_module.walk()}
        fields["tiles"] = {k: v for k, v in fields["tiles"].items() if k in kinds}
    return compiler.CompileOptions(**fields)


@pytest.mark.parametrize("config", sorted(CONFIGURATIONS))
@pytest.mark.parametrize("sample", [p.name for p in SAMPLES])
def test_pipeline_configurations_match_interpreter(sample: str, config: str) -> None:
    artifact = compiler.compile(SAMPLES[0].parent / sample, target="cpu", options=_options(sample, config))
    result = compiler.check(artifact, random_inputs(artifact.signature, 2))
    assert result.max_abs_err <= 1e-4, (sample, config, result.max_abs_err)
