"""The analytical tiling cost model: loop nests, footprints, traffic, predictions
and the schedules it chooses, on fixed machine descriptions."""

from __future__ import annotations

import math

import pytest
from xdsl.ir.affine import AffineExpr

from compiler.targets import ComputeUnit, MemoryLevel, TargetDescription
from passes.cost_model import (
    Access,
    Kernel,
    LoopNest,
    Machine,
    Schedule,
    TileLevel,
    balanced,
    choose_schedule,
    contraction_roles,
    divisor_or_balanced,
    footprint,
    kernel_efficiency,
    linear_index,
    loops_and_tiles,
    predict,
    register_level,
    reloads,
    traffic,
    vector_slices,
)

KIB, MIB = 1 << 10, 1 << 20


def machine(lanes: int = 16, cores: int = 2, l1: int = 32 * KIB, l2: int = MIB) -> Machine:
    return Machine.from_target(TargetDescription(
        name="test-cpu",
        clock_hz=3e9,
        compute=[ComputeUnit("cpu-core", cores, lanes, None, 2.0 * lanes, ("f32",))],
        memory=[MemoryLevel("L1", l1, 64, 4), MemoryLevel("L2", l2, 32, 14),
                MemoryLevel("L3", 32 * MIB, 16, 40), MemoryLevel("DRAM", 8 << 30, 8, 200)],
    ))


AVX512, AVX2 = machine(16), machine(8)
d = [AffineExpr.dimension(i) for i in range(8)]


def access(rank: int, results, written: bool = False) -> Access:
    return Access(tuple(linear_index(e, rank) for e in results), 4, written)


def matmul(m: int, k: int, n: int) -> LoopNest:
    """The (i, k, j) nest convert-nn-to-linalg builds for an m x k by k x n matmul."""
    return LoopNest((m, k, n), frozenset({1}),
                    (access(3, [d[0], d[1]]), access(3, [d[1], d[2]]), access(3, [d[0], d[2]], True)))


def conv(n: int, c: int, o: int, size: int, kernel: int, stride: int = 1) -> LoopNest:
    """(n, oc, oh, ic, kh, kw, ow) over a padded input, as convert-nn-to-linalg builds it."""
    out = (size - kernel) // stride + 1
    x = access(7, [d[0], d[3], d[2] * stride + d[4], d[6] * stride + d[5]])
    w = access(7, [d[1], d[3], d[4], d[5]])
    y = access(7, [d[0], d[1], d[2], d[6]], True)
    return LoopNest((n, o, out, c, kernel, kernel, out), frozenset({3, 4, 5}), (x, w, y))


def test_linear_indices_read_coefficients_and_constants():
    index = linear_index(d[2] * 2 + d[4] + 3, 6)
    assert index.coefficients == (0, 0, 2, 0, 1, 0) and index.constant == 3
    assert index.extent([1, 1, 5, 1, 3, 1]) == 2 * 4 + 2 + 1
    assert linear_index(d[0] % 4, 2) is None
    assert linear_index(d[0] * -1 + 7, 1) is None


def test_footprint_counts_every_operand_over_the_tile():
    nest = matmul(64, 32, 48)
    assert footprint(nest, (8, 32, 16)) == 4 * (8 * 32 + 32 * 16 + 8 * 16)
    assert footprint(nest, nest.sizes) == 4 * (64 * 32 + 32 * 48 + 64 * 48)
    window = conv(1, 4, 8, 10, 3)
    # rows and columns of the input a 2 x 4 output tile needs through a 3 x 3 window
    x_elements = 4 * (2 + 2) * (4 + 2)
    assert window.accesses[0].elements((1, 8, 2, 4, 3, 3, 4)) == x_elements


def test_operands_are_reloaded_only_by_loops_that_move_them():
    nest = matmul(64, 64, 64)
    loops, tile = loops_and_tiles(nest, [TileLevel((16, 64, 64), (0, 2, 1))])[0]
    assert [(loop.dim, loop.trips) for loop in loops] == [(0, 4)]
    a, b, c = nest.accesses
    # B does not depend on i, so one tile of it serves every i tile
    assert (reloads(a, loops), reloads(b, loops), reloads(c, loops)) == (4, 1, 4)
    loops, _ = loops_and_tiles(nest, [TileLevel((16, 64, 16), (2, 0, 1))])[0]
    # j outside i: B's tile is refetched per j tile only, A's per (j, i) pair
    assert reloads(b, loops) == 4 and reloads(a, loops) == 16
    assert traffic(nest, loops, (16, 64, 16)) == 4 * (16 * (16 * 64) + 4 * (64 * 16) + 2 * 16 * (16 * 16))


def test_contraction_roles_of_matmul_and_convolution():
    roles = contraction_roles(matmul(32, 16, 64))
    assert (roles.vector_dim, roles.row_dim, roles.reduction_dim) == (2, 0, 1)
    assert (roles.vector_input, roles.broadcast_input) == (1, 0)
    roles = contraction_roles(conv(1, 8, 16, 12, 3))
    assert (roles.vector_dim, roles.row_dim, roles.reduction_dim) == (6, 1, 3)
    assert contraction_roles(conv(1, 8, 16, 12, 3, stride=2)) is None  # strided rows are not contiguous


def test_vector_slices_cover_any_row_with_the_fewest_vectors():
    covers = {n: vector_slices(n, 16) for n in (64, 24, 20, 16, 10, 6, 3, 2, 1)}
    assert {n: (s.width, s.count, s.tail) for n, s in covers.items() if s} == {
        64: (16, 4, 0), 24: (16, 2, 8), 20: (16, 2, 4), 16: (16, 1, 0),
        10: (16, 1, 10), 6: (8, 1, 6), 3: (4, 1, 3), 2: (4, 1, 2),
    }
    assert covers[1] is None  # one column: no vector


def test_kernel_efficiency_needs_enough_independent_accumulators():
    assert kernel_efficiency(8, 32, AVX512) == 1.0
    assert kernel_efficiency(1, 16, AVX512) == pytest.approx(1 / 8)  # 1 accumulator, 4-cycle FMAs, 2 pipes
    assert kernel_efficiency(8, 10, AVX512) == pytest.approx(10 / 16)  # one masked vector per row
    assert kernel_efficiency(8, 1, AVX512) == pytest.approx(1 / 16)  # scalar


def test_tile_sizes_prefer_divisors_then_balance():
    assert divisor_or_balanced(512, 100) == 64
    assert divisor_or_balanced(784, 61) == 56
    assert divisor_or_balanced(97, 40) == balanced(97, 40) == 33
    assert balanced(100, 40, 8) == 40 and balanced(30, 40) == 30


@pytest.mark.parametrize("target", [AVX512, AVX2], ids=["avx512", "avx2"])
@pytest.mark.parametrize("shape", [(512, 512, 512), (1024, 1024, 1024), (100, 37, 84), (1, 784, 128), (16, 64, 256)])
def test_matmul_schedules_fit_registers_and_caches(target, shape):
    nest = matmul(*shape)
    schedule = choose_schedule(nest, target)
    kernel, (outer, inner) = schedule.kernel, schedule.levels
    assert kernel.columns % target.lanes == 0
    assert kernel.registers <= target.vector_registers
    assert inner.sizes[2] in (kernel.columns, shape[2]) and inner.sizes[0] <= kernel.rows
    # the vector input's panel in half of L1, the micro-kernel's tile in L1, the cache-level tile in L2
    micro = (kernel.rows, outer.sizes[1], kernel.columns)
    assert nest.accesses[1].elements(micro) * 4 <= target.memory[0].capacity_bytes / 2
    assert footprint(nest, micro) <= target.usable_bytes(0) == target.memory[0].capacity_bytes
    assert footprint(nest, outer.sizes) <= target.usable_bytes(1) == target.memory[1].capacity_bytes / 2
    assert all(1 <= t <= e for t, e in zip(outer.sizes, shape))


def test_kernel_rows_and_columns_follow_the_register_file():
    wide, narrow = choose_schedule(matmul(512, 512, 512), AVX512), choose_schedule(matmul(512, 512, 512), AVX2)
    assert (wide.kernel.rows, wide.kernel.columns) == (8, 32)
    assert narrow.kernel.columns % 8 == 0 and narrow.kernel.registers <= 16


def test_row_blocks_leave_work_for_every_core():
    outer = choose_schedule(matmul(512, 512, 512), machine(cores=4)).levels[0]
    assert math.ceil(512 / outer.sizes[0]) >= 4


def test_convolution_schedule_vectorises_output_rows():
    nest = conv(1, 16, 32, 34, 3)
    schedule = choose_schedule(nest, AVX512)
    assert schedule.roles.vector_dim == 6 and schedule.kernel.columns == 32
    outer = schedule.levels[0]
    assert outer.sizes[4:6] == (3, 3)  # kh and kw stay whole


def test_rows_shorter_than_a_vector_get_one_masked_vector():
    schedule = choose_schedule(conv(1, 6, 16, 14, 5), AVX512)  # 10 output columns
    assert schedule.kernel.lanes == 16 and schedule.kernel.vectors == 1
    assert schedule.levels[1].sizes[6] == 10  # all 10 columns in the kernel, none left to scalar code
    assert choose_schedule(matmul(16, 8, 3), AVX512).kernel.lanes == 4


def test_ops_without_a_vector_dim_get_no_schedule():
    assert choose_schedule(matmul(4, 2, 1), AVX512) is None
    assert choose_schedule(matmul(16, 8, 1), AVX512) is None


def test_prediction_is_the_slowest_of_compute_and_traffic():
    nest = matmul(512, 512, 512)
    schedule = choose_schedule(nest, AVX512)
    prediction = predict(nest, schedule, AVX512)
    assert prediction.time_s == max(prediction.compute_s, *(level.seconds for level in prediction.levels))
    assert prediction.compute_s == pytest.approx(512 ** 3 / AVX512.macs_per_second)
    assert [level.memory for level in prediction.levels] == ["L1", "L2", "L3", "DRAM"]
    assert prediction.main_memory_bytes == footprint(nest, nest.sizes)
    two = predict(nest, schedule, AVX512, workers=2)
    assert two.compute_s == pytest.approx(prediction.compute_s / 2)


def test_tiling_cuts_predicted_traffic():
    nest = matmul(1024, 1024, 1024)
    schedule = choose_schedule(nest, AVX512)
    untiled = Schedule((TileLevel(nest.sizes, (0, 1, 2)),), schedule.roles, schedule.kernel)
    tiled, flat = predict(nest, schedule, AVX512), predict(nest, untiled, AVX512)
    assert tiled.time_s < flat.time_s

    def from_far_memory(prediction) -> int:
        return sum(level.bytes for level in prediction.levels if level.memory in ("L3", "DRAM"))

    assert from_far_memory(tiled) * 3 < from_far_memory(flat)


def test_register_level_holds_the_accumulators():
    nest = matmul(64, 64, 64)
    roles = contraction_roles(nest)
    level = register_level(nest, roles, Kernel(8, 2, 16))
    assert level.sizes == (8, 1, 32) and level.order == (2, 0, 1)
