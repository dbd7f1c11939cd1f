"""vectorize: register-sized multiply-accumulate tiles become vector FMA kernels."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects import arith, scf, vector
from xdsl.dialects.builtin import UnitAttr, VectorType
from xdsl.dialects.linalg import ops as linalg
from xdsl.rewriter import InsertPoint

import compiler
from backends.base import CompileOptions
from compiler.context import make_context
from passes.loop_builders import IndexBuilder
from passes.tile import PARALLEL_ATTR
from passes.vectorize import VectorizePass
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
    ops = vectorized(matmul(4, 8, 8), target)
    assert {str(op.res.type) for op in ops if isinstance(op, vector.FMAOp)} == {"vector<8xf32>"}
    assert not [op for op in ops if isinstance(op, vector.MaskedLoadOp | vector.MaskedStoreOp)]


def test_rows_no_vector_divides_end_in_a_masked_vector(target):
    ops = vectorized(matmul(4, 8, 24), target)  # per row: 16 columns, then 8 of a masked 16
    assert {str(op.res.type) for op in ops if isinstance(op, vector.FMAOp)} == {"vector<16xf32>"}
    (mask,) = [op for op in ops if isinstance(op, vector.CreateMaskOp)]
    assert mask.mask_dim_sizes[0].owner.value.value.data == 8
    (loop,) = [op for op in ops if isinstance(op, scf.ForOp)]
    masked_loads = [op for op in ops if isinstance(op, vector.MaskedLoadOp)]
    assert len([op for op in masked_loads if loop.is_ancestor(op)]) == 1  # B's tail, once per step
    assert len(masked_loads) - 1 == 4  # and each row's tail of C, loaded and stored once
    assert len([op for op in ops if isinstance(op, vector.MaskedStoreOp)]) == 4
    assert len([op for op in ops if isinstance(op, vector.StoreOp)]) == 4


@pytest.mark.parametrize("source", [
    matmul(4, 8, 1),             # a single column
    matmul(64, 8, 64),           # 64 x 4 accumulators do not fit the register file
    matmul(4, 8, 32, "f16"),     # only f32 kernels
], ids=["width", "registers", "f16"])
def test_other_generics_are_left_for_scalar_loops(target, source):
    ops = vectorized(source, target)
    assert not [op for op in ops if isinstance(op, vector.FMAOp)]
    assert [op for op in ops if isinstance(op, linalg.GenericOp)]


@pytest.mark.parametrize("columns", [64, 10, 27])
def test_kernels_compile_to_vector_fmas(target, tmp_path, columns):
    artifact = compiler.compile(matmul(48, 40, columns), target="cpu", options=CompileOptions(target_config=target))
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((48, 40), dtype=np.float32), rng.standard_normal((40, columns), dtype=np.float32)
    np.testing.assert_allclose(artifact.run(a=a, b=b)["y"], a @ b, rtol=1e-5, atol=1e-5)
    (path,) = artifact.emit("llvm", str(tmp_path / "mm.ll"))
    code = open(path).read()
    assert "@llvm.fma.v16f32" in code
    assert ("@llvm.masked.store.v16f32" in code) == (columns % 16 != 0)


def test_float_sums_may_be_reassociated(target):
    source = """
model m {
  input x : f32[16, 64]
  input n : i32[16, 64]
  param g : f32[64] = ones
  param b : f32[64] = zeros
  y = layernorm(x * 2, g, b, axis=-1)
  z = sum(n, axis=1)
  output y
  output z
}"""
    ops = vectorized(source, target)
    generics = [op for op in ops if isinstance(op, linalg.GenericOp)]
    reductions = [g for g in generics if any(it.data.value == "reduction" for it in g.iterator_types)]
    additions = {g: [op for op in g.body.ops if isinstance(op, arith.AddfOp)] for g in generics}
    marked = {str(add.fastmath) for g in reductions for add in additions[g]}
    assert len(reductions) == 3 and marked == {"#arith.fastmath<reassoc,nsz>"}  # mean, variance, int sum
    others = [add for g in generics if g not in reductions for add in additions[g]]
    assert others and all(str(add.fastmath) == "#arith.fastmath<none>" for add in others)


def test_sums_in_loops_split_over_threads_keep_their_order(target):
    """Such a loop becomes a function of its own, where LLVM might split the
    sum differently: results must not depend on the thread count."""
    module = on_buffers("model m {\n  input x : f32[8, 64]\n  y = sum(x, axis=1)\n  output y\n}")
    (generic,) = [op for op in module.walk() if isinstance(op, linalg.GenericOp)
                  and any(it.data.value == "reduction" for it in op.iterator_types)]
    builder = IndexBuilder(InsertPoint.before(generic))

    def body(iv, carried):
        generic.detach()
        builder.insert(generic)
        return []

    builder.loop(0, 1, 1, [], body).attributes[PARALLEL_ATTR] = UnitAttr()
    VectorizePass(target).apply(make_context(), module)
    (add,) = [op for op in generic.body.ops if isinstance(op, arith.AddfOp)]
    assert str(add.fastmath) == "#arith.fastmath<none>"
