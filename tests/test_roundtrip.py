"""Printed IR parses back to the same text at every stage of the CPU pipeline."""

from __future__ import annotations

import pytest

from backends.cpu import CpuBackend
from backends.base import CompileOptions
from compiler.api import MODEL_PIPELINE, load_module, select_model
from compiler.context import make_context
from compiler.mlir import parse_mlir
from compiler.pass_manager import build_pipeline
from harness import SAMPLES


def _assert_roundtrips(module, where: str) -> None:
    text = str(module)
    again = str(parse_mlir(text, where))
    assert again == text, f"round-trip changed the IR after {where}"


@pytest.mark.parametrize("sample", [p.name for p in SAMPLES])
def test_every_stage_roundtrips(sample: str, root) -> None:
    module = select_model(load_module(root / "samples" / sample), None)
    _assert_roundtrips(module, "frontend")
    pipeline = MODEL_PIPELINE + "," + CpuBackend().pipeline(CompileOptions())
    ctx = make_context()
    for p in build_pipeline(pipeline):
        p.apply(ctx, module)
        module.verify()
        _assert_roundtrips(module, p.name)
