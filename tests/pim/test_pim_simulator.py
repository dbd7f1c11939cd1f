"""The simulator: functional MACs against the dialect's semantics, and timing on small cases."""

from __future__ import annotations

import numpy as np
import pytest
from pim_helpers import hbm, small

from backends.pim.checker import check_trace
from backends.pim.codegen import host_read_kernel, pim_kernel
from backends.pim.commands import ACT, MAC, OPCODES, PRE, REF, decode, encode
from backends.pim.simulator import Stack
from dialects.pim import broadcast_values, mac_values
from passes.pim_map import make_layout


def run_kernel(config, layout, mode, w, x):
    stack = Stack(config, layout.row_base + layout.bank_rows)
    stack.write_matrix(layout, w)
    kernel = pim_kernel(layout, mode, config)
    run, acc = stack.run(kernel, 0, broadcast_values(x, layout))
    return stack, kernel, run, acc


@pytest.mark.parametrize("dtype, elem_bytes", [("f32", 4), ("f16", 2), ("i8", 1)])
@pytest.mark.parametrize("mode", ["all-bank", "per-bank"])
@pytest.mark.parametrize("m, k, n, splits, transposed", [(1, 300, 37, 1, False), (2, 700, 5, 2, True),
                                                         (1, 128, 300, 1, False)])
def test_macs_match_the_semantics(dtype, elem_bytes, mode, m, k, n, splits, transposed) -> None:
    config = small()
    layout = make_layout(config, m, k, n, transposed, elem_bytes, splits, row_base=3)
    rng = np.random.default_rng(k + n)
    shape = (n, k) if transposed else (k, n)
    if dtype == "i8":
        w = rng.integers(-128, 128, shape).astype(np.int8)
        x = rng.integers(-128, 128, (m, k)).astype(np.int8)
    else:
        w = rng.standard_normal(shape).astype(np.float32)
        x = rng.standard_normal((m, k)).astype(np.float32)
    stack, _, _, acc = run_kernel(config, layout, mode, w, x)
    want = mac_values(broadcast_values(x, layout), w, layout)
    if dtype == "i8":
        np.testing.assert_array_equal(acc, want)  # bit-exact
    else:
        np.testing.assert_allclose(acc, want, rtol=1e-5, atol=1e-4)
    assert check_trace(stack.trace_array(), config) == []


def test_host_read_returns_the_matrix() -> None:
    config = small()
    layout = make_layout(config, 1, 300, 37, False, 4, 1, row_base=2)
    w = np.random.default_rng(0).standard_normal((300, 37)).astype(np.float32)
    stack = Stack(config, layout.row_base + layout.bank_rows)
    stack.write_matrix(layout, w)
    _, matrix = stack.run(host_read_kernel(layout, config), 0)
    np.testing.assert_array_equal(matrix, w)
    assert stack.counters.commands["RD"] == -(-300 // layout.lanes) * 37  # occupied columns only
    assert check_trace(stack.trace_array(), config) == []


def test_layout_places_every_element_once() -> None:
    config = hbm()
    layout = make_layout(config, 1, 1000, 70, False, 2, 3, row_base=5)
    p = layout.placement
    keys = ((p.channel * config.banks + p.bank) * 10_000 + p.row) * config.row_bytes + p.byte
    assert len(np.unique(keys)) == keys.size
    assert p.row.min() >= 5 and p.row.max() < 5 + layout.bank_rows
    assert p.byte.max() + layout.elem_bytes <= config.row_bytes and p.channel.max() < config.channels


def test_one_row_visit_timing() -> None:
    """One chunk on one unit: ACT, 8 MACs tCCD_L apart from ACT + tRCD, PRE at ACT + tRAS at the earliest."""
    config = small(channels=1)
    layout = make_layout(config, 1, 8 * 8, 1, False, 4, 1)  # 64 f32 = one chunk, one output
    stack, _, _, _ = run_kernel(config, layout, "per-bank", np.ones((64, 1), np.float32),
                                       np.ones((1, 64), np.float32))
    cycles = {}
    for record in stack.trace:
        cycles.setdefault(OPCODES[record[2]], []).append(record[0])
    act, macs, pre = cycles["ACT"][0], cycles["MAC"], cycles["PRE"][0]
    assert macs[0] == max(act + config.trcd, cycles["BCAST"][-1] + config.tccd_l)
    assert np.all(np.diff(macs) == config.tccd_l) and len(macs) == 8
    assert pre == max(act + config.tras, macs[-1] + 1)


def test_refresh_is_inserted_and_rows_reopened() -> None:
    config = small(trefi=150, channels=1)
    layout = make_layout(config, 4, 512, 64, False, 4, 1)
    stack, _, run, acc = run_kernel(config, layout, "all-bank", np.ones((512, 64), np.float32),
                                    np.ones((4, 512), np.float32))
    ops = [OPCODES[r[2]] for r in stack.trace]
    assert ops.count("REF") >= run.end // config.trefi - config.refresh_postpone
    assert check_trace(stack.trace_array(), config) == []
    np.testing.assert_array_equal(acc.sum(axis=(1, 3)), np.full((4, 64), 512.0))


def test_all_bank_units_outrun_the_bus() -> None:
    """The same matrix: units in all-bank mode vs the host reading it, cycles and energy."""
    config = hbm()
    layout = make_layout(config, 1, 512, 512, False, 2, 1)
    w = np.zeros((512, 512), np.float16)
    pim, _, pim_run, _ = run_kernel(config, layout, "all-bank", w, np.zeros((1, 512), np.float16))
    host = Stack(config, layout.bank_rows)
    host_run, _ = host.run(host_read_kernel(layout, config), 0)
    internal = config.units * config.column_bytes / config.tccd_l  # bytes per cycle per channel
    external = config.column_bytes / config.burst_cycles
    speedup = host_run.end / pim_run.end
    assert 0.6 * internal / external < speedup <= internal / external
    assert sum(pim.counters.energy_pj.values()) < sum(host.counters.energy_pj.values())


def test_commands_encode_and_decode() -> None:
    config = small()
    kernel = pim_kernel(make_layout(config, 1, 200, 20, False, 2, 1), "all-bank", config)
    program = kernel.streams[0]
    back = decode(encode(program))
    for name in program.dtype.names:
        if name != "data":
            np.testing.assert_array_equal(back[name], program[name])
    assert {ACT, MAC, PRE} <= set(program["op"].tolist()) and REF not in program["op"]
    with pytest.raises(ValueError, match="row does not fit in 20 bits"):
        encode(np.array([(ACT, 0, 0, 1 << 20, 0, 0, 0, 0, 0, -1)], program.dtype))
