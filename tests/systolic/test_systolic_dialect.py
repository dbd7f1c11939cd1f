"""The systolic dialect: views, the array configuration, verifiers, printing."""

from __future__ import annotations

import pytest
from xdsl.dialects.builtin import DictionaryAttr, ModuleOp, StringAttr, f32
from xdsl.ir import Block, Region
from xdsl.utils.exceptions import VerifyException

from compiler.diagnostics import LoomError
from compiler.mlir import parse_mlir
from dialects import systolic as sy
from dialects.mem import AllocOp, memref_in, target_attr
from systolic_models import compiled_sample

CONFIG = sy.ArrayConfig(4, 8, "ws", 1024, 1024, 1024, 1 << 30, 16.0, 100, 1e9, ("i8",))


def _module(*ops_of) -> ModuleOp:
    """A module with the mem levels and array configuration, holding the ops
    built by each `ops_of(alloc)` (alloc(level, shape) -> buffer)."""
    block = Block()

    def alloc(level: str, shape: list[int]):
        op = AllocOp(memref_in(level, shape, f32))
        block.add_op(op)
        return op.memref

    for build in ops_of:
        for op in build(alloc):
            block.add_op(op)
    module = ModuleOp(Region([block]))
    module.attributes["mem.target"] = target_attr({"ifmap": 1024, "filter": 1024, "ofmap": 1024, "DRAM": 1 << 30})
    module.attributes[sy.CONFIG_ATTR] = CONFIG.to_attr()
    return module


def test_views_round_trip_through_attributes() -> None:
    matrix = sy.MatrixView(3, 4, 5, 4, 1)
    assert sy.view_from_attr(matrix.to_attr()) == matrix
    assert matrix.transposed() == sy.MatrixView(4, 3, 5, 1, 4)
    assert matrix.last_element() == 5 + 2 * 4 + 3
    im2col = sy.Im2colView(6, 9, 0, 2, 0, 3, 3, 3, 1, 1, 1, 1, 1, 1, 4, 4, 16)
    assert sy.view_from_attr(im2col.to_attr()) == im2col
    assert sy.view_shape(im2col.transposed()) == (9, 6)


@pytest.mark.parametrize(
    "attr, message",
    [
        (StringAttr("diagonal"), "expected a #systolic.matrix or #systolic.im2col view"),
        (sy.MatrixViewAttr((2, 2, 0)), "#systolic.matrix needs 5 values, got 3"),
        (sy.MatrixView(2, 2, 0, -2, 1).to_attr(), "negative offset or stride"),
        (sy.MatrixView(0, 2, 0, 2, 1).to_attr(), "non-positive extent"),
    ],
)
def test_bad_views_are_rejected(attr, message: str) -> None:
    with pytest.raises(VerifyException, match=message):
        sy.view_from_attr(attr)


def test_views_print_by_name_and_parse_back() -> None:
    text = str(sy.MatrixView(3, 4, 5, 4, 1).to_attr())
    assert text == "#systolic.matrix<rows = 3, cols = 4, offset = 5, row_stride = 4, col_stride = 1>"
    with pytest.raises(LoomError, match="takes rows, cols, offset, row_stride, col_stride, in this order"):
        parse_mlir('builtin.module attributes {v = #systolic.matrix<cols = 4, rows = 3, offset = 0, '
                   'row_stride = 4, col_stride = 1>} {}', "view.mlir")


def test_array_config_round_trips() -> None:
    assert sy.ArrayConfig.from_attr(CONFIG.to_attr()) == CONFIG
    with pytest.raises(VerifyException, match="missing 'rows'"):
        sy.ArrayConfig.from_attr(DictionaryAttr({}))


def test_array_ops_verify_against_buffers_and_array() -> None:
    good = _module(lambda alloc: [sy.PreloadOp(alloc("filter", [4, 8]), sy.MatrixView(4, 8, 0, 8, 1))])
    good.verify()
    beyond_buffer = _module(lambda alloc: [sy.PreloadOp(alloc("filter", [4, 8]), sy.MatrixView(4, 8, 1, 8, 1))])
    with pytest.raises(VerifyException, match="reaches element 32 of a 32-element buffer"):
        beyond_buffer.verify()
    too_wide = _module(lambda alloc: [sy.PreloadOp(alloc("filter", [8, 8]), sy.MatrixView(8, 8, 0, 8, 1))])
    with pytest.raises(VerifyException, match="the 8x8 stationary tile does not fit the 4x8 array"):
        too_wide.verify()
    mismatched = _module(lambda alloc: [sy.StreamOp(alloc("ifmap", [4, 6]), sy.MatrixView(4, 6, 0, 6, 1),
                                                    alloc("filter", [5, 8]), sy.MatrixView(5, 8, 0, 8, 1))])
    with pytest.raises(VerifyException, match="disagree on the stream length"):
        mismatched.verify()


def test_postprocess_verifier() -> None:
    def post(mode: str, requant=None, out_shape=(4, 8)):
        def build(alloc):
            acc, out = alloc("ofmap", [4, 8]), alloc("ofmap", list(out_shape))
            view = sy.MatrixView(out_shape[0], out_shape[1], 0, out_shape[1], 1)
            return [sy.PostprocessOp(acc, sy.MatrixView(4, 8, 0, 8, 1), out, view, mode=mode, relu=True,
                                     requant=requant)]
        return _module(build)

    post("none").verify()
    post("requant", (3, 2, 0)).verify()
    with pytest.raises(VerifyException, match="requant mode takes multiplier and shift"):
        post("requant").verify()
    with pytest.raises(VerifyException, match="mode must be one of none, wrap, requant"):
        post("round").verify()
    with pytest.raises(VerifyException, match="differ in shape"):
        post("none", out_shape=(8, 4)).verify()


def test_configure_must_match_the_module() -> None:
    _module(lambda alloc: [sy.ConfigureOp(4, 8, "os", f32, f32)]).verify()
    with pytest.raises(VerifyException, match="the module's array is 4x8"):
        _module(lambda alloc: [sy.ConfigureOp(8, 8, "os", f32, f32)]).verify()
    with pytest.raises(VerifyException, match="dataflow must be one of"):
        _module(lambda alloc: [sy.ConfigureOp(4, 8, "rs", f32, f32)]).verify()


def test_lowered_module_prints_and_parses() -> None:
    text = compiled_sample("resblock.loom", "16x16", "is").stages.lowered
    assert "systolic.kernel" in text and "systolic.preload" in text and "mem.dma_start" in text
    module = parse_mlir(text, "resblock.mlir")
    module.verify()
    assert str(module) == text
