"""The LUTs around the operators, priced from the structure the RTL builds (backends/fpga/fabric.py).

int8 mlp at reuse factor 2048: fc1 runs 32 lanes along its 128 outputs, so
its accumulator is 32 cyclic banks of 4 words x 32 bits, written by the
fill and the matmul and read by the matmul and by the one-lane requantize.
"""

from __future__ import annotations

import pytest
from fpga_models import calibration, compile_sample, options

from backends.fpga.design import buffer_root
from backends.fpga.fabric import access_shape, buffers_of, fabric_luts


@pytest.fixture(scope="module")
def fc1(tmp_path_factory):
    artifact = compile_sample("mlp", options(2048, "int8", calibration("mlp", tmp_path_factory.getbasetemp()),
                                             mode="dataflow"))
    engine = {e.name: e for e in artifact.design.engines}["w1"]
    return artifact, engine.nests  # fill, matmul, requantize


def test_accumulator_banks_are_lut_ram_not_ebr(fc1) -> None:
    artifact, (fill, matmul, requantize) = fc1
    device = artifact.device
    accumulator = buffer_root(matmul.op.outputs[0])
    buffer = buffers_of([fill, matmul, requantize], buffer_root)[accumulator]
    assert (buffer.banks, buffer.depth, buffer.width) == (32, 4, 32)
    fabric = fabric_luts([fill, matmul, requantize], device, buffer_root)
    # per bank and read port (the matmul's accumulator, the requantize): eight 16x4 blocks
    assert fabric.storage[accumulator] == 32 * 2 * 8 * device.cost("lut_ram").luts
    assert artifact.design.engine_brams("w1") == 32 * 2 + 1  # w1's 32 banks of two blocks, b1; no accumulator


def test_moving_bank_pays_for_a_crossbar_static_lanes_do_not(fc1) -> None:
    artifact, (fill, matmul, requantize) = fc1
    device = artifact.device
    buffers = buffers_of([fill, matmul, requantize], buffer_root)
    accumulator = buffers[buffer_root(matmul.op.outputs[0])]
    one_lane = access_shape(requantize, 0, accumulator)
    lanes = access_shape(matmul, 2, accumulator)
    assert one_lane.moving and len(one_lane.banks_hit) == 32 and one_lane.positions == 1
    assert not lanes.moving and len(lanes.banks_hit) == 32 and lanes.rows == 1  # 32 lanes, one row walker
    per_nest = fabric_luts([fill, matmul, requantize], device, buffer_root).per_nest
    crossbar = device.cost("mux", bits=32 * 32).luts  # the requantize's word: a 32:1 mux of 32 bits
    assert per_nest[requantize.op] >= crossbar > per_nest[matmul.op]
