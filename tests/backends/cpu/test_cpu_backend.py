"""The cpu backend as the driver sees it: registry entry, pipeline, options."""

from __future__ import annotations

import os

import pytest
from xdsl.utils.arg_spec import parse_pipeline

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


def pipeline_specs(options: CompileOptions) -> dict[str, dict[str, tuple]]:
    return {spec.name: {k: tuple(v) for k, v in spec.parameters.items()} for spec in parse_pipeline(CpuBackend().pipeline(options))}


def test_pipeline_lowers_to_loops_through_tiling():
    names = list(pipeline_specs(CompileOptions(fusion=False)))
    assert names[:7] == ["convert-nn-to-linalg", "bufferize", "tile", "vectorize",
                         "convert-linalg-to-loops", "expand-math", "lower-affine"]
    assert "fuse-elementwise" not in names


def test_pipeline_fuses_elementwise_ops_when_asked():
    names = list(pipeline_specs(CompileOptions(fusion=True)))
    assert names.index("fuse-elementwise") == names.index("bufferize") - 1


def test_pipeline_passes_tiling_options_on():
    options = CompileOptions(tiles={"matmul": (64, 256, 128), "h": (8, 8)}, threads=3,
                             target_config="samples/targets/x.toml")
    specs = pipeline_specs(options)
    assert specs["tile"] == {"target-config": ("samples/targets/x.toml",), "threads": (3,),
                             "tiles": ("matmul=64,256,128;h=8,8",)}
    assert specs["vectorize"] == {"target-config": ("samples/targets/x.toml",)}


def test_pipeline_defaults_to_the_host_and_every_core():
    tile = pipeline_specs(CompileOptions())["tile"]
    assert tile["target-config"] == ("host",)
    assert tile["threads"] == (os.cpu_count(),)
    assert "tiles" not in tile


def test_rejects_zero_threads():
    with pytest.raises(LoomError, match="at least one thread"):
        CpuBackend().pipeline(CompileOptions(threads=0))


@pytest.mark.parametrize("level", [-1, 4])
def test_rejects_unknown_optimisation_levels(level):
    module = parse_loops(COPY)
    with pytest.raises(LoomError, match="optimisation levels 0 to 3"):
        CpuBackend().build(module, loop_signature(module), CompileOptions(opt_level=level))
