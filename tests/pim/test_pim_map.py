"""pim-map and pim-expand: what goes where, how matrices are laid out, IR before and after."""

from __future__ import annotations

import itertools

import pytest
from pim_helpers import hbm
from xdsl.dialects.builtin import ModuleOp

import compiler
from compiler.context import make_context
from compiler.diagnostics import LoomError
from compiler.pass_manager import PassManager
from compiler.targets import load_target
from dialects import nn
from dialects.pim import ENGINE_ATTR, GemvOp
from passes.pim_map import choose_layout, host_cycles, make_layout, pim_config

WIDE = """
model wide {
  input x: f32[ROWS, 256]
  input cache: f32[64, 256]
  param w: f32[256, 512] = normal(0.0, 0.1, seed=1)
  param v: f32[512, 256] = normal(0.0, 0.1, seed=2)
  h = x @ w
  s = h @ v
  t = s @ transpose(cache)
  u = t @ relu(cache)
  output u
}
"""


def mapped(source: str, pipeline: str = "pim-map") -> ModuleOp:
    module = compiler.load_module(source)
    PassManager.from_pipeline(make_context(), pipeline).run(module)
    return module


def gemvs(module: ModuleOp) -> dict[str, GemvOp]:
    return {op.layer.data: op for op in module.walk() if isinstance(op, GemvOp)}


def test_gemvs_go_to_pim_and_the_rest_stays_on_the_host() -> None:
    module = mapped(WIDE.replace("ROWS", "1"))
    placed = gemvs(module)
    assert set(placed) == {"w", "v", "cache"}
    assert all(op.mode.data in ("all-bank", "per-bank") for op in placed.values())
    cache = placed["cache"].get_layout()
    assert cache.transposed == 1 and (cache.k, cache.n) == (256, 64)  # the transpose is in the layout
    left = [op for op in module.walk() if isinstance(op, nn.MatmulOp)]
    assert len(left) == 1 and "computed at run time" in left[0].attributes[ENGINE_ATTR].data
    rows = sorted((op.get_layout().row_base, op.get_layout().bank_rows) for op in placed.values())
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(rows))  # each matrix has rows of its own


def test_a_gemm_is_read_by_the_host() -> None:
    placed = gemvs(mapped(WIDE.replace("ROWS", "32")))
    assert {op.mode.data for op in placed.values()} == {"host"}
    one = gemvs(mapped(WIDE.replace("ROWS", "1")))["w"].get_layout()
    _, _, pim = choose_layout(hbm(), 32, 256, 512, False, 4, "auto")
    assert host_cycles(make_layout(hbm(), 32, 256, 512, False, 4, 1), hbm()) < pim
    assert one.m == 1


def test_layout_uses_every_unit_and_splits_small_outputs() -> None:
    config = hbm()
    wide, mode, _ = choose_layout(config, 1, 1024, 2048, False, 2, "auto")
    assert wide.splits == 1 and mode == "all-bank" and wide.n >= wide.outputs_per_slot
    narrow, _, _ = choose_layout(config, 1, 4096, 16, False, 2, "auto")
    assert narrow.splits > 1  # too few outputs for the units: K is split over channel groups
    assert narrow.splits * narrow.channels_per_split <= config.channels
    _, mode, _ = choose_layout(config, 1, 64, 20, False, 4, "auto")
    assert mode == "per-bank"  # at most tCCD_L / tCCD_S busy units per channel


def test_expand_before_and_after() -> None:
    module = mapped(WIDE.replace("ROWS", "1"), "pim-map,dce,pim-expand")
    text = str(module)
    assert "pim.gemv" not in text
    for op in ("pim.broadcast", "pim.mac", "pim.readout", "pim.reduce"):
        assert text.count(op + " ") == 3, op
    host = str(mapped(WIDE.replace("ROWS", "1"), 'pim-map{mode="host"},dce,pim-expand'))
    assert host.count("pim.read ") == 3 and "pim.mac" not in host and host.count("nn.matmul") == 4


def test_f16_precision_narrows_the_layout() -> None:
    placed = gemvs(mapped(WIDE.replace("ROWS", "1"), 'pim-map{precision="f16"}'))
    assert {op.get_layout().elem_bytes for op in placed.values()} == {2}


@pytest.mark.parametrize("pipeline, message", [
    ('pim-map{precision="bf16"}', "precision must be '' or 'f16'"),
    ('pim-map{mode="all-banks"}', "did you mean 'all-bank'"),
    ('pim-map{target-config="systolic-16x16"}', "has no pim-bank-unit compute unit"),
])
def test_option_errors(pipeline: str, message: str) -> None:
    with pytest.raises(LoomError, match=message):
        mapped(WIDE.replace("ROWS", "1"), pipeline)


def test_description_keys_are_read() -> None:
    config = pim_config(load_target("pim-hbm"))
    assert (config.channels, config.banks, config.units, config.banks_per_unit) == (16, 16, 8, 2)
    assert config.trcd == 17 and config.tccd_l == 4 and config.burst_cycles == 2
    assert config.bus_bytes_per_cycle == 256  # 307 GB/s at 1.2 GHz
    assert not config.overlap
