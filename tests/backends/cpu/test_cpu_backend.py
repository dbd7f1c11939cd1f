"""The cpu backend as the driver sees it: registry entry, pipeline, options."""

from __future__ import annotations

import pytest

from backends.cpu import CpuBackend
from backends.registry import get_backend
from compiler import CompileOptions, LoomError

from cpu_loops import loop_signature, parse_loops

COPY = """
builtin.module {
  func.func @copy(%x: memref<4xf32>, %y: memref<4xf32>)
      attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    "memref.copy"(%x, %y) : (memref<4xf32>, memref<4xf32>) -> ()
    func.return
  }
}"""


def test_registered_as_cpu():
    backend = get_backend("cpu")
    assert backend is CpuBackend
    assert backend.description and "\n" not in backend.description
    assert backend.emit_kinds == ("llvm", "asm", "obj", "shared")


def test_pipeline_lowers_to_loops():
    passes = CpuBackend().pipeline(CompileOptions()).split(",")
    assert passes[:3] == ["convert-nn-to-linalg", "bufferize", "convert-linalg-to-loops"]


@pytest.mark.parametrize("level", [-1, 4])
def test_rejects_unknown_optimisation_levels(level):
    module = parse_loops(COPY)
    with pytest.raises(LoomError, match="optimisation levels 0 to 3"):
        CpuBackend().build(module, loop_signature(module), CompileOptions(opt_level=level))
