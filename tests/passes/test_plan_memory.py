"""plan-memory: top-level buffers become views of one arena, and buffers in
use at the same time never share bytes.

Plans are judged two ways that share no code with the pass: `arena_layout`
re-derives from the planned IR alone where every view lies and when it is in
use, and lowered models run on xDSL's interpreter with every dead buffer
poisoned (see arena_interpreter_shim). Deliberately broken planners must
fail both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pytest
from xdsl.dialects import arith, func, memref
from xdsl.dialects.builtin import IntegerAttr, MemRefType, ModuleOp
from xdsl.ir import Operation, SSAValue
from xdsl.parser import Parser

import compiler
from arena_interpreter_shim import PoisonDeadBuffers, mark_steps
from arena_interpreter_shim import run as run_planned
from backends.base import CompileOptions
from backends.cpu.backend import CpuBackend
from compiler.api import MODEL_PIPELINE, load_module, select_model
from compiler.artifact import random_inputs
from compiler.context import make_context
from compiler.diagnostics import LoomError
from compiler.pass_manager import PassManager, build_pipeline
from dialects import nn
from harness import ROOT, SAMPLES, compiled
from nn_lowering_harness import TO_LOOPS, assert_matches, lower, model, random_input, run
from passes import plan_memory
from passes.memory_liveness import LiveRange, max_live_bytes

RNG = np.random.default_rng(7)


def function_of(module: ModuleOp) -> func.FuncOp:
    return next(op for op in module.ops if isinstance(op, func.FuncOp))


def int_attr(function: func.FuncOp, name: str) -> int:
    value = function.attributes[name]
    assert isinstance(value, IntegerAttr)
    return value.value.data


def plan(module: ModuleOp, pipeline: str = "plan-memory") -> ModuleOp:
    PassManager.from_pipeline(make_context(), pipeline).run(module)
    return module


# --------------------------------------------------------------------------
# The independent check: from planned IR alone, no two views in use at the
# same time overlap.
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    first: int  # top-level position of the view
    last: int  # last top-level position that uses it or a view of it
    offset: int
    size: int


def _top_level(op: Operation, position: dict[Operation, int]) -> int:
    while op not in position:
        parent = op.parent_op()
        assert parent is not None
        op = parent
    return position[op]


def _last_use(value: SSAValue, position: dict[Operation, int]) -> int:
    last = _top_level(value.owner, position)  # pyright: ignore[reportArgumentType]
    for use in value.uses:
        last = max(last, _top_level(use.operation, position))
        for result in use.operation.results:
            if isinstance(result.type, MemRefType):
                last = max(last, _last_use(result, position))
    return last


def arena_layout(function: func.FuncOp) -> tuple[int, list[View]]:
    """The arena's size and every view into it."""
    ops = list(function.body.block.ops)
    position = {op: i for i, op in enumerate(ops)}
    views = [op for op in ops if isinstance(op, memref.ViewOp)]
    (arena,) = {view.source for view in views}
    arena_type = arena.type
    assert isinstance(arena.owner, memref.AllocOp) and isinstance(arena_type, MemRefType)
    layout = []
    for view in views:
        shift = view.byte_shift.owner
        assert isinstance(shift, arith.ConstantOp) and isinstance(shift.value, IntegerAttr)
        t = view.result.type
        assert isinstance(t, MemRefType)
        size = math.prod(t.get_shape()) * t.element_type.compile_time_size
        layout.append(View(position[view], _last_use(view.result, position), shift.value.value.data, size))
    return arena_type.get_shape()[0], layout


def assert_sound(function: func.FuncOp, alignment: int = 64) -> None:
    arena_size, views = arena_layout(function)
    for view in views:
        assert view.offset % alignment == 0, view
        assert 0 <= view.offset and view.offset + view.size <= arena_size, (view, arena_size)
    for a, b in combinations(views, 2):
        in_use_together = a.first <= b.last and b.first <= a.last
        share_bytes = a.offset < b.offset + b.size and b.offset < a.offset + a.size
        assert not (in_use_together and share_bytes), (a, b)


# --------------------------------------------------------------------------
# Small models, lowered to loops
# --------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    inputs: dict[str, tuple[Sequence[int], str]]
    build: Callable[..., Sequence[SSAValue]]


def chain(e, x):
    for make in (nn.ExpOp, nn.TanhOp, nn.NegOp, nn.SigmoidOp, nn.ReluOp):
        x = e(make.make([x]))
    return [x]


def branches(e, x):
    a = e(nn.ExpOp.make([x]))
    b = e(nn.TanhOp.make([x]))
    c = e(nn.MulOp.make([a, b]))
    d = e(nn.AddOp.make([c, a]))
    return [e(nn.SigmoidOp.make([d])), e(nn.SubOp.make([c, b]))]


def dense_softmax(e, x):
    w = e(nn.ConstantOp(RNG.standard_normal((5, 4)), nn.DTYPES["f32"], "w"))
    h = e(nn.MatmulOp.make([x, w]))
    return [e(nn.SoftmaxOp.make([e(nn.GeluOp.make([h]))], axis=-1))]


def through_views(e, x):
    r = e(nn.ReshapeOp.make([e(nn.ExpOp.make([x]))], shape=[3, 4]))
    t = e(nn.TransposeOp.make([e(nn.TanhOp.make([r]))], perm=[1, 0]))
    return [e(nn.ReduceSumOp.make([e(nn.MulOp.make([t, t]))], axes=[0], keepdims=False))]


def integers(e, x):
    y = e(nn.MulOp.make([e(nn.AddOp.make([x, x])), x]))
    return [e(nn.SubOp.make([e(nn.MulOp.make([y, x])), y]))]


CASES = [
    Case("chain", {"x": ([4, 8], "f32")}, chain),
    Case("branches", {"x": ([3, 5], "f32")}, branches),
    Case("dense_softmax", {"x": ([3, 5], "f32")}, dense_softmax),
    Case("views", {"x": ([2, 6], "f32")}, through_views),
    Case("f16", {"x": ([3, 7], "f16")}, branches),
    Case("i32", {"x": ([5, 3], "i32")}, integers),
]


def lowered(case: Case) -> ModuleOp:
    return lower(model(case.inputs, case.build), TO_LOOPS)


def inputs_for(case: Case) -> list[np.ndarray]:
    return [random_input(RNG, shape, dtype) for shape, dtype in case.inputs.values()]


def top_level(module: ModuleOp, op_type: type[Operation]) -> list[Operation]:
    return [op for op in function_of(module).body.block.ops if isinstance(op, op_type)]


def plan_and_run_poisoned(case: Case) -> tuple[func.FuncOp, list[np.ndarray], list[np.ndarray]]:
    """Plan `case`; run it poisoned and unplanned; return the planned
    function and both runs' outputs."""
    module = lowered(case)
    inputs = inputs_for(case)
    expected = run(module, inputs)
    frees = mark_steps(function_of(module))
    plan(module)
    poison = PoisonDeadBuffers(frees)
    actual = run_planned(module, inputs, [poison])
    assert poison.all_freed()
    return function_of(module), actual, expected


def assert_outputs_match(case: Case, actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    dtype = next(iter(case.inputs.values()))[1]
    for got, want in zip(actual, expected, strict=True):
        assert_matches(got, want, dtype)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_buffers_become_views_of_one_arena():
    # before:                                    after:
    #   %0 = memref.alloc() : memref<4x8xf32>      %arena = memref.alloc() {alignment = 64} : memref<256xi8>
    #   ...                                        %0 = memref.view %arena[%c0][] : ... to memref<4x8xf32>
    #   memref.dealloc %0 : memref<4x8xf32>        ...
    #   func.return                                memref.dealloc %arena : memref<256xi8>
    #                                              func.return
    module = lowered(CASES[0])
    allocs = top_level(module, memref.AllocOp)
    sizes = [math.prod(a.memref.type.get_shape()) * 4 for a in allocs]
    assert len(allocs) == len(top_level(module, memref.DeallocOp)) == 4

    plan(module)
    f = function_of(module)
    (arena,) = top_level(module, memref.AllocOp)
    assert arena is f.body.block.first_op
    assert str(arena.memref.type) == f"memref<{int_attr(f, 'loom.arena_bytes')}xi8>"
    assert arena.alignment == IntegerAttr(64, 64)
    views = top_level(module, memref.ViewOp)
    assert [v.result.type for v in views] == [a.memref.type for a in allocs]
    (dealloc,) = top_level(module, memref.DeallocOp)
    assert dealloc.memref is arena.memref and dealloc.next_op is f.body.block.last_op
    # A chain only ever needs two buffers at once, each 128 bytes.
    assert int_attr(f, "loom.unplanned_bytes") == sum(sizes) == 512
    assert int_attr(f, "loom.max_live_bytes") == 256
    assert int_attr(f, "loom.arena_bytes") == 256
    assert_sound(f)
    Parser(make_context(), str(module)).parse_module().verify()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_planned_models_compute_the_same_with_dead_buffers_poisoned(case: Case):
    function, actual, expected = plan_and_run_poisoned(case)
    assert_sound(function)
    assert_outputs_match(case, actual, expected)


def _offsets_all_zero(ranges: Sequence[LiveRange], alignment: int = 64) -> list[int]:
    return [0] * len(ranges)


_planned_buffers = plan_memory.planned_buffers


def _ignoring_lifetimes(block, alignment):
    """Every buffer as if it died where it was allocated."""
    return [
        plan_memory.PlannedBuffer(b.alloc, b.dealloc, LiveRange(b.live.start, b.live.start, b.live.size))
        for b in _planned_buffers(block, alignment)
    ]


@pytest.mark.parametrize(
    "target, broken", [("assign_offsets", _offsets_all_zero), ("planned_buffers", _ignoring_lifetimes)]
)
def test_broken_plans_are_caught(monkeypatch, target, broken):
    monkeypatch.setattr(plan_memory, target, broken)
    function, actual, expected = plan_and_run_poisoned(CASES[1])
    with pytest.raises(AssertionError):
        assert_sound(function)
    with pytest.raises(AssertionError):
        assert_outputs_match(CASES[1], actual, expected)


@pytest.mark.parametrize("seed", range(20))
def test_offsets_never_overlap_buffers_live_together(seed: int):
    rng = np.random.default_rng(seed)
    ranges = []
    for _ in range(rng.integers(1, 30)):
        start = int(rng.integers(0, 40))
        ranges.append(LiveRange(start, start + int(rng.integers(0, 10)), int(rng.integers(0, 5000))))
    offsets = plan_memory.assign_offsets(ranges)
    for (a, oa), (b, ob) in combinations(zip(ranges, offsets), 2):
        if a.overlaps(b):
            assert oa + a.size <= ob or ob + b.size <= oa
    assert all(o % 64 == 0 for o in offsets)
    arena = plan_memory.arena_bytes(ranges, offsets)
    assert max_live_bytes(ranges) <= arena <= sum(-(-r.size // 64) * 64 for r in ranges)


def test_offsets_reuse_memory_exactly_when_lifetimes_allow():
    disjoint = [LiveRange(2 * i, 2 * i + 1, size) for i, size in enumerate([640, 128, 1280, 64])]
    assert plan_memory.assign_offsets(disjoint) == [0, 0, 0, 0]
    together = [LiveRange(0, 5, size) for size in [640, 128, 1280, 64]]
    offsets = plan_memory.assign_offsets(together)
    assert sorted(offsets) == [0, 1280, 1920, 2048]
    assert plan_memory.arena_bytes(together, offsets) == 2112 == max_live_bytes(together)
    # Late buffers reuse the bytes of early ones while long-lived ones stay put.
    mixed = [LiveRange(0, 9, 64), LiveRange(0, 1, 256), LiveRange(0, 9, 64), LiveRange(0, 1, 128),
             LiveRange(0, 9, 64), LiveRange(5, 9, 128), LiveRange(2, 4, 320)]
    offsets = plan_memory.assign_offsets(mixed)
    assert plan_memory.arena_bytes(mixed, offsets) == max_live_bytes(mixed) == 576


HAND_WRITTEN = """
func.func @f(%out: memref<4xf32>, %n: index) {
  %a = memref.alloc() : memref<4xf32>
  %kept = memref.alloc() : memref<8xf32>
  %dynamic = memref.alloc(%n) : memref<?xf32>
  %c0 = arith.constant 0 : index
  %c1 = arith.constant 1 : index
  %c4 = arith.constant 4 : index
  scf.for %i = %c0 to %c4 step %c1 {
    %t = memref.alloc() : memref<2xf32>
    %v = memref.load %a[%i] : memref<4xf32>
    memref.store %v, %out[%i] : memref<4xf32>
    memref.dealloc %t : memref<2xf32>
  }
  memref.dealloc %dynamic : memref<?xf32>
  memref.dealloc %a : memref<4xf32>
  %b = memref.alloc() : memref<3xi8>
  %wide = memref.alloc() {alignment = 128 : i64} : memref<4xf32>
  memref.dealloc %wide : memref<4xf32>
  memref.dealloc %b : memref<3xi8>
  func.return
}
"""


def test_only_freed_static_top_level_buffers_are_planned():
    module = plan(Parser(make_context(), HAND_WRITTEN).parse_module())
    f = function_of(module)
    remaining = [op.memref.name_hint for op in f.walk() if isinstance(op, memref.AllocOp)]
    assert remaining == ["arena", "kept", "dynamic", "t", "wide"]
    assert [v.result.name_hint for v in top_level(module, memref.ViewOp)] == ["a", "b"]
    # %a dies before %b is born: both start at offset 0.
    assert int_attr(f, "loom.arena_bytes") == 16
    assert int_attr(f, "loom.unplanned_bytes") == 19
    assert_sound(f)
    # An arena aligned as strictly as the buffer asks can hold it.
    wider = plan(Parser(make_context(), HAND_WRITTEN).parse_module(), "plan-memory{alignment=128}")
    assert "wide" in [v.result.name_hint for v in top_level(wider, memref.ViewOp)]
    assert_sound(function_of(wider), alignment=128)


def test_planning_twice_changes_nothing():
    module = plan(lowered(CASES[2]))
    once = str(module)
    assert str(plan(module)) == once


def test_alignment_option():
    module = plan(lowered(CASES[2]), "plan-memory{alignment=16}")
    f = function_of(module)
    assert_sound(f, alignment=16)
    assert any(v.offset % 64 for v in arena_layout(f)[1])
    with pytest.raises(LoomError, match="power of two"):
        build_pipeline("plan-memory{alignment=48}")


def test_the_cpu_pipeline_ends_by_planning_memory():
    assert CpuBackend().pipeline(CompileOptions()).split(",")[-1] == "plan-memory"


def lowered_sample(name: str) -> ModuleOp:
    """Sample `name` as the CPU backend receives it."""
    module = select_model(load_module(ROOT / "samples" / name), None)
    pipeline = f"{MODEL_PIPELINE},{CpuBackend().pipeline(CompileOptions())}"
    PassManager.from_pipeline(make_context(), pipeline).run(module)
    return module


@pytest.mark.parametrize("sample", [p.name for p in SAMPLES])
def test_samples_run_natively_from_their_arena(sample: str):
    f = function_of(lowered_sample(sample))
    assert_sound(f)
    arena, unplanned, lower_bound = (
        int_attr(f, name) for name in ("loom.arena_bytes", "loom.unplanned_bytes", "loom.max_live_bytes")
    )
    assert 0 < lower_bound <= arena <= unplanned
    artifact = compiled(sample, "cpu")
    for seed in (0, 1):
        assert compiler.check(artifact, random_inputs(artifact.signature, seed)).max_abs_err <= 1e-4
