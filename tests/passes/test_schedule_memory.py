"""schedule-memory: a topological order of the nn ops with the lowest peak
of live intermediate bytes, never worse than the source order.

Peaks are checked against `simulated_peak`, which walks a function's ops in
block order and tracks live buffers directly, sharing no code with the pass;
exact schedules against every topological order of small graphs.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, TensorType
from xdsl.ir import SSAValue

import compiler
from compiler.artifact import random_inputs
from compiler.diagnostics import LoomError
from compiler.interpreter import run_model
from compiler.pass_manager import build_pipeline
from dialects import nn
from nn_lowering_harness import lower, model
from passes.schedule_memory import EXACT_OPS, best_schedule, memory_graph, peak_bytes

F32 = nn.DTYPES["f32"]


def function_of(module: ModuleOp) -> func.FuncOp:
    return next(op for op in module.ops if isinstance(op, func.FuncOp))


def int_attr(op, name: str) -> int:
    value = op.attributes[name]
    assert isinstance(value, IntegerAttr)
    return value.value.data


def nbytes(value: SSAValue) -> int:
    assert isinstance(value.type, TensorType)
    return int(np.prod(value.type.get_shape())) * nn.numpy_dtype(value.type.element_type).itemsize


def simulated_peak(function: func.FuncOp) -> int:
    """Peak bytes of intermediate buffers running the ops in block order:
    reshapes share their operand's buffer; inputs, constants and values
    returned as they are take none; a buffer returned through a reshape
    lives to the end."""
    ops = list(function.body.block.ops)
    returned = set(ops[-1].operands)
    owner: dict[SSAValue, SSAValue | None] = {}  # value -> value owning its buffer
    for op in ops:
        for result in op.results:
            if isinstance(op, nn.ReshapeOp):
                owner[result] = owner.get(op.operands[0])
            elif isinstance(op, nn.ConstantOp) or result in returned:
                owner[result] = None
            else:
                owner[result] = result
    last_use = {buffer: ops.index(buffer.owner) for buffer in set(owner.values()) - {None}}
    for position, op in enumerate(ops):
        for operand in op.operands:
            if (buffer := owner.get(operand)) is not None:
                last_use[buffer] = len(ops) if op is ops[-1] else position
    live = peak = 0
    for position, op in enumerate(ops):
        live += sum(nbytes(r) for r in op.results if owner[r] is r)
        peak = max(peak, live)
        live -= sum(nbytes(b) for b, last in last_use.items() if last == position)
    return peak


def schedule(module: ModuleOp, pipeline: str = "schedule-memory") -> ModuleOp:
    return lower(module, pipeline)


def assert_topological(function: func.FuncOp) -> None:
    seen: set[SSAValue] = set(function.body.block.args)
    for op in function.body.block.ops:
        assert all(v in seen for v in op.operands), f"{op.name} runs before its operands"
        seen.update(op.results)


def outputs_of(module: ModuleOp, seed: int = 0) -> dict[str, np.ndarray]:
    f = function_of(module)
    x = f.body.block.args[0]
    rng = np.random.default_rng(seed)
    return run_model(f, {"x": rng.standard_normal(x.type.get_shape()).astype(np.float32)})


# --------------------------------------------------------------------------
# Two long branches: the source interleaves them, the best order runs one
# branch to its small result before starting the other.
# --------------------------------------------------------------------------


def two_branches(e, x):  # x: f32[250], 1000 bytes
    a1 = e(nn.ExpOp.make([x]))
    b1 = e(nn.TanhOp.make([x]))
    a2 = e(nn.SigmoidOp.make([a1]))
    b2 = e(nn.NegOp.make([b1]))
    a3 = e(nn.ReduceSumOp.make([a2], axes=[0], keepdims=True))  # f32[1]
    b3 = e(nn.ReduceSumOp.make([b2], axes=[0], keepdims=True))
    return [e(nn.AddOp.make([a3, b3]))]


def test_interleaved_branches_are_run_one_after_the_other():
    module = model({"x": ([250], "f32")}, two_branches)
    expected = outputs_of(module)
    before = [op.name for op in function_of(module).body.block.ops]
    assert before[:6] == ["nn.exp", "nn.tanh", "nn.sigmoid", "nn.neg", "nn.sum", "nn.sum"]
    assert simulated_peak(function_of(module)) == 3000  # a1, b1 and a2 at once

    f = function_of(schedule(module))
    after = [op.name for op in f.body.block.ops]
    # a2 needs a1 and a2 live; the second branch adds the first one's 4-byte sum.
    assert int_attr(f, "loom.peak_bytes_before") == 3000
    assert int_attr(f, "loom.peak_bytes_after") == 2004 == simulated_peak(f)
    assert after in (
        ["nn.exp", "nn.sigmoid", "nn.sum", "nn.tanh", "nn.neg", "nn.sum", "nn.add", "func.return"],
        ["nn.tanh", "nn.neg", "nn.sum", "nn.exp", "nn.sigmoid", "nn.sum", "nn.add", "func.return"],
    )
    ordered = [op for op in f.body.block.ops if op.operands and op is not f.body.block.last_op]
    assert [int_attr(op, "loom.order") for op in ordered] == list(range(7))
    np.testing.assert_array_equal(outputs_of(module)["out0"], expected["out0"])


def test_a_good_order_is_left_alone():
    def chain(e, x):
        return [e(nn.ReduceSumOp.make([e(nn.ExpOp.make([x]))], axes=[0], keepdims=False))]

    module = model({"x": ([8], "f32")}, chain)
    text = str(module)
    f = function_of(schedule(module))
    assert int_attr(f, "loom.peak_bytes_before") == int_attr(f, "loom.peak_bytes_after") == 32
    for op in f.body.block.ops:
        op.attributes.pop("loom.order", None)
    f.attributes.pop("loom.peak_bytes_before")
    f.attributes.pop("loom.peak_bytes_after")
    assert str(module) == text


@pytest.mark.parametrize(
    "build, peak",
    [
        # Computed straight into the output: nothing local.
        (lambda e, x: [e(nn.ExpOp.make([x]))], 0),
        # Copied out of a reshape at the end: the buffer lives to the end.
        (lambda e, x: [e(nn.ReshapeOp.make([e(nn.ExpOp.make([x]))], shape=[8, 8]))], 256),
        # Reshaping an input or a constant allocates nothing.
        (lambda e, x: [e(nn.ReshapeOp.make([x], shape=[8, 8]))], 0),
        # A reshape keeps its operand's buffer alive while the reshape is used.
        (lambda e, x: [e(nn.ReduceSumOp.make([e(nn.TanhOp.make([e(nn.ReshapeOp.make(
            [e(nn.ExpOp.make([x]))], shape=[8, 8]))]))], axes=[0, 1], keepdims=False))], 512),
    ],
)
def test_what_counts_as_live(build, peak):
    f = function_of(schedule(model({"x": ([64], "f32")}, build)))
    assert int_attr(f, "loom.peak_bytes_before") == peak == simulated_peak(f)


# --------------------------------------------------------------------------
# Random DAGs
# --------------------------------------------------------------------------


def random_model(seed: int, nodes: int) -> ModuleOp:
    """A model whose values are f32[1, n] rows of random widths, each made
    from one or two earlier ones by matmuls (with an add), sometimes passed
    through an activation or a pair of reshapes; unused values are outputs."""
    rng = np.random.default_rng(seed)

    def build(e, x):
        values = [x]
        for _ in range(nodes):
            width = int(rng.choice([1, 4, 16, 64]))
            sources = rng.choice(len(values), size=min(len(values), int(rng.integers(1, 3))), replace=False)
            terms = []
            for source in sorted(sources):
                value = values[source]
                w = rng.standard_normal((value.type.get_shape()[1], width)) * 0.3
                terms.append(e(nn.MatmulOp.make([value, e(nn.ConstantOp(w, F32))])))
            value = terms[0] if len(terms) == 1 else e(nn.AddOp.make(terms))
            kind = rng.integers(3)
            if kind == 1:
                value = e(nn.TanhOp.make([value]))
            elif kind == 2:
                flat = e(nn.ReshapeOp.make([value], shape=[width]))
                value = e(nn.ReshapeOp.make([flat], shape=[1, width]))
            values.append(value)
        used = {operand for v in values[1:] for operand in v.owner.operands}
        return [v for v in values[1:] if v not in used]

    return model({"x": ([1, 8], "f32")}, build)


def check_scheduled(module: ModuleOp) -> func.FuncOp:
    expected = outputs_of(module, seed=1)
    before = simulated_peak(function_of(module))
    f = function_of(schedule(module))
    assert_topological(f)
    assert int_attr(f, "loom.peak_bytes_before") == before
    assert int_attr(f, "loom.peak_bytes_after") == simulated_peak(f) <= before
    actual = outputs_of(module, seed=1)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name], value)
    return f


@pytest.mark.parametrize("seed", range(25))
def test_small_random_graphs_get_an_optimal_valid_order(seed: int):
    module = random_model(seed, nodes=4)
    graph = memory_graph(function_of(module).body.block)
    assert graph.size <= EXACT_OPS
    exact = best_schedule(graph, None)
    assert exact.exact and peak_bytes(graph, exact.order) == exact.peak
    for width in (1, 3):
        heuristic = best_schedule(graph, width)
        assert sorted(heuristic.order) == list(range(graph.size))
        assert exact.peak <= heuristic.peak == peak_bytes(graph, heuristic.order)
    if graph.size <= 9:
        dag = nx.DiGraph()
        dag.add_nodes_from(range(graph.size))
        dag.add_edges_from((p, i) for i, mask in enumerate(graph.predecessors)
                           for p in range(graph.size) if mask >> p & 1)
        assert exact.peak == min(peak_bytes(graph, tuple(o)) for o in nx.all_topological_sorts(dag))
    f = check_scheduled(module)
    assert int_attr(f, "loom.peak_bytes_after") == min(exact.peak, int_attr(f, "loom.peak_bytes_before"))


@pytest.mark.parametrize("seed", range(2))
def test_large_random_graphs_are_ordered_by_beam_search(seed: int):
    module = random_model(100 + seed, nodes=30)
    graph = memory_graph(function_of(module).body.block)
    assert graph.size > EXACT_OPS
    check_scheduled(module)
    narrow = lower(random_model(100 + seed, nodes=30), "schedule-memory{beam_width=1}")
    assert_topological(function_of(narrow))


def test_beam_search_reports_when_it_was_exact():
    graph = memory_graph(function_of(model({"x": ([250], "f32")}, two_branches)).body.block)
    assert best_schedule(graph, 100).exact
    narrow = best_schedule(graph, 1)
    assert not narrow.exact and narrow.peak >= best_schedule(graph, None).peak == 2004


def test_beam_width_must_be_positive():
    with pytest.raises(LoomError, match="beam_width"):
        build_pipeline("schedule-memory{beam_width=0}")


# --------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------

BRANCHES = """
model branches {
  input x: f32[8, 64]
  param w1: f32[64, 64] = normal(0.0, 0.1, seed=3)
  param w2: f32[64, 64] = normal(0.0, 0.1, seed=4)
  a = sigmoid(exp(x @ w1))
  b = tanh(x @ w2)
  left = sum(a * a, axis=1, keepdims=true)
  right = sum(relu(b), axis=1, keepdims=true)
  y = left + right
  output y
}
"""


@pytest.mark.parametrize("source", [BRANCHES, "samples/resblock.loom"])
def test_scheduled_models_compile_and_match_the_interpreter(source, root):
    if source.endswith(".loom"):
        source = root / source
    artifact = compiler.compile(source, target="cpu")  # schedule-memory is in the model pipeline
    if source is BRANCHES:  # `a` waits for all of `b` in the source order
        assert "loom.peak_bytes_before = 6144 : i64, loom.peak_bytes_after = 4128 : i64" in artifact.stages.nn
    for seed in (0, 1):
        assert compiler.check(artifact, random_inputs(artifact.signature, seed)).max_abs_err <= 1e-4
