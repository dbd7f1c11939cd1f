"""The structure of convert-nn-to-linalg's output: loop orders, indexing maps,
padding values and element types, which the numbers alone would not show."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects.builtin import BFloat16Type, Float16Type, TensorType
from xdsl.dialects.linalg.ops import FillOp, GenericOp

from xdsl.parser import Parser

from compiler.context import make_context
from compiler.pass_manager import PassManager
from dialects import nn
from nn_lowering_harness import TO_LINALG, lower, model, ops_named
from passes import registry
from test_lowering_semantics import CASES


def generics(module) -> list[GenericOp]:
    return [op for op in module.walk() if isinstance(op, GenericOp)]


def maps(op: GenericOp) -> list[str]:
    return [str(m.data) for m in op.indexing_maps]


def iterators(op: GenericOp) -> list[str]:
    return [str(t.data.value) for t in op.iterator_types]


def fill_values(module) -> list[float]:
    return [op.inputs[0].owner.value.value.data for op in module.walk() if isinstance(op, FillOp)]


def lowered(inputs, build):
    return lower(model(inputs, build), TO_LINALG)


def test_passes_are_registered():
    for name in ("convert-nn-to-linalg", "bufferize", "lower-affine", "convert-linalg-to-loops"):
        assert registry.get_pass(name) is not None, name


def test_matmul_loops_are_i_k_j_with_zero_init():
    m = lowered({"a": ([2, 3], "f32"), "b": ([3, 4], "f32")}, lambda e, a, b: [e(nn.MatmulOp.make([a, b]))])
    (op,) = generics(m)
    assert iterators(op) == ["parallel", "reduction", "parallel"]
    assert maps(op) == [
        "(d0, d1, d2) -> (d0, d1)",
        "(d0, d1, d2) -> (d1, d2)",
        "(d0, d1, d2) -> (d0, d2)",
    ]
    assert fill_values(m) == [0.0]
    assert not ops_named(m, "nn.matmul")


def test_batched_matmul_broadcasts_batch_dims_in_maps():
    m = lowered(
        {"a": ([3, 1, 4, 5], "f32"), "b": ([2, 5, 6], "f32")},
        lambda e, a, b: [e(nn.MatmulOp.make([a, b]))],
    )
    (op,) = generics(m)
    assert iterators(op) == ["parallel", "parallel", "parallel", "reduction", "parallel"]
    assert maps(op) == [
        "(d0, d1, d2, d3, d4) -> (d0, 0, d2, d3)",
        "(d0, d1, d2, d3, d4) -> (d1, d3, d4)",
        "(d0, d1, d2, d3, d4) -> (d0, d1, d2, d4)",
    ]


def test_binary_broadcast_is_a_map_not_a_copy():
    m = lowered({"a": ([2, 1, 3], "f32"), "b": ([4, 1], "f32")}, lambda e, a, b: [e(nn.AddOp.make([a, b]))])
    (op,) = generics(m)
    assert maps(op) == [
        "(d0, d1, d2) -> (d0, 0, d2)",
        "(d0, d1, d2) -> (d1, 0)",
        "(d0, d1, d2) -> (d0, d1, d2)",
    ]
    assert [o.name for o in op.body.block.ops] == ["arith.addf", "linalg.yield"]


def test_rank0_literal_becomes_a_body_constant():
    m = lowered(
        {"x": ([2, 2], "f32")},
        lambda e, x: [e(nn.MulOp.make([x, e(nn.ConstantOp(np.array(0.25), nn.DTYPES["f32"]))]))],
    )
    (op,) = generics(m)
    assert len(op.inputs) == 1
    constants = [o for o in op.body.block.ops if o.name == "arith.constant"]
    assert [c.value.value.data for c in constants] == [0.25]
    assert not ops_named(m, "nn.constant")


def test_integer_ops_use_integer_arith():
    m = lowered(
        {"a": ([4], "i32"), "b": ([4], "i32")},
        lambda e, a, b: [e(nn.ReluOp.make([e(nn.NegOp.make([e(nn.DivOp.make([a, b]))]))]))],
    )
    names = {o.name for o in m.walk()}
    assert {"arith.divsi", "arith.subi", "arith.maxsi"} <= names
    assert not any(n.endswith("f") and n.startswith("arith.") for n in names)


def test_f16_arithmetic_is_f32_with_one_rounding():
    m = lowered({"a": ([4], "f16"), "b": ([4], "f16")}, lambda e, a, b: [e(nn.MulOp.make([a, b]))])
    (op,) = generics(m)
    assert [o.name for o in op.body.block.ops] == [
        "arith.extf",
        "arith.extf",
        "arith.mulf",
        "arith.truncf",
        "linalg.yield",
    ]
    assert str(op.body.block.ops.first.results[0].type) == "f32"


@pytest.mark.parametrize("case", [c for c in CASES if {"f16", "bf16"} & {d for _, d in c.inputs.values()}], ids=lambda c: c.id)
def test_no_arithmetic_on_half_types(case):
    """f16/bf16 values are only extended, truncated, selected, loaded or stored."""
    m = lower(model(case.inputs, case.build), TO_LINALG)
    allowed = {"arith.extf", "arith.truncf", "arith.constant", "arith.select", "linalg.yield", "linalg.fill"}
    for op in m.walk():
        if op.name.startswith(("arith.", "math.")) and op.name not in allowed:
            types = [v.type for v in (*op.operands, *op.results)]
            assert not any(isinstance(t, Float16Type | BFloat16Type) for t in types), op


def test_f16_sum_accumulates_in_f32():
    m = lowered({"x": ([8, 4], "f16")}, lambda e, x: [e(nn.ReduceSumOp.make([x], axes=[0]))])
    reduction, narrowing = generics(m)
    assert iterators(reduction) == ["reduction", "parallel"]
    assert str(reduction.outputs[0].type) == "tensor<4xf32>"
    assert str(narrowing.outputs[0].type) == "tensor<4xf16>"


def test_i8_matmul_accumulates_in_i32():
    m = lowered({"a": ([2, 3], "i8"), "b": ([3, 2], "i8")}, lambda e, a, b: [e(nn.MatmulOp.make([a, b]))])
    product, narrowing = generics(m)
    assert str(product.outputs[0].type) == "tensor<2x2xi32>"
    assert "arith.trunci" in {o.name for o in narrowing.body.block.ops}


def test_reductions_keep_or_drop_dims_in_the_output_map():
    kept = lowered({"x": ([2, 3, 4], "f32")}, lambda e, x: [e(nn.ReduceMaxOp.make([x], axes=[1], keepdims=True))])
    dropped = lowered({"x": ([2, 3, 4], "f32")}, lambda e, x: [e(nn.ReduceMaxOp.make([x], axes=[1]))])
    assert maps(generics(kept)[0])[1] == "(d0, d1, d2) -> (d0, 0, d2)"
    assert maps(generics(dropped)[0])[1] == "(d0, d1, d2) -> (d0, d2)"
    assert iterators(generics(kept)[0]) == ["parallel", "reduction", "parallel"]
    assert fill_values(kept) == [float("-inf")]


def test_conv2d_domain_strides_and_dilations():
    w = np.ones((4, 3, 3, 2), dtype=np.float32)
    m = lowered(
        {"x": ([1, 3, 9, 9], "f32")},
        lambda e, x: [
            e(nn.Conv2dOp.make([x, e(nn.ConstantOp(w, nn.DTYPES["f32"], "w"))], stride=[2, 3], dilation=[2, 1], padding=1))
        ],
    )
    pad_copy, conv = generics(m)
    assert maps(pad_copy)[1] == "(d0, d1, d2, d3) -> (d0, d1, (d2 + 1), (d3 + 1))"
    assert fill_values(m) == [0.0, 0.0]
    assert iterators(conv) == ["parallel"] * 3 + ["reduction"] * 3 + ["parallel"]
    assert maps(conv) == [
        "(d0, d1, d2, d3, d4, d5, d6) -> (d0, d3, ((d2 * 2) + (d4 * 2)), ((d6 * 3) + d5))",
        "(d0, d1, d2, d3, d4, d5, d6) -> (d1, d3, d4, d5)",
        "(d0, d1, d2, d3, d4, d5, d6) -> (d0, d1, d2, d6)",
    ]


def test_grouped_conv2d_views_a_group_dim_and_starts_from_the_bias():
    w = np.ones((6, 2, 3, 3), dtype=np.float32)
    b = np.ones((6,), dtype=np.float32)
    m = lowered(
        {"x": ([1, 4, 5, 5], "f32")},
        lambda e, x: [e(nn.Conv2dOp.make([x, *(e(nn.ConstantOp(a, nn.DTYPES["f32"])) for a in (w, b))], groups=2))],
    )
    bias_init, conv = generics(m)
    assert maps(bias_init)[0] == "(d0, d1, d2, d3) -> (d1)"
    assert len(iterators(conv)) == 8
    assert maps(conv)[1] == "(d0, d1, d2, d3, d4, d5, d6, d7) -> (d1, d2, d4, d5, d6)"
    assert len(ops_named(m, "tensor.expand_shape")) == 3
    assert len(ops_named(m, "tensor.collapse_shape")) == 1
    assert not fill_values(m)


@pytest.mark.parametrize("dtype, padding_value", [("f32", float("-inf")), ("i8", -128), ("i32", -(2**31))])
def test_maxpool_pads_with_the_lowest_value(dtype, padding_value):
    m = lowered({"x": ([1, 1, 4, 4], dtype)}, lambda e, x: [e(nn.MaxPool2dOp.make([x], kernel=3, stride=1, padding=1))])
    assert fill_values(m)[0] == padding_value
    pool = generics(m)[-1]
    assert iterators(pool) == ["parallel"] * 3 + ["reduction"] * 2 + ["parallel"]
    assert maps(pool)[0] == "(d0, d1, d2, d3, d4, d5) -> (d0, d1, (d2 + d3), (d5 + d4))"


def test_avgpool_pads_with_zero_and_divides_by_the_window():
    m = lowered({"x": ([1, 1, 4, 4], "f32")}, lambda e, x: [e(nn.AvgPool2dOp.make([x], kernel=[2, 3], padding=1))])
    assert fill_values(m) == [0.0, 0.0]
    divide = generics(m)[-1]
    constants = [o.value.value.data for o in divide.body.block.ops if o.name == "arith.constant"]
    assert constants == [6.0]


def test_softmax_is_max_exp_sum_divide():
    m = lowered({"x": ([2, 5], "f32")}, lambda e, x: [e(nn.SoftmaxOp.make([x]))])
    peak, exps, total, quotient = generics(m)
    assert iterators(peak) == iterators(total) == ["parallel", "reduction"]
    assert "math.exp" in {o.name for o in exps.body.block.ops}
    assert "arith.subf" in {o.name for o in exps.body.block.ops}
    assert "arith.divf" in {o.name for o in quotient.body.block.ops}


def test_tril_selects_on_iteration_indices():
    m = lowered({"x": ([2, 3, 3], "f32")}, lambda e, x: [e(nn.TrilOp.make([x], k=1, fill=-1e9))])
    (op,) = generics(m)
    body = [o.name for o in op.body.block.ops]
    assert body.count("linalg.index") == 2
    assert {"arith.cmpi", "arith.select"} <= set(body)
    assert {o.dim.value.data for o in op.body.block.ops if o.name == "linalg.index"} == {1, 2}


def test_transpose_reads_through_the_permutation():
    m = lowered({"x": ([2, 3, 4], "f32")}, lambda e, x: [e(nn.TransposeOp.make([x], perm=[2, 0, 1]))])
    (op,) = generics(m)
    assert maps(op) == ["(d0, d1, d2) -> (d1, d2, d0)", "(d0, d1, d2) -> (d0, d1, d2)"]


def test_slice_reads_at_start_plus_step_times_index():
    m = lowered({"x": ([4, 9], "f32")}, lambda e, x: [e(nn.SliceOp.make([x], starts=[1], ends=[8], axes=[1], steps=[3]))])
    (op,) = generics(m)
    assert maps(op) == ["(d0, d1) -> (d0, ((d1 * 3) + 1))", "(d0, d1) -> (d0, d1)"]


def test_concat_writes_each_operand_at_its_offset():
    m = lowered(
        {"a": ([2, 2], "f32"), "b": ([2, 3], "f32")},
        lambda e, a, b: [e(nn.ConcatOp.make([a, b], axis=1))],
    )
    first, second = generics(m)
    assert maps(first)[1] == "(d0, d1, d2) -> (d1, (d2 + d0))"
    assert maps(second)[1] == "(d0, d1) -> (d0, (d1 + 2))"
    assert second.outputs[0] == first.res[0]


@pytest.mark.parametrize(
    "source, target, ops",
    [
        ([2, 3, 4], [6, 4], ["tensor.collapse_shape"]),
        ([1, 784], [784], ["tensor.collapse_shape"]),
        ([6, 4], [2, 3, 4, 1], ["tensor.expand_shape"]),
        ([2, 3, 4], [4, 6], ["tensor.collapse_shape", "tensor.expand_shape"]),
        ([1, 1], [], ["linalg.generic"]),
        ([2, 3], [2, 3], []),
    ],
)
def test_reshape_uses_views(source, target, ops):
    m = lowered({"x": (source, "f32")}, lambda e, x: [e(nn.ReshapeOp.make([x], shape=target))])
    produced = [o.name for o in m.walk() if o.name.endswith(("_shape", ".generic"))]
    assert produced == ops
    ret = next(o for o in m.walk() if o.name == "func.return")
    assert isinstance(ret.operands[0].type, TensorType)
    assert list(ret.operands[0].type.get_shape()) == target


def test_semantic_cases_cover_every_nn_op():
    built = {op.name for case in CASES for op in model(case.inputs, case.build).walk()}
    assert {op.name for op in nn.NN.operations} <= built


MLP_TEXT = """
builtin.module {
  func.func @mlp(%x: tensor<1x4xf32>) -> tensor<1x3xf32> attributes {loom.inputs = ["x"], loom.model, loom.outputs = ["y"]} {
    %w = nn.constant {value = dense<1.0> : tensor<4x3xf32>, sym_name = "w"} : tensor<4x3xf32>
    %b = nn.constant {value = dense<0.5> : tensor<f32>} : tensor<f32>
    %0 = nn.matmul %x, %w : (tensor<1x4xf32>, tensor<4x3xf32>) -> tensor<1x3xf32>
    %1 = nn.add %0, %b : (tensor<1x3xf32>, tensor<f32>) -> tensor<1x3xf32>
    %y = nn.relu %1 : (tensor<1x3xf32>) -> tensor<1x3xf32>
    func.return %y : tensor<1x3xf32>
  }
}
"""


def test_textual_mlp_before_and_after():
    ctx = make_context()
    module = Parser(ctx, MLP_TEXT).parse_module()
    PassManager.from_pipeline(ctx, "convert-nn-to-linalg").run(module)
    text = str(module)
    assert "nn.matmul" not in text and "nn.add" not in text and "nn.relu" not in text
    assert 'sym_name = "w"' in text  # parameters stay for bufferize
    assert "tensor<f32>" not in text  # the literal moved into the body
    assert 'iterator_types = ["parallel", "reduction", "parallel"]' in text
    assert "arith.constant 5.000000e-01 : f32" in text
    assert "arith.maximumf" in text
    assert text.count("linalg.generic") == 3
    assert "func.return %y : tensor<1x3xf32>" in text
