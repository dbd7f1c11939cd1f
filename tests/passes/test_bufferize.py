"""bufferize: destination-passing signatures, constant globals, in-place
outputs, copies where they are needed and deallocations after last uses."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects import func, memref
from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, MemRefType, ModuleOp, StringAttr
from xdsl.parser import Parser
from xdsl.utils.exceptions import PassFailedException

from compiler.context import make_context
from dialects import nn
from nn_lowering_harness import TO_BUFFERS, lower, model, ops_named, run
from passes.bufferize import BufferizePass

F32 = nn.DTYPES["f32"]


def function_of(module: ModuleOp) -> func.FuncOp:
    return next(op for op in module.ops if isinstance(op, func.FuncOp))


def block_ops(module: ModuleOp) -> list[str]:
    return [op.name for op in function_of(module).body.block.ops]


def test_signature_becomes_destination_passing():
    m = lower(
        model({"x": ([1, 4], "f32")}, lambda e, x: [e(nn.ReluOp.make([x])), e(nn.ExpOp.make([x]))], ["y", "z"]),
        TO_BUFFERS,
    )
    f = function_of(m)
    assert [str(t) for t in f.function_type.inputs] == ["memref<1x4xf32>"] * 3
    assert not f.function_type.outputs.data
    assert [a.name_hint for a in f.body.block.args] == ["x", "y", "z"]
    assert {nn.MODEL_ATTR, nn.INPUTS_ATTR, nn.OUTPUTS_ATTR} <= set(f.attributes)
    assert not f.get_return_op().operands


def test_results_are_computed_in_the_output_arguments():
    m = lower(model({"x": ([2, 3], "f32")}, lambda e, x: [e(nn.TanhOp.make([e(nn.ExpOp.make([x]))]))], ["y"]), TO_BUFFERS)
    y = function_of(m).body.block.args[1]
    assert not ops_named(m, "memref.copy")
    assert len(ops_named(m, "memref.alloc")) == 1
    last = [op for op in function_of(m).body.block.ops if op.name == "linalg.generic"][-1]
    assert last.outputs[0] is y


@pytest.mark.parametrize(
    "what, build",
    [
        ("input", lambda e, x: [x]),
        ("constant", lambda e, x: [e(nn.ConstantOp(np.ones((2, 3)), F32, "w"))]),
        ("view", lambda e, x: [e(nn.ReshapeOp.make([e(nn.ExpOp.make([x]))], shape=[3, 2]))]),
    ],
)
def test_results_that_are_not_local_allocations_are_copied(what, build):
    m = lower(model({"x": ([2, 3], "f32")}, build, ["y"]), TO_BUFFERS)
    (copy,) = ops_named(m, "memref.copy")
    assert copy.destination is function_of(m).body.block.args[1]


def test_a_value_returned_twice_is_computed_once_and_copied_once():
    def build(e, x):
        y = e(nn.ExpOp.make([x]))
        return [y, y]

    m = lower(model({"x": ([2], "f32")}, build, ["a", "b"]), TO_BUFFERS)
    x, a, b = function_of(m).body.block.args
    (copy,) = ops_named(m, "memref.copy")
    assert (copy.source, copy.destination) == (a, b)
    assert not ops_named(m, "memref.alloc")
    (out,) = run(m, [np.array([0.0, 1.0], dtype=np.float32)])[1:]
    np.testing.assert_allclose(out, np.exp([0.0, 1.0]), rtol=1e-6)


def test_constants_become_private_constant_globals():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)

    def build(e, x):
        two = e(nn.ConstantOp(np.full((2, 3), 2.0), F32))
        again = e(nn.ConstantOp(np.full((2, 3), 2.0), F32))
        weights = e(nn.ConstantOp(w, F32, "w"))
        return [e(nn.AddOp.make([e(nn.MulOp.make([x, two])), e(nn.SubOp.make([weights, again]))]))]

    m = lower(model({"x": ([2, 3], "f32")}, build), TO_BUFFERS)
    globals_ = [op for op in m.ops if isinstance(op, memref.GlobalOp)]
    assert sorted(g.sym_name.data for g in globals_) == ["__constant_0", "w"]
    for g in globals_:
        assert g.constant is not None
        assert g.sym_visibility.data == "private"
        assert isinstance(g.type, MemRefType)
    named = next(g for g in globals_ if g.sym_name.data == "w")
    np.testing.assert_array_equal(nn.array_from_dense(named.initial_value), w)
    assert len(ops_named(m, "memref.get_global")) == 3
    assert not ops_named(m, "nn.constant")


def test_global_names_avoid_other_symbols():
    def build(e, x):
        return [e(nn.AddOp.make([x, e(nn.ConstantOp(np.ones(2), F32, "model"))]))]

    m = lower(model({"x": ([2], "f32")}, build, name="model"), TO_BUFFERS)
    (g,) = [op for op in m.ops if isinstance(op, memref.GlobalOp)]
    assert g.sym_name.data == "model_1"
    (get,) = ops_named(m, "memref.get_global")
    assert get.name_.root_reference.data == "model_1"


def test_allocations_are_freed_after_their_last_use_through_views():
    def build(e, x):
        h = e(nn.ExpOp.make([x]))
        flat = e(nn.ReshapeOp.make([h], shape=[6]))
        return [e(nn.NegOp.make([flat]))]

    m = lower(model({"x": ([2, 3], "f32")}, build), TO_BUFFERS)
    assert block_ops(m) == [
        "memref.alloc",
        "linalg.generic",
        "memref.collapse_shape",
        "linalg.generic",
        "memref.dealloc",
        "func.return",
    ]
    (alloc,) = ops_named(m, "memref.alloc")
    (dealloc,) = ops_named(m, "memref.dealloc")
    assert dealloc.memref is alloc.memref


def test_every_allocation_is_freed_once():
    def build(e, x):
        a = e(nn.SoftmaxOp.make([x]))
        b = e(nn.LayerNormOp.make([a, e(nn.ConstantOp(np.ones(4), F32)), e(nn.ConstantOp(np.zeros(4), F32))]))
        return [e(nn.AddOp.make([a, b]))]

    m = lower(model({"x": ([3, 4], "f32")}, build), TO_BUFFERS)
    allocs = [op.memref for op in ops_named(m, "memref.alloc")]
    freed = [op.memref for op in ops_named(m, "memref.dealloc")]
    assert len(allocs) > 5
    assert sorted(map(id, allocs)) == sorted(map(id, freed))
    ops = list(function_of(m).body.block.ops)
    for alloc in allocs:
        dealloc = next(op for op in ops if isinstance(op, memref.DeallocOp) and op.memref is alloc)
        for use in alloc.uses:
            assert ops.index(use.operation) <= ops.index(dealloc)


def test_no_tensors_remain():
    m = lower(
        model({"x": ([1, 2, 4, 4], "f32")}, lambda e, x: [e(nn.GlobalAvgPoolOp.make([e(nn.MaxPool2dOp.make([x], kernel=2))]))]),
        TO_BUFFERS,
    )
    assert not any(op.name.startswith("tensor.") for op in m.walk())
    assert "tensor<" not in str(function_of(m)).replace("dense<", "")


def test_argument_attributes_are_extended_to_outputs():
    m = lower(model({"x": ([2], "f32")}, lambda e, x: [e(nn.ExpOp.make([x]))]), "convert-nn-to-linalg")
    f = function_of(m)
    f.properties["arg_attrs"] = ArrayAttr([DictionaryAttr({"loom.name": StringAttr("x")})])
    f.properties["res_attrs"] = ArrayAttr([DictionaryAttr({})])
    BufferizePass().apply(make_context(), m)
    m.verify()
    assert len(f.arg_attrs) == 2
    assert f.res_attrs is None


def test_an_init_read_elsewhere_is_rejected():
    text = """
    func.func @f(%x: tensor<2xf32>) -> (tensor<2xf32>, tensor<2xf32>) {
      %e = tensor.empty() : tensor<2xf32>
      %c = arith.constant 1.0 : f32
      %f = linalg.fill ins(%c : f32) outs(%e : tensor<2xf32>) -> tensor<2xf32>
      %g = linalg.generic {indexing_maps = [affine_map<(d0) -> (d0)>, affine_map<(d0) -> (d0)>], iterator_types = ["parallel"]} ins(%x : tensor<2xf32>) outs(%f : tensor<2xf32>) {
      ^bb0(%a: f32, %b: f32):
        %s = arith.addf %a, %b : f32
        linalg.yield %s : f32
      } -> tensor<2xf32>
      func.return %f, %g : tensor<2xf32>, tensor<2xf32>
    }
    """
    ctx = make_context()
    m = Parser(ctx, text).parse_module()
    with pytest.raises(PassFailedException, match="init"):
        BufferizePass().apply(ctx, m)


def test_writing_into_an_input_is_rejected():
    text = """
    func.func @f(%x: tensor<2xf32>) -> tensor<2xf32> {
      %c = arith.constant 1.0 : f32
      %f = linalg.fill ins(%c : f32) outs(%x : tensor<2xf32>) -> tensor<2xf32>
      func.return %f : tensor<2xf32>
    }
    """
    ctx = make_context()
    m = Parser(ctx, text).parse_module()
    with pytest.raises(PassFailedException, match="fresh"):
        BufferizePass().apply(ctx, m)


def test_bufferized_functions_are_left_alone():
    m = lower(model({"x": ([2], "f32")}, lambda e, x: [e(nn.ExpOp.make([x]))]), TO_BUFFERS)
    before = str(m)
    BufferizePass().apply(make_context(), m)
    assert str(m) == before


def test_functions_share_module_globals():
    first = model({"x": ([2], "f32")}, lambda e, x: [e(nn.AddOp.make([x, e(nn.ConstantOp(np.ones(2), F32))]))], name="a")
    second = model({"x": ([2], "f32")}, lambda e, x: [e(nn.MulOp.make([x, e(nn.ConstantOp(np.ones(2), F32))]))], name="b")
    function = function_of(second)
    function.detach()
    first.body.block.add_op(function)
    lower(first, TO_BUFFERS)
    globals_ = [op for op in first.ops if isinstance(op, memref.GlobalOp)]
    assert len(globals_) == 1
    assert len(ops_named(first, "memref.get_global")) == 2


LINALG_TEXT = """
builtin.module {
  func.func @mlp(%x: tensor<1x4xf32>) -> tensor<1x3xf32> attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %w = nn.constant {value = dense<1.0> : tensor<4x3xf32>, sym_name = "w"} : tensor<4x3xf32>
    %e = tensor.empty() : tensor<1x3xf32>
    %zero = arith.constant 0.0 : f32
    %init = linalg.fill ins(%zero : f32) outs(%e : tensor<1x3xf32>) -> tensor<1x3xf32>
    %mm = linalg.generic {indexing_maps = [affine_map<(d0, d1, d2) -> (d0, d1)>, affine_map<(d0, d1, d2) -> (d1, d2)>, affine_map<(d0, d1, d2) -> (d0, d2)>], iterator_types = ["parallel", "reduction", "parallel"]} ins(%x, %w : tensor<1x4xf32>, tensor<4x3xf32>) outs(%init : tensor<1x3xf32>) {
    ^bb0(%a: f32, %b: f32, %acc: f32):
      %p = arith.mulf %a, %b : f32
      %s = arith.addf %acc, %p : f32
      linalg.yield %s : f32
    } -> tensor<1x3xf32>
    %e2 = tensor.empty() : tensor<1x3xf32>
    %r = linalg.generic {indexing_maps = [affine_map<(d0, d1) -> (d0, d1)>, affine_map<(d0, d1) -> (d0, d1)>], iterator_types = ["parallel", "parallel"]} ins(%mm : tensor<1x3xf32>) outs(%e2 : tensor<1x3xf32>) {
    ^bb0(%v: f32, %o: f32):
      %m = arith.maximumf %v, %zero : f32
      linalg.yield %m : f32
    } -> tensor<1x3xf32>
    func.return %r : tensor<1x3xf32>
  }
}
"""


def test_textual_linalg_before_and_after():
    ctx = make_context()
    m = Parser(ctx, LINALG_TEXT).parse_module()
    BufferizePass().apply(ctx, m)
    m.verify()
    text = str(m)
    assert "func.func @mlp(%x: memref<1x4xf32>, %y: memref<1x3xf32>)" in text
    assert 'sym_name = "w", type = memref<4x3xf32>' in text
    assert 'sym_visibility = "private", constant' in text
    assert "memref.get_global @w : memref<4x3xf32>" in text
    assert "outs(%y : memref<1x3xf32>)" in text
    assert text.count("memref.alloc()") == 1 and text.count("memref.dealloc") == 1
    assert "tensor.empty" not in text and "nn.constant" not in text
    assert "func.return\n" in text
