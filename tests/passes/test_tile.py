"""tile: loops over tiles with generics on subviews, remainders, overrides,
epilogue fusion, parallel marking, and the tiled code against the interpreter."""

from __future__ import annotations

import pytest
from xdsl.dialects import func, memref, scf
from xdsl.dialects.builtin import DenseArrayBase, DictionaryAttr, ModuleOp
from xdsl.dialects.linalg import ops as linalg

import compiler
from backends.base import CompileOptions
from compiler.artifact import random_inputs
from compiler.diagnostics import LoomError
from passes.tile import PARALLEL_ATTR, TILES_ATTR, parse_tile_overrides
from tiling_harness import on_buffers, write_test_cpu


@pytest.fixture(scope="module")
def target(tmp_path_factory) -> str:
    return write_test_cpu(tmp_path_factory.mktemp("targets"))


def matmul_model(m: int, k: int, n: int, epilogue: str = "c") -> str:
    return f"""
model mm {{
  input a : f32[{m}, {k}]
  input b : f32[{k}, {n}]
  input bias : f32[{n}]
  c = a @ b
  y = {epilogue}
  output y
}}"""


def tile(source: str, target: str, options: str = "") -> ModuleOp:
    return on_buffers(source, f"tile{{target-config=\"{target}\" {options}}}")


def body(module: ModuleOp) -> list:
    model = next(op for op in module.ops if isinstance(op, func.FuncOp))
    return list(model.body.block.ops)


def generics(module: ModuleOp, kind: str) -> list[linalg.GenericOp]:
    return [op for op in module.walk()
            if isinstance(op, linalg.GenericOp) and op.attributes.get("loom.op").data == kind]


def tiles_of(op: linalg.GenericOp) -> tuple[int, ...]:
    attr = op.attributes[TILES_ATTR]
    assert isinstance(attr, DenseArrayBase)
    return attr.get_values()


# --------------------------------------------------------------------------
# IR
# --------------------------------------------------------------------------


def test_matmul_becomes_loops_over_generics_on_subviews(target):
    before = on_buffers(matmul_model(100, 37, 84))
    assert [op.name for op in body(before)] == ["arith.constant", "linalg.fill", "linalg.generic", "func.return"]
    after = tile(matmul_model(100, 37, 84), target)
    assert any(isinstance(op, scf.ForOp) for op in body(after))
    tiles = generics(after, "matmul")
    assert all(isinstance(t.outputs[0].owner, memref.SubviewOp) for t in tiles)
    assert tiles and all(isinstance(v.owner, memref.SubviewOp) or v.type.get_shape() == (37, 84)
                         for t in tiles for v in t.operands)
    # every tile is statically shaped; rows 100 and columns 84 leave remainder tiles
    shapes = {t.outputs[0].type.get_shape() for t in tiles}
    assert all(rows <= 8 for rows, _ in shapes)
    assert {cols for _, cols in shapes} == {16, 4}
    assert {rows for rows, _ in shapes} == {8, 4}
    assert {tiles_of(t) for t in tiles} == {(40, 0, 0)}
    cost = tiles[0].attributes["loom.cost"]
    assert isinstance(cost, DictionaryAttr)
    assert cost.data["time_s"].value.data > 0 and cost.data["bytes"].value.data >= 4 * (100 * 37 + 37 * 84 + 100 * 84)


def test_printed_tiles_show_subviews_and_the_recorded_choice(target):
    text = str(tile(matmul_model(64, 32, 64), target, 'tiles="matmul=32,32,32"'))
    assert "scf.for" in text
    assert "memref.subview %a[" in text and "[8, 32] [1, 1] : memref<64x32xf32> to memref<8x32xf32, strided<[32, 1]" in text
    assert "loom.tiles = array<i64: 32, 0, 32>" in text


def test_overrides_are_clamped_and_recorded(target):
    module = tile(matmul_model(100, 37, 84), target, 'tiles="matmul=64,1000,16"')
    tiles = generics(module, "matmul")
    assert {tiles_of(t) for t in tiles} == {(64, 0, 16)}
    assert max(t.outputs[0].type.get_shape()[1] for t in tiles) <= 16


def test_overrides_by_dsl_name_win_over_the_op_kind(target):
    source = """
model two {
  input a : f32[32, 32]
  input b : f32[32, 32]
  first = a @ b
  second = first @ b
  output second
}"""
    module = tile(source, target, 'tiles="matmul=16,32,32;second=8,8,8"')
    chosen = {}
    for op in generics(module, "matmul"):
        chosen.setdefault(op.attributes.get("loom.name").data if "loom.name" in op.attributes else "", set()).add(
            tiles_of(op))
    assert chosen == {"first": {(16, 0, 0)}, "second": {(8, 8, 8)}}


@pytest.mark.parametrize("tiles, message", [
    ("matmul=8,8", "'matmul': got 2 sizes, but the op has 3 loops"),
    ("matmul=8,0,8", "must be positive"),
    ("matmul=8,-4,8", "must be positive"),
    ("matmul=8,x,8", "expected 'op=size,size,...'"),
    ("matmul", "expected 'op=size,size,...'"),
    ("conv2d=1,2,3", r"tile sizes given for 'conv2d', but no reduction op has that kind or name "
                     r"\(reduction ops here: c, matmul\)"),
])
def test_bad_overrides_are_user_errors(target, tiles, message):
    with pytest.raises(LoomError, match=message):
        tile(matmul_model(16, 16, 16), target, f'tiles="{tiles}"')


def test_override_strings_parse():
    assert parse_tile_overrides("matmul=64,256,128; h=32,32,32") == {"matmul": (64, 256, 128), "h": (32, 32, 32)}
    assert parse_tile_overrides("") == {}


def test_fill_and_epilogues_run_inside_the_nest(target):
    module = tile(matmul_model(100, 37, 84, "relu(c + bias)"), target)
    structured = [op for op in module.walk() if isinstance(op, linalg.FillOp | linalg.GenericOp)]
    assert all(isinstance(op.outputs[0].owner, memref.SubviewOp) for op in structured)
    for matmul_tile in generics(module, "matmul"):
        block_ops = list(matmul_tile.parent_block().ops)
        kinds = [op.attributes["loom.op"].data for op in block_ops if isinstance(op, linalg.FillOp | linalg.GenericOp)]
        assert kinds == ["matmul", "matmul", "add", "relu"]  # fill, matmul, then its epilogues
        fill = next(op for op in block_ops if isinstance(op, linalg.FillOp))
        assert fill.outputs[0].type == matmul_tile.outputs[0].type


def test_epilogues_follow_the_reduction_loop(target):
    """With the reduction split, the fill comes before the loop over k tiles and
    the epilogue after it, on the same output tile."""
    module = tile(matmul_model(64, 96, 64, "c + bias"), target, 'tiles="matmul=32,32,64"')
    fill = next(op for op in module.walk() if isinstance(op, linalg.FillOp))
    block = list(fill.parent_block().ops)
    position = block.index(fill)
    k_loop = next(op for op in block[position:] if isinstance(op, scf.ForOp))
    add = next(op for op in block if isinstance(op, linalg.GenericOp) and op.attributes["loom.op"].data == "add")
    assert position < block.index(k_loop) < block.index(add)
    assert add.inputs[0].type == fill.outputs[0].type == add.outputs[0].type
    assert generics(module, "matmul")[0].outputs[0].type.get_shape() == (8, 32)


def test_epilogues_reading_later_results_stay_outside(target):
    source = """
model late {
  input a : f32[32, 32]
  input b : f32[32, 32]
  c = a @ b
  e = exp(a)
  y = c + e
  output y
}"""
    module = tile(source, target)
    top = [op.attributes["loom.op"].data for op in body(module) if isinstance(op, linalg.GenericOp)]
    assert "add" in top


@pytest.mark.parametrize("n, threads, parallel", [(512, 2, True), (512, 1, False), (32, 2, False)])
def test_outer_loop_is_parallel_when_it_pays(target, n, threads, parallel):
    module = tile(matmul_model(n, n, n), target, f"threads={threads}")
    marked = [op for op in module.walk() if isinstance(op, scf.ForOp) and PARALLEL_ATTR in op.attributes]
    assert bool(marked) == parallel
    if parallel:
        (loop,) = marked
        assert loop.parent_op() is next(op for op in module.ops if isinstance(op, func.FuncOp))


def test_other_reductions_are_left_alone_without_overrides(target):
    source = """
model sm {
  input x : f32[16, 64]
  y = softmax(x, axis=-1)
  output y
}"""
    before, after = on_buffers(source), tile(source, target)
    assert str(before) == str(after)


# --------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------


def check(source: str, options: CompileOptions, seed: int = 0) -> None:
    artifact = compiler.compile(source, target="cpu", options=options)
    result = compiler.check(artifact, random_inputs(artifact.signature, seed))
    assert result.max_abs_err <= 1e-4


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (17, 33, 65), (100, 37, 84), (1, 300, 130)])
@pytest.mark.parametrize("tiles", [{}, {"matmul": (5, 7, 9)}, {"matmul": (16, 8, 48)}], ids=["model", "odd", "k-split"])
@pytest.mark.parametrize("fusion", [False, True], ids=["unfused", "fused"])
def test_tiled_matmul_with_epilogue_matches_the_interpreter(target, shape, tiles, fusion):
    options = CompileOptions(tiles=tiles, fusion=fusion, target_config=target, threads=2)
    check(matmul_model(*shape, "relu(c + bias) * 0.5"), options)


def test_tiled_batched_matmul_matches_the_interpreter(target):
    source = """
model bmm {
  input a : f32[3, 20, 30]
  input b : f32[30, 40]
  y = tanh(a @ b)
  output y
}"""
    for tiles in ({}, {"matmul": (2, 7, 11, 13)}):
        check(source, CompileOptions(tiles=tiles, target_config=target))


@pytest.mark.parametrize("geometry", [
    dict(c=3, o=8, size=19, k=3, stride=1, pad=1, groups=1),
    dict(c=4, o=16, size=20, k=5, stride=1, pad=2, groups=1),
    dict(c=4, o=6, size=17, k=3, stride=2, pad=1, groups=1),
    dict(c=8, o=8, size=18, k=3, stride=1, pad=1, groups=2),
])
def test_tiled_convolution_with_epilogue_matches_the_interpreter(target, geometry):
    g = geometry
    source = f"""
model conv {{
  input x : f32[2, {g['c']}, {g['size']}, {g['size']}]
  param w : f32[{g['o']}, {g['c'] // g['groups']}, {g['k']}, {g['k']}] = normal(0.0, 0.3, seed=1)
  param b : f32[{g['o']}] = normal(0.0, 0.3, seed=2)
  y = relu(conv2d(x, w, b, stride={g['stride']}, padding={g['pad']}, groups={g['groups']}))
  output y
}}"""
    check(source, CompileOptions(target_config=target))
    rank = 8 if g["groups"] > 1 else 7
    check(source, CompileOptions(target_config=target, tiles={"conv2d": (1, 3) + (5,) * (rank - 2)}))


def test_epilogue_using_loop_indices_sees_whole_tensor_positions(target):
    """tril reads linalg.index: inside a tile it must add the tile's offset."""
    source = """
model masked {
  input a : f32[37, 20]
  input b : f32[20, 37]
  y = tril(a @ b, k=-1, fill=-3.0)
  output y
}"""
    check(source, CompileOptions(target_config=target, tiles={"matmul": (8, 20, 16)}, fusion=False))


def test_override_tiles_plain_reductions(target):
    source = """
model total {
  input x : f32[7, 11, 13]
  y = sum(x * 2.0, axis=1)
  output y
}"""
    check(source, CompileOptions(target_config=target, tiles={"sum": (3, 4, 5)}))
