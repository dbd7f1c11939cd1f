"""vectorize: register-sized multiply-accumulate tiles become vector FMA kernels."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects import scf, vector
from xdsl.dialects.builtin import VectorType
from xdsl.dialects.linalg import ops as linalg

import compiler
from backends.base import CompileOptions
from tiling_harness import on_buffers, write_test_cpu


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> str:
    return write_test_cpu(tmp_path_factory.mktemp("targets"))


def matmul(m: int, k: int, n: int, dtype: str = "f32") -> str:
    return f"""
model mm {{
  input a : {dtype}[{m}, {k}]
  input b : {dtype}[{k}, {n}]
  y = a @ b
  output y
}}"""


def vectorized(source: str, target: str, tiles: str = "") -> list:
    tile = f'tile{{target-config="{target}" tiles="{tiles}"}},' if tiles else ""
    return list(on_buffers(source, f'{tile}vectorize{{target-config="{target}"}}').walk())


def test_register_tile_becomes_an_fma_kernel(target):
    ops = vectorized(matmul(8, 20, 32), target)  # one 8 x 32 accumulator tile: 8 rows x 2 vectors
    assert not [op for op in ops if isinstance(op, linalg.GenericOp)]
    fmas = [op for op in ops if isinstance(op, vector.FMAOp)]
    assert len(fmas) == 16
    (loop,) = [op for op in ops if isinstance(op, scf.ForOp)]
    assert [str(t) for t in loop.result_types] == ["vector<16xf32>"] * 16  # accumulators stay in registers
    loads = [op for op in ops if isinstance(op, vector.LoadOp)]
    inside = [op for op in loads if loop.is_ancestor(op)]
    assert len(loads) - len(inside) == 16 and len(inside) == 2  # C once, two B vectors per step
    assert len([op for op in ops if isinstance(op, vector.BroadcastOp)]) == 8  # one A scalar per row
    assert len([op for op in ops if isinstance(op, vector.StoreOp)]) == 16
    assert loop.attributes["loom.op"].data == "matmul"


def test_tiles_from_the_tile_pass_are_vectorised(target):
    ops = vectorized(matmul(64, 64, 64), target, "matmul=16,64,32")
    assert not [op for op in ops if isinstance(op, linalg.GenericOp)]
    assert {str(op.res.type) for op in ops if isinstance(op, vector.FMAOp)} == {"vector<16xf32>"}


def test_narrower_vectors_cover_short_rows(target):
    ops = vectorized(matmul(4, 8, 24), target)
    assert {str(op.res.type) for op in ops if isinstance(op, vector.FMAOp)} == {"vector<8xf32>"}


@pytest.mark.parametrize("source", [
    matmul(4, 8, 10),            # no vector width divides 10
    matmul(64, 8, 64),           # 64 x 4 accumulators do not fit the register file
    matmul(4, 8, 32, "f16"),     # only f32 kernels
], ids=["width", "registers", "f16"])
def test_other_generics_are_left_for_scalar_loops(target, source):
    ops = vectorized(source, target)
    assert not [op for op in ops if isinstance(op, vector.FMAOp)]
    assert [op for op in ops if isinstance(op, linalg.GenericOp)]


def test_kernels_compile_to_vector_fmas(target, tmp_path):
    artifact = compiler.compile(matmul(48, 40, 64), target="cpu", options=CompileOptions(target_config=target))
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((48, 40), dtype=np.float32), rng.standard_normal((40, 64), dtype=np.float32)
    np.testing.assert_allclose(artifact.run(a=a, b=b)["y"], a @ b, rtol=1e-5, atol=1e-5)
    (path,) = artifact.emit("llvm", str(tmp_path / "mm.ll"))
    assert "@llvm.fma.v16f32" in open(path).read()
