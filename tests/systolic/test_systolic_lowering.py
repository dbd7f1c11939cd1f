"""convert-to-systolic (placement, epilogue fusion, host split) and tile-systolic (the schedule)."""

from __future__ import annotations

import numpy as np
import pytest
from xdsl.dialects.builtin import ModuleOp

import compiler
from compiler.api import load_module, select_model
from compiler.artifact import random_inputs
from compiler.context import make_context
from compiler.diagnostics import LoomError
from compiler.model import find_model
from compiler.pass_manager import PassManager
from dialects import mem, nn
from dialects import systolic as sy
from passes.convert_to_systolic import check_dataflow, parse_array
from systolic_models import ROOT, fold_cycles, small_target


def lower(source, pipeline: str, weights=None) -> ModuleOp:
    module = select_model(load_module(source, weights), None)
    PassManager.from_pipeline(make_context(), pipeline).run(module)
    return module


def ops_of(module: ModuleOp, kind) -> list:
    return [op for op in module.walk() if isinstance(op, kind)]


PLACE = "fold-constants,canonicalize,convert-to-systolic,dce"


def test_matmul_absorbs_bias_and_relu_and_the_rest_stays_on_the_host() -> None:
    module = lower(ROOT / "samples/mlp.loom", PLACE)
    gemms = ops_of(module, sy.GemmOp)
    assert [(g.layer.data, [f.data for f in g.fused], g.relu is not None) for g in gemms] == [
        ("h", ["matmul", "add", "relu"], True), ("w2", ["matmul", "add"], False)]
    assert all(g.bias is not None for g in gemms)
    assert not ops_of(module, (nn.MatmulOp, nn.AddOp, nn.ReluOp))
    (softmax,) = ops_of(module, nn.SoftmaxOp)
    assert softmax.attributes[sy.HOST_ATTR].data == "softmax is not a matrix product or convolution"
    config = sy.ArrayConfig.from_attr(module.attributes[sy.CONFIG_ATTR])
    assert (config.rows, config.cols, config.dataflow, config.ifmap_bytes) == (16, 16, "ws", 65536)


def test_residual_add_is_not_a_bias() -> None:
    module = lower(ROOT / "samples/resblock.loom", "fold-constants,fold-batchnorm,canonicalize,convert-to-systolic,dce")
    gemms = ops_of(module, sy.GemmOp)
    assert [[f.data for f in g.fused] for g in gemms] == [["conv2d", "relu"], ["conv2d"]]
    assert all(g.bias is not None for g in gemms)  # the folded batchnorms
    assert [op.name for op in ops_of(module, nn.NNOperation)] == ["nn.add", "nn.relu"]


def test_conv_weights_become_the_grouped_weight_matrix() -> None:
    source = """model c {
      input x: f32[1, 4, 6, 6]
      param w: f32[6, 2, 3, 3] = normal(0.0, 1.0, seed=1)
      y = conv2d(x, w, groups=2)
      output y
    }"""
    original = find_model(select_model(load_module(source), None), None)
    weights = next(op for op in original.body.ops if isinstance(op, nn.ConstantOp)).array()
    (gemm,) = ops_of(lower(source, PLACE), sy.GemmOp)
    matrix = gemm.w.owner.array()
    assert matrix.shape == (2, 18, 3)
    np.testing.assert_array_equal(matrix[1, :, 2], weights[5].reshape(-1))
    assert gemm.problem().m == 16 and gemm.problem().groups == 2


@pytest.mark.parametrize(
    "body, reason",
    [
        ("input a: i32[4, 8]\n param b: i32[8, 2] = zeros\n y = a @ b", "i32 operands: the array multiplies i8 and f32"),
        ("input a: f32[2, 4, 8]\n input b: f32[2, 8, 3]\n y = a @ b", "batched weights"),
        ("input a: f16[4, 8]\n input b: f16[8, 3]\n y = a @ b", "f16 operands"),
    ],
)
def test_what_the_array_cannot_run_stays_on_the_host(body: str, reason: str) -> None:
    module = lower(f"model m {{\n {body}\n output y\n}}", PLACE)
    assert not ops_of(module, sy.GemmOp)
    (matmul,) = ops_of(module, nn.MatmulOp)
    assert reason in matmul.attributes[sy.HOST_ATTR].data


def test_a_fold_that_does_not_fit_stays_on_the_host(tmp_path) -> None:
    target = small_target(tmp_path, ifmap=256, filter_=4096, ofmap=65536)
    module = lower(ROOT / "samples/lenet.loom", f'fold-constants,convert-to-systolic{{target-config="{target}"}}')
    convs = ops_of(module, nn.Conv2dOp)
    assert len(convs) == 2
    assert "needs" in convs[0].attributes[sy.HOST_ATTR].data and "ifmap scratchpad" in convs[0].attributes[sy.HOST_ATTR].data
    assert len(ops_of(module, sy.GemmOp)) == 3  # the dense layers still fit
    artifact = compiler.compile(ROOT / "samples/lenet.loom", target="systolic",
                                options=compiler.CompileOptions(target_config=target))
    assert [h["op"] for h in artifact.report["host_ops"]].count("conv2d") == 2


def test_unused_matmul_results_are_not_fused() -> None:
    module = lower("model m {\n input a: f32[4, 8]\n param b: f32[8, 3] = ones\n h = a @ b\n"
                   " y = relu(h)\n output h, y\n}", PLACE)
    (gemm,) = ops_of(module, sy.GemmOp)
    assert [f.data for f in gemm.fused] == ["matmul"] and ops_of(module, nn.ReluOp)


SMALL = """model small {
  input x: f32[1, 3, 10, 10]
  param w: f32[8, 3, 3, 3] = normal(0.0, 0.3, seed=1)
  param v: f32[40, 12] = normal(0.0, 0.3, seed=2)
  param b: f32[12] = normal(0.0, 0.3, seed=3)
  c = conv2d(x, w, padding=1, stride=2)
  y = relu(reshape(c, [5, 40]) @ v + b)
  output y
}"""


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
def test_schedule_has_one_drain_per_fold_and_waits_before_use(dataflow: str) -> None:
    module = lower(SMALL, f'fold-constants,convert-to-systolic{{array="8x8" dataflow="{dataflow}"}},dce,tile-systolic')
    assert len(ops_of(module, sy.KernelOp)) == 2
    for kernel in ops_of(module, sy.KernelOp):
        p = kernel.problem_values()
        ops = list(kernel.body.block.ops)
        drains = [op for op in ops if isinstance(op, sy.DrainOp)]
        preloads = [op for op in ops if isinstance(op, sy.PreloadOp)]
        assert len(drains) == p["folds"]
        assert len(preloads) == (0 if dataflow == "os" else len(drains))
        assert sum(op.accumulate is None for op in drains) == (
            len(drains) if dataflow == "os" else len(drains) // -(-p["k"] // 8))
        arrivals = {op.destination: op.token for op in ops if isinstance(op, mem.DmaStartOp)}
        waited = set()
        for op in ops:
            if isinstance(op, mem.DmaWaitOp):
                waited.add(op.token)
            for buffer in [v for v in op.operands if v in arrivals]:
                if isinstance(op, (sy.PreloadOp, sy.StreamOp, sy.PostprocessOp)):
                    assert arrivals[buffer] in waited, f"{op.name} reads a buffer before its DMA is waited for"
        assert isinstance(ops[0], sy.ConfigureOp) and isinstance(ops[-1], sy.YieldOp)


def test_buffers_stay_inside_their_scratchpads(tmp_path) -> None:
    target = small_target(tmp_path, ifmap=2048, filter_=4096, ofmap=4096)
    module = lower(ROOT / "samples/mlp.loom", f'fold-constants,convert-to-systolic{{target-config="{target}"}},'
                   "dce,tile-systolic")
    capacity = {"ifmap": 2048, "filter": 4096, "ofmap": 4096}
    offsets: dict[str, set[int]] = {level: set() for level in capacity}
    for alloc in ops_of(module, mem.AllocOp):
        level = alloc.memref.type.memory_space.level.data
        offset = alloc.attributes[sy.OFFSET_ATTR].value.data
        assert offset % 64 == 0 and offset + mem.buffer_bytes(alloc.memref.type) <= capacity[level]
        offsets[level].add(offset)
    # The weights do not fit: their tiles rotate through several filter slots.
    assert len(offsets["filter"]) >= 3
    kernels = ops_of(module, sy.KernelOp)
    assert [k.problem_values()["w_resident"] for k in kernels] == [0, 0]


def test_layers_with_panels_larger_than_the_ofmap_scratchpad_are_split(tmp_path) -> None:
    target = small_target(tmp_path, ifmap=65536, filter_=65536, ofmap=8192)
    module = lower(ROOT / "samples/lenet.loom", f'fold-constants,convert-to-systolic{{target-config="{target}"}},'
                   "dce,tile-systolic")
    first = ops_of(module, sy.KernelOp)[0].problem_values()
    # 784 output pixels x 6 channels of f32 accumulators and outputs need 37632 bytes: split in rows of 28 pixels.
    assert first["folds"] > 2 * 1
    assert first["folds"] % 2 == 0


def test_tile_systolic_needs_a_placed_module() -> None:
    with pytest.raises(LoomError, match="run convert-to-systolic first"):
        lower(ROOT / "samples/mlp.loom", "tile-systolic")


def test_array_and_dataflow_options() -> None:
    assert parse_array("32x8") == (32, 8) and parse_array(" 4 X 4 ") == (4, 4)
    for bad in ("8y8", "0x4", "16", "x"):
        with pytest.raises(LoomError, match="--array expects ROWSxCOLS"):
            parse_array(bad)
    with pytest.raises(LoomError, match="did you mean 'is'"):
        check_dataflow("iss")
    module = lower(ROOT / "samples/xor.loom", 'convert-to-systolic{array="4x32" dataflow="is"}')
    config = sy.ArrayConfig.from_attr(module.attributes[sy.CONFIG_ATTR])
    assert (config.rows, config.cols, config.dataflow) == (4, 32, "is")


def test_fold_formula_helper_matches_scalesim_example() -> None:
    # SCALE-Sim reports 1167 for this GEMM on 16x16 ws (see docs/targets/systolic.md).
    assert fold_cycles("ws", 16, 16, m=100, k=30, n=64) == 1168


def test_without_fusion_epilogues_run_on_the_host() -> None:
    artifact = compiler.compile(ROOT / "samples/mlp.loom", target="systolic", options=compiler.CompileOptions(fusion=False))
    assert [h["op"] for h in artifact.report["host_ops"]] == ["add", "relu", "add", "softmax"]
    assert [layer["fused"] for layer in artifact.report["layers"]] == [["matmul"], ["matmul"]]
    assert compiler.check(artifact, random_inputs(artifact.signature, 0)).max_abs_err <= 1e-5
