"""Shared by the tile and vectorize tests: a fixed CPU description and models lowered to buffers."""

from __future__ import annotations

from xdsl.dialects.builtin import ModuleOp

from compiler.api import load_module, select_model
from compiler.context import make_context
from compiler.pass_manager import PassManager

# A two-core AVX-512 machine with the caches of a recent x86 server core, so
# that the tests do not depend on the machine they run on.
TEST_CPU = """
name = "test-cpu"
clock_mhz = 3000
[[compute]]
kind = "cpu-core"
count = 2
lanes = 16
ops_per_cycle = 32
dtypes = ["f32"]
[[memory]]
name = "L1"
capacity_bytes = "32KiB"
bandwidth_bytes_per_cycle = 64
latency_cycles = 4
[[memory]]
name = "L2"
capacity_bytes = "1MiB"
bandwidth_bytes_per_cycle = 32
latency_cycles = 14
[[memory]]
name = "L3"
capacity_bytes = "32MiB"
bandwidth_bytes_per_cycle = 16
latency_cycles = 40
[[memory]]
name = "DRAM"
capacity_bytes = "8GiB"
bandwidth_bytes_per_cycle = 8
latency_cycles = 200
"""


def write_test_cpu(directory) -> str:
    path = directory / "test-cpu.toml"
    path.write_text(TEST_CPU)
    return str(path)


def on_buffers(source: str, passes: str = "") -> ModuleOp:
    """`source`'s model lowered to buffers, then through `passes`."""
    module = select_model(load_module(source), None)
    pipeline = "fold-constants,canonicalize,cse,dce,convert-nn-to-linalg,bufferize"
    PassManager.from_pipeline(make_context(), ",".join(p for p in (pipeline, passes) if p)).run(module)
    return module
