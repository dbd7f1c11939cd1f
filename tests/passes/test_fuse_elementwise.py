"""fuse-elementwise: IR before and after on hand-written generics and on
lowered nn ops, the rules that refuse a fusion, and semantics on xDSL's
interpreter and through the CPU target for every sample."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from xdsl.dialects.builtin import ArrayAttr, ModuleOp, StringAttr
from xdsl.dialects.linalg.ops import GenericOp

import compiler
from backends.base import CompileOptions
from backends.cpu.backend import CpuBackend
from compiler.api import MODEL_PIPELINE, load_module, select_model
from compiler.artifact import random_inputs
from compiler.context import make_context
from compiler.interpreter import run_model
from compiler.mlir import parse_mlir
from compiler.pass_manager import PassManager
from dialects import nn
from harness import SAMPLES
from nn_lowering_harness import TO_LINALG, assert_matches, lower, model, run
from passes import registry
from test_lowering_semantics import CASES, data

FUSED = "convert-nn-to-linalg,fuse-elementwise"


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def element_of(tensor_type: str) -> str:
    """`f32` for `tensor<4x3xf32>` or `tensor<f32>`."""
    return tensor_type[:-1].split("x")[-1].removeprefix("tensor<")


def generic_ir(
    result: str,
    inputs: Sequence[tuple[str, str, str]],
    init: tuple[str, str, str],
    iterators: Sequence[str],
    body: Sequence[str],
    attrs: str,
) -> str:
    """A `linalg.generic` in Loom's printed form. `inputs` and `init` are
    (value, type, map) triples; `body` uses %0.. for the block arguments."""
    operands = [*inputs, init]
    maps = ", ".join(f"affine_map<{m}>" for _, _, m in operands)
    args = ", ".join(f"%{i}: {element_of(t)}" for i, (_, t, _) in enumerate(operands))
    ins = f" ins({', '.join(v for v, _, _ in inputs)} : {', '.join(t for _, t, _ in inputs)})" if inputs else ""
    lines = "\n      ".join(body)
    return f"""
    {result} = linalg.generic {{indexing_maps = [{maps}], iterator_types = [{", ".join(f'"{i}"' for i in iterators)}]}}{ins} outs({init[0]} : {init[1]}) attrs = {{{attrs}}} {{
    ^bb0({args}):
      {lines}
    }} -> {init[1]}"""


def model_ir(signature: str, inputs: Sequence[str], body: str, results: str) -> str:
    names = ", ".join(f'"{n}"' for n in inputs)
    return f"""
builtin.module {{
  func.func @m{signature} attributes {{loom.inputs = [{names}], loom.model, loom.outputs = ["y"]}} {{{body}
    func.return {results}
  }}
}}
"""


def fuse(text: str, pipeline: str = "fuse-elementwise") -> ModuleOp:
    module = parse_mlir(text)
    PassManager.from_pipeline(make_context(), pipeline).run(module)
    return module


def generics(module: ModuleOp) -> list[GenericOp]:
    return [op for op in module.walk() if isinstance(op, GenericOp)]


def maps(op: GenericOp) -> list[str]:
    return [str(m.data) for m in op.indexing_maps]


def body_ops(op: GenericOp) -> list[str]:
    return [o.name for o in op.body.block.ops if o.name not in ("arith.constant", "linalg.yield")]


def kinds(op: GenericOp) -> list[str]:
    fused = op.attributes.get("loom.ops")
    return [k.data for k in fused.data] if isinstance(fused, ArrayAttr) else []


def attr(op: GenericOp, name: str) -> str | None:
    value = op.attributes.get(name)
    return value.data if isinstance(value, StringAttr) else None


def assert_no_dead_ops(module: ModuleOp) -> None:
    """Every value the pass left is used, and dce finds nothing to remove."""
    for op in module.walk():
        if op.parent_op() is not None and op.parent_op().name == "func.func":
            assert all(r.uses for r in op.results), f"unused {op.name}"
    text = str(module)
    PassManager.from_pipeline(make_context(), "dce,canonicalize").run(module)
    assert str(module) == text


def same_results(unfused: ModuleOp, fused: ModuleOp, arrays: Sequence[np.ndarray], dtype: str = "f32") -> None:
    """Both modules, bufferized and run on xDSL's interpreter, agree."""
    expected = run(lower(unfused, "bufferize"), arrays)
    actual = run(lower(fused, "bufferize"), arrays)
    for got, want in zip(actual, expected, strict=True):
        assert_matches(got, want, dtype)


def named(value, name: str):
    value.name_hint = name
    return value


# --------------------------------------------------------------------------
# Hand-written generics: maps composed through the producer's output map
# --------------------------------------------------------------------------

X43, B3 = "tensor<4x3xf32>", "tensor<3xf32>"
ID2 = "(d0, d1) -> (d0, d1)"


def test_broadcast_producer_is_read_through_the_composed_map() -> None:
    # y = x + b * 2, with the 1-D producer read along d1 of the consumer.
    before = model_ir(
        f"(%x: {X43}, %b: {B3}) -> {X43}",
        ["x", "b"],
        "\n    %e0 = tensor.empty() : tensor<3xf32>"
        + generic_ir("%p", [("%b", B3, "(d0) -> (d0)")], ("%e0", B3, "(d0) -> (d0)"), ["parallel"],
                     ["%2 = arith.constant 2.0 : f32", "%3 = arith.mulf %0, %2 : f32", "linalg.yield %3 : f32"],
                     'loom.op = "mul"')
        + "\n    %e1 = tensor.empty() : tensor<4x3xf32>"
        + generic_ir("%y", [("%x", X43, ID2), ("%p", B3, "(d0, d1) -> (d1)")], ("%e1", X43, ID2), ["parallel"] * 2,
                     ["%3 = arith.addf %0, %1 : f32", "linalg.yield %3 : f32"], 'loom.op = "add", loom.name = "y"'),
        f"%y : {X43}",
    )
    after = model_ir(
        f"(%x: {X43}, %b: {B3}) -> {X43}",
        ["x", "b"],
        "\n    %e1 = tensor.empty() : tensor<4x3xf32>"
        + generic_ir("%y", [("%x", X43, ID2), ("%b", B3, "(d0, d1) -> (d1)")], ("%e1", X43, ID2), ["parallel"] * 2,
                     ["%3 = arith.constant 2.0 : f32", "%4 = arith.mulf %1, %3 : f32", "%5 = arith.addf %0, %4 : f32",
                      "linalg.yield %5 : f32"],
                     'loom.op = "add", loom.name = "y", loom.ops = ["mul", "add"]'),
        f"%y : {X43}",
    )
    fused = fuse(before)
    assert str(fused) == str(parse_mlir(after))
    assert_no_dead_ops(fused)
    same_results(parse_mlir(before), fuse(before), [data([4, 3], "f32"), data([3], "f32")])


def test_transposed_producer_output_map_is_inverted() -> None:
    # p[j, i] = exp(x[i, j]) written through (d0, d1) -> (d1, d0); y = relu(p).
    x34, p43 = "tensor<3x4xf32>", "tensor<4x3xf32>"
    before = model_ir(
        f"(%x: {x34}) -> {p43}",
        ["x"],
        "\n    %e0 = tensor.empty() : tensor<4x3xf32>"
        + generic_ir("%p", [("%x", x34, ID2)], ("%e0", p43, "(d0, d1) -> (d1, d0)"), ["parallel"] * 2,
                     ["%2 = math.exp %0 : f32", "linalg.yield %2 : f32"], 'loom.op = "exp"')
        + "\n    %e1 = tensor.empty() : tensor<4x3xf32>"
        + generic_ir("%y", [("%p", p43, ID2)], ("%e1", p43, ID2), ["parallel"] * 2,
                     ["%2 = arith.constant 0.0 : f32", "%3 = arith.maximumf %0, %2 : f32", "linalg.yield %3 : f32"],
                     'loom.op = "relu"'),
        f"%y : {p43}",
    )
    after = model_ir(
        f"(%x: {x34}) -> {p43}",
        ["x"],
        "\n    %e1 = tensor.empty() : tensor<4x3xf32>"
        + generic_ir("%y", [("%x", x34, "(d0, d1) -> (d1, d0)")], ("%e1", p43, ID2), ["parallel"] * 2,
                     ["%2 = math.exp %0 : f32", "%3 = arith.constant 0.0 : f32", "%4 = arith.maximumf %2, %3 : f32",
                      "linalg.yield %4 : f32"],
                     'loom.op = "relu", loom.ops = ["exp", "relu"]'),
        f"%y : {p43}",
    )
    assert str(fuse(before)) == str(parse_mlir(after))
    same_results(parse_mlir(before), fuse(before), [data([3, 4], "f32")])


def test_fusion_that_would_lose_a_loop_extent_is_refused() -> None:
    # The producer broadcasts x[4, 1] to [4, 3]; the sum over d1 would have no
    # operand left spanning d1, so its trip count would be unknown.
    x41, s4 = "tensor<4x1xf32>", "tensor<4xf32>"
    text = model_ir(
        f"(%x: {x41}) -> {s4}",
        ["x"],
        "\n    %e0 = tensor.empty() : tensor<4x3xf32>"
        + generic_ir("%p", [("%x", x41, "(d0, d1) -> (d0, 0)")], ("%e0", X43, ID2), ["parallel"] * 2,
                     ["%2 = arith.constant 1.0 : f32", "%3 = arith.addf %0, %2 : f32", "linalg.yield %3 : f32"],
                     'loom.op = "add"')
        + "\n    %e1 = tensor.empty() : tensor<4xf32>"
        + generic_ir("%y", [("%p", X43, ID2)], ("%e1", s4, "(d0, d1) -> (d0)"), ["parallel", "reduction"],
                     ["%2 = arith.addf %1, %0 : f32", "linalg.yield %2 : f32"], 'loom.op = "sum"'),
        f"%y : {s4}",
    )
    assert str(fuse(text)) == str(parse_mlir(text))


def test_producer_reading_its_init_is_not_fused() -> None:
    # p accumulates into an init holding x: its elements depend on the init.
    text = model_ir(
        f"(%x: {X43}, %z: {X43}) -> {X43}",
        ["x", "z"],
        generic_ir("%p", [("%z", X43, ID2)], ("%x", X43, ID2), ["parallel"] * 2,
                   ["%2 = arith.addf %0, %1 : f32", "linalg.yield %2 : f32"], 'loom.op = "add"')
        + "\n    %e1 = tensor.empty() : tensor<4x3xf32>"
        + generic_ir("%y", [("%p", X43, ID2)], ("%e1", X43, ID2), ["parallel"] * 2,
                     ["%2 = math.exp %0 : f32", "linalg.yield %2 : f32"], 'loom.op = "exp"'),
        f"%y : {X43}",
    )
    assert str(fuse(text)) == str(parse_mlir(text))


# --------------------------------------------------------------------------
# Lowered nn ops
# --------------------------------------------------------------------------


def test_elementwise_chain_becomes_one_generic() -> None:
    inputs = {"x": ([4, 3], "f32"), "w": ([4, 3], "f32"), "b": ([3], "f32")}

    def build(e, x, w, b):
        affine = e(nn.AddOp.make([e(nn.MulOp.make([x, w])), b]))
        return [named(e(nn.SigmoidOp.make([e(nn.ReluOp.make([affine]))])), "y")]

    before = lower(model(inputs, build), TO_LINALG)
    after = lower(model(inputs, build), FUSED)
    assert len(generics(before)) == 4
    (op,) = generics(after)
    assert maps(op) == [ID2, ID2, "(d0, d1) -> (d1)", ID2]
    assert body_ops(op) == ["arith.mulf", "arith.addf", "arith.maximumf", "arith.negf", "math.exp", "arith.addf", "arith.divf"]
    assert kinds(op) == ["mul", "add", "relu", "sigmoid"]
    assert attr(op, "loom.op") == "sigmoid" and attr(op, "loom.name") == "y"
    assert_no_dead_ops(after)
    same_results(before, after, [data(shape, dtype) for shape, dtype in inputs.values()])


def test_softmax_exp_is_fused_into_the_sum() -> None:
    inputs = {"x": ([3, 5], "f32")}
    build = lambda e, x: [e(nn.SoftmaxOp.make([x], axis=1))]  # noqa: E731
    before = lower(model(inputs, build), TO_LINALG)
    after = lower(model(inputs, build), FUSED)
    assert len(generics(before)) == 4  # max, exp(x - max), sum, divide
    peak, total, result = generics(after)
    assert body_ops(peak) == ["arith.maximumf"]
    assert [str(t.data.value) for t in total.iterator_types] == ["parallel", "reduction"]
    assert total.inputs[0] is peak.inputs[0] and total.inputs[1] is peak.res[0]
    assert body_ops(total) == ["arith.subf", "math.exp", "arith.addf"]
    # The cheap exp is recomputed by the division rather than stored.
    assert body_ops(result) == ["arith.subf", "math.exp", "arith.divf"]
    assert list(result.inputs) == [peak.inputs[0], peak.res[0], total.res[0]]
    assert_no_dead_ops(after)
    same_results(before, after, [data([3, 5], "f32")])


def test_layernorm_mean_is_fused_into_the_variance_and_the_result() -> None:
    inputs = {"x": ([2, 6], "f32"), "g": ([6], "f32"), "b": ([6], "f32")}
    build = lambda e, x, g, b: [e(nn.LayerNormOp.make([x, g, b], axis=1))]  # noqa: E731
    before = lower(model(inputs, build), TO_LINALG)
    after = lower(model(inputs, build), FUSED)
    assert len(generics(before)) == 5  # sum, mean, squares, std, result
    total, squares, result = generics(after)
    # The mean is broadcast along the reduced dim of the variance only.
    assert maps(squares) == [ID2, "(d0, d1) -> (d0)", "(d0, d1) -> (d0)"]
    assert squares.inputs[1] is total.res[0]
    assert "math.sqrt" in body_ops(result) and "arith.divf" in body_ops(result)
    assert kinds(result) == ["layernorm"] * 3
    same_results(before, after, [data(shape, dtype) for shape, dtype in inputs.values()])


def test_tril_indices_follow_a_transposed_read() -> None:
    inputs = {"x": ([3, 4], "f32")}
    build = lambda e, x: [e(nn.TransposeOp.make([e(nn.TrilOp.make([x], k=0, fill=-5.0))], perm=[1, 0]))]  # noqa: E731
    after = lower(model(inputs, build), FUSED)
    (op,) = generics(after)
    assert maps(op) == ["(d0, d1) -> (d1, d0)", ID2]
    # tril's row and column are the transpose's column and row.
    indices = [o.dim.value.data for o in op.body.block.ops if o.name == "linalg.index"]
    assert indices == [1, 0]
    x = data([3, 4], "f32")
    (got,) = run(lower(after, "bufferize"), [x])
    np.testing.assert_array_equal(got, np.where(np.tri(3, 4, dtype=bool), x, np.float32(-5.0)).T)


# --------------------------------------------------------------------------
# Repeated work: multi-use producers and broadcasts
# --------------------------------------------------------------------------


def two_users(unary: type[nn.NNOperation]):
    """p = unary(x), used by both relu(p) and exp(p)."""

    def build(e, x):
        p = e(unary.make([x]))
        return [e(nn.ReluOp.make([p])), e(nn.ExpOp.make([p]))]

    return build


def test_cheap_producer_is_recomputed_in_each_consumer() -> None:
    inputs = {"x": ([4, 3], "f32")}
    before = lower(model(inputs, two_users(nn.NegOp)), TO_LINALG)
    after = lower(model(inputs, two_users(nn.NegOp)), FUSED)
    relu, exp = generics(after)
    assert body_ops(relu) == ["arith.negf", "arith.maximumf"] and kinds(relu) == ["neg", "relu"]
    assert body_ops(exp) == ["arith.negf", "math.exp"] and kinds(exp) == ["neg", "exp"]
    assert_no_dead_ops(after)
    same_results(before, after, [data([4, 3], "f32")])


def test_expensive_producer_with_two_users_is_kept() -> None:
    inputs = {"x": ([4, 3], "f32")}
    after = lower(model(inputs, two_users(nn.GeluOp)), FUSED)
    assert [kinds(op) or [attr(op, "loom.op")] for op in generics(after)] == [["gelu"], ["relu"], ["exp"]]


def test_recompute_budget_is_an_option() -> None:
    inputs = {"x": ([4, 3], "f32")}
    after = lower(model(inputs, two_users(nn.NegOp)), "convert-nn-to-linalg,fuse-elementwise{max-recompute-ops=0}")
    assert len(generics(after)) == 3


def test_producer_that_is_also_returned_is_kept() -> None:
    inputs = {"x": ([4, 3], "f32")}
    build = lambda e, x: [p := e(nn.NegOp.make([x])), e(nn.ExpOp.make([p]))]  # noqa: E731
    after = lower(model(inputs, build), FUSED)
    assert len(generics(after)) == 2


@pytest.mark.parametrize("unary, fused", [(nn.SigmoidOp, True), (nn.GeluOp, False)], ids=["cheap", "expensive"])
def test_broadcast_read_repeats_only_cheap_producers(unary, fused: bool) -> None:
    # f(b) for b[3] is read by every row of x[4, 3].
    inputs = {"x": ([4, 3], "f32"), "b": ([3], "f32")}
    build = lambda e, x, b: [e(nn.AddOp.make([x, e(unary.make([b]))]))]  # noqa: E731
    after = lower(model(inputs, build), FUSED)
    assert len(generics(after)) == (1 if fused else 2)


# --------------------------------------------------------------------------
# Contractions and their epilogues
# --------------------------------------------------------------------------


def dense_layer(e, x, w, b):
    return e(nn.AddOp.make([e(nn.MatmulOp.make([x, w])), b]))


def test_bias_activation_and_residual_become_one_epilogue() -> None:
    inputs = {"x": ([2, 4], "f32"), "w": ([4, 4], "f32"), "b": ([4], "f32")}

    def build(e, x, w, b):
        return [named(e(nn.AddOp.make([e(nn.ReluOp.make([dense_layer(e, x, w, b)])), x])), "y")]

    before = lower(model(inputs, build), TO_LINALG)
    after = lower(model(inputs, build), FUSED)
    matmul, epilogue = generics(after)
    assert str(matmul) == str(generics(before)[0])
    x, _, b = next(iter(after.ops)).body.block.args
    assert list(epilogue.inputs) == [matmul.res[0], b, x]
    assert kinds(epilogue) == ["add", "relu", "add"]
    assert attr(epilogue, "loom.epilogue_of") == "matmul" and attr(epilogue, "loom.name") == "y"
    same_results(before, after, [data(shape, dtype) for shape, dtype in inputs.values()])


def test_elementwise_op_is_not_repeated_inside_a_matmul() -> None:
    inputs = {"x": ([2, 4], "f32"), "w": ([4, 3], "f32")}
    build = lambda e, x, w: [e(nn.MatmulOp.make([e(nn.ReluOp.make([x])), w]))]  # noqa: E731
    after = lower(model(inputs, build), FUSED)
    relu, matmul = generics(after)
    assert attr(relu, "loom.op") == "relu" and matmul.inputs[0] is relu.res[0]


def test_epilogue_is_not_merged_into_a_reduction() -> None:
    # softmax(x @ w + b): the bias add stays the matmul's one epilogue instead
    # of being recomputed by softmax's max and exp.
    inputs = {"x": ([2, 4], "f32"), "w": ([4, 3], "f32"), "b": ([3], "f32")}
    build = lambda e, x, w, b: [e(nn.SoftmaxOp.make([dense_layer(e, x, w, b)]))]  # noqa: E731
    matmul, bias, *softmax = generics(lower(model(inputs, build), FUSED))
    assert attr(bias, "loom.epilogue_of") == "matmul" and kinds(bias) == []
    assert len(softmax) == 3 and all(op.inputs[0] is bias.res[0] for op in softmax)


def test_epilogue_with_two_users_is_not_duplicated() -> None:
    inputs = {"x": ([2, 4], "f32"), "w": ([4, 3], "f32"), "b": ([3], "f32")}

    def build(e, x, w, b):
        h = dense_layer(e, x, w, b)
        return [e(nn.ReluOp.make([h])), e(nn.NegOp.make([h]))]

    ops = generics(lower(model(inputs, build), FUSED))
    assert [attr(op, "loom.op") for op in ops] == ["matmul", "add", "relu", "neg"]
    assert attr(ops[1], "loom.epilogue_of") == "matmul"


# --------------------------------------------------------------------------
# Semantics
# --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fused_lowering_matches_the_interpreter(case) -> None:
    """Every lowering case, fused, against the reference interpreter."""
    arrays = case.arrays or [data(shape, dtype, *case.input_range) for shape, dtype in case.inputs.values()]
    module = model(case.inputs, case.build)
    function = next(iter(module.ops))
    out_dtypes = [nn.dtype_name(t.element_type) for t in function.function_type.outputs.data]
    oracle = run_model(function, dict(zip(case.inputs, arrays)))
    actual = run(lower(module, FUSED + ",bufferize"), arrays)
    for got, want, dtype in zip(actual, oracle.values(), out_dtypes, strict=True):
        assert_matches(got, want, dtype)


def generic_count(sample, pipeline: str) -> int:
    module = select_model(load_module(sample), None)
    PassManager.from_pipeline(make_context(), f"{MODEL_PIPELINE},{pipeline}").run(module)
    return len(generics(module))


def test_cpu_pipeline_fuses_only_when_asked() -> None:
    assert FUSED in CpuBackend().pipeline(CompileOptions(fusion=True))
    assert "fuse-elementwise" not in CpuBackend().pipeline(CompileOptions(fusion=False))


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_sample_with_and_without_fusion_matches_the_interpreter(sample) -> None:
    plain_count, fused_count = generic_count(sample, TO_LINALG), generic_count(sample, FUSED)
    print(f"{sample.name}: {plain_count} generics -> {fused_count} fused")
    assert fused_count < plain_count
    plain, fused = (compiler.compile(sample, target="cpu", options=CompileOptions(fusion=f)) for f in (False, True))
    for seed in (0, 1):
        inputs = random_inputs(plain.signature, seed)
        without, with_fusion = compiler.check(plain, inputs), compiler.check(fused, inputs)
        assert with_fusion.max_abs_err <= 1e-4 and without.max_abs_err <= 1e-4
        for name, value in with_fusion.outputs.items():
            np.testing.assert_allclose(value, without.outputs[name], rtol=1e-5, atol=1e-5)


def test_pass_is_registered() -> None:
    cls = registry.get_pass("fuse-elementwise")
    assert cls is not None and cls.name == "fuse-elementwise"
    assert cls().max_recompute_ops == 4
