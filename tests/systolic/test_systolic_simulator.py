"""The simulator: outputs against the interpreter, cycle counts, memory traffic, the output unit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.lib.stride_tricks import as_strided

import compiler
from backends.systolic import isa
from backends.systolic.simulator import SimulationError, Simulator
from compiler.artifact import random_inputs
from dialects.systolic import ArrayConfig
from systolic_models import (
    compiled_int8,
    compiled_sample,
    fold_cycles,
    int8_inputs,
    int8_weights,
    options,
    small_target,
)

SAMPLE_RUNS = [(s, "16x16", "ws") for s in ("lenet", "mlp", "resblock", "transformer_block", "xor")] + [
    ("lenet", "16x16", "os"), ("lenet", "16x16", "is")] + [
    (s, "8x8", df) for s in ("resblock", "transformer_block") for df in ("os", "is")]


@pytest.mark.parametrize("sample, array, dataflow", SAMPLE_RUNS)
def test_samples_match_the_interpreter(sample: str, array: str, dataflow: str) -> None:
    artifact = compiled_sample(f"{sample}.loom", array, dataflow)
    for seed in (0, 1):
        result = compiler.check(artifact, random_inputs(artifact.signature, seed))
        assert result.max_abs_err <= 1e-5, (sample, dataflow, result.max_abs_err)


@pytest.mark.parametrize("dataflow", ["ws", "os", "is"])
@pytest.mark.parametrize("array", ["8x8", "4x16"])
def test_int8_is_bit_exact_and_counts_scalesim_cycles(array: str, dataflow: str) -> None:
    artifact = compiled_int8(array, dataflow)
    for seed in (0, 1):
        result = compiler.check(artifact, int8_inputs(seed))
        assert result.max_abs_err == 0
    rows, cols = map(int, array.split("x"))
    layers = artifact.report["layers"]
    assert [layer["name"] for layer in layers] == ["h", "d", "f"]
    assert artifact.report["host_ops"] == []
    for layer in layers:
        if layer["name"] == "f":
            expected = fold_cycles(dataflow, rows, cols, layer["m"], layer["k"], layer["n"], layer["groups"])
        else:  # two images: Loom's tiles never straddle images, so each image is a layer of its own
            expected = 2 * fold_cycles(dataflow, rows, cols, layer["m"] // 2, layer["k"], layer["n"], layer["groups"])
        assert layer["compute_cycles"] == expected, layer["name"]
        assert layer["compute_cycles"] == layer["fill_cycles"] + layer["stream_cycles"] + layer["drain_cycles"]
        assert layer["macs"] == layer["m"] * layer["k"] * layer["n"] * layer["groups"]
        assert layer["utilization"] == pytest.approx(layer["macs"] / (layer["compute_cycles"] * rows * cols))
        assert layer["cycles"] >= layer["compute_cycles"]
    report = artifact.report
    assert report["cycles"] >= sum(layer["cycles"] for layer in layers)
    assert report["compute_cycles"] == sum(layer["compute_cycles"] for layer in layers)


def test_report_has_what_the_command_line_promises() -> None:
    artifact = compiled_sample("lenet.loom")
    compiler.check(artifact, random_inputs(artifact.signature, 0))
    report = artifact.report
    for key in ("cycles", "compute_cycles", "utilization", "dram_bytes", "sram_reads", "sram_writes", "max_abs_err",
                "stall_cycles", "dma_overlap_cycles", "sim_macs_per_s"):
        assert key in report, key
    assert report["array"] == "16x16" and report["dataflow"] == "ws"
    assert [h["op"] for h in report["host_ops"]] == ["maxpool2d", "maxpool2d", "reshape"]
    assert [layer["name"] for layer in report["layers"]] == ["conv1_w", "conv2_w", "f1", "f2", "logits"]
    assert report["macs"] == 784 * 25 * 6 + 100 * 150 * 16 + 400 * 120 + 120 * 84 + 84 * 10
    assert report["dram_bytes"] == report["dram_read_bytes"] + report["dram_write_bytes"]
    # Every weight and input byte is read at least once; every output byte written once.
    weights = (25 * 6 + 6 + 150 * 16 + 16 + 400 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10) * 4
    assert report["dram_read_bytes"] >= weights + (784 + 6 * 14 * 14 + 400 + 120 + 84) * 4
    assert report["dram_write_bytes"] == (6 * 784 + 16 * 100 + 120 + 84 + 10) * 4
    assert report["sram_writes"] >= report["dram_read_bytes"]


DENSE = """model dense {
  input x: f32[2, 256]
  param w: f32[256, 64] = normal(0.0, 0.1, seed=1)
  y = x @ w
  output y
}"""


def test_dram_bandwidth_stalls_the_array_but_not_its_compute(tmp_path) -> None:
    results = {}
    for bandwidth in (2, 64):
        target = small_target(tmp_path, 8192, 8192, 65536, bandwidth=bandwidth)
        artifact = compiler.compile(DENSE, target="systolic", options=options(target_config=target))
        compiler.check(artifact, random_inputs(artifact.signature, 0))
        results[bandwidth] = artifact.report
    slow, fast = results[2], results[64]
    assert slow["compute_cycles"] == fast["compute_cycles"]
    assert slow["dram_bytes"] == fast["dram_bytes"]
    assert slow["stall_cycles"] > 10 * fast["stall_cycles"] > 0
    # With the weights streamed tile by tile, transfers run while the array computes.
    assert 0 < fast["dma_overlap_cycles"] <= fast["dma_cycles"]
    assert slow["dma_cycles"] >= slow["dram_bytes"] / 2


CONFIG = ArrayConfig(4, 4, "ws", 4096, 4096, 4096, 1 << 20, 8.0, 10, 1e9, ("i8",))


def _run(text: str, dram: np.ndarray, config: ArrayConfig = CONFIG):
    return Simulator(config).run(isa.assemble(text), dram)


def test_output_unit_requantizes_with_rounding_saturation_and_relu() -> None:
    acc = np.array([[-300, -1, 0, 5], [6, 7, 100000, -100000], [13, 14, 15, 16]], np.int32)
    # With the bias added, x 3/4 gives ties at -217.5, 22.5 and -4.5 (from -290, 30 and -6).
    bias = np.array([10, -20, 30, -40], np.int32)
    dram = np.zeros(512, np.uint8)
    dram[0:48] = acc.view(np.uint8).reshape(-1)
    dram[64:80] = bias.view(np.uint8)
    program = """
        config rows=4 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32
        dma.load tag=0 spad=ofmap spad_addr=0 dram_addr=0 rows=3 row_bytes=16 dram_stride=16 spad_stride=16
        dma.load tag=1 spad=filter spad_addr=0 dram_addr=64 rows=1 row_bytes=16 dram_stride=16 spad_stride=16
        wait tag=0
        wait tag=1
        view slot=4 spad=ofmap dtype=i32 offset=0 rows=3 cols=4 row_stride=4 col_stride=1
        view slot=5 spad=filter dtype=i32 offset=0 rows=1 cols=4 row_stride=0 col_stride=1
        view slot=6 spad=ofmap dtype=i8 offset=64 rows=3 cols=4 row_stride=1 col_stride=3
        post tag=2 bias=1 relu=1 mode=requant out_dtype=i8 multiplier=3 shift=2 zero_point=-5
        wait tag=2
        dma.store tag=3 spad=ofmap spad_addr=64 dram_addr=128 rows=1 row_bytes=12 dram_stride=12 spad_stride=12
        wait tag=3
        halt
    """
    result = _run(program, dram)
    value = acc.astype(np.int64) + bias
    scaled = value * 3 / 4  # rounded half away from zero, as quant.requantize does
    expected = np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) - 5, -128, 127)
    expected = np.maximum(expected, -5).astype(np.int8)
    got = dram[128:140].view(np.int8).reshape(4, 3).T  # written column-major through the output view
    np.testing.assert_array_equal(got, expected)
    total = result.total
    assert total.post_cycles == 4  # the transposed output view is walked a column (3 outputs) per cycle
    assert total.dram_read_bytes == 64 and total.dram_write_bytes == 12
    # Rows of 16, 16 and 12 bytes at 8 bytes per cycle: 2 beats each.
    assert total.dma_cycles == 3 * 2 + 2 + 2


@pytest.mark.parametrize("rows, row_bytes, beats", [(4, 3, 4), (2, 9, 4), (1, 16, 2), (3, 24, 9)])
def test_dma_beats_never_cross_a_row(rows: int, row_bytes: int, beats: int) -> None:
    """At 8 bytes per cycle, every row costs whole beats, however short it is."""
    dram = np.arange(256, dtype=np.uint8)
    strides = "dram_stride=32 spad_stride=32"
    program = f"""
        config rows=4 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32
        dma.load tag=0 spad=ifmap spad_addr=0 dram_addr=5 rows={rows} row_bytes={row_bytes} {strides}
        wait tag=0
        halt
    """
    sim = Simulator(CONFIG)
    total = sim.run(isa.assemble(program), dram).total
    loaded = sim.spads[0][:rows * 32].reshape(rows, 32)[:, :row_bytes]
    np.testing.assert_array_equal(loaded, dram[5:5 + rows * 32].reshape(rows, 32)[:, :row_bytes])
    assert total.dma_cycles == beats
    # Issued at 1, moving from 2, landing 10 cycles of latency after the last beat; the wait
    # passes the cycle after.
    assert total.cycles == 2 + beats + 10 + 1


@pytest.mark.parametrize("row_stride, col_stride, walk", [(6, 1, 5 * 2), (1, 5, 6 * 2), (12, 2, 5 * 2)])
def test_output_unit_walks_the_output_view_a_row_or_a_column_at_a_time(row_stride: int, col_stride: int,
                                                                        walk: int) -> None:
    """A 5x6 post on a 4-column array: 5 rows of two cycles each, unless the output view is
    transposed (row stride 1), which the unit walks as 6 columns of two cycles each."""
    acc = np.arange(-15, 15, dtype=np.int32).reshape(5, 6)
    sim = Simulator(CONFIG)
    sim.spads[2][:acc.nbytes] = acc.view(np.uint8).reshape(-1)
    program = f"""
        config rows=4 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32
        view slot=4 spad=ofmap dtype=i32 offset=0 rows=5 cols=6 row_stride=6 col_stride=1
        view slot=6 spad=ofmap dtype=i32 offset=256 rows=5 cols=6 row_stride={row_stride} col_stride={col_stride}
        post tag=0 bias=0 relu=1 mode=wrap out_dtype=i32 multiplier=0 shift=0 zero_point=0
        post tag=1 bias=0 relu=0 mode=wrap out_dtype=i32 multiplier=0 shift=0 zero_point=0
        wait tag=1
        halt
    """
    total = sim.run(isa.assemble(program), np.zeros(64, np.uint8)).total
    written = as_strided(sim.spads[2][256:].view(np.int32), (5, 6), (row_stride * 4, col_stride * 4))
    np.testing.assert_array_equal(written, acc)
    assert total.post_cycles == 2 * walk
    # The first post, issued at 3, runs from 4; the second starts as soon as the unit is free,
    # at 4 + walk, and its outputs are written a cycle after it ends: its tag completes at
    # 5 + 2 walk, and the wait passes the cycle after.
    assert total.cycles == 6 + 2 * walk


def test_fold_timing_follows_the_dataflow() -> None:
    dram = np.arange(256, dtype=np.uint8).view(np.int8).copy().view(np.uint8)
    program = """
        config rows=4 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32
        dma.load tag=0 spad=filter spad_addr=0 dram_addr=0 rows=1 row_bytes=12 dram_stride=12 spad_stride=12
        dma.load tag=1 spad=ifmap spad_addr=0 dram_addr=64 rows=1 row_bytes=30 dram_stride=30 spad_stride=30
        wait tag=0
        view slot=0 spad=filter dtype=i8 offset=0 rows=3 cols=4 row_stride=4 col_stride=1
        preload
        wait tag=1
        view slot=1 spad=ifmap dtype=i8 offset=0 rows=6 cols=3 row_stride=3 col_stride=1
        stream top=0
        view slot=1 spad=ifmap dtype=i8 offset=18 rows=4 cols=3 row_stride=3 col_stride=1
        stream top=0
        view slot=3 spad=ofmap dtype=i32 offset=0 rows=10 cols=4 row_stride=4 col_stride=1
        drain accumulate=0
        halt
    """
    result = _run(program, dram)
    w = dram[0:12].view(np.int8).reshape(3, 4).astype(np.int64)
    x = dram[64:94].view(np.int8).reshape(10, 3).astype(np.int64)
    sim = Simulator(CONFIG)
    sim.run(isa.assemble(program), dram.copy())
    np.testing.assert_array_equal(sim.spads[2][:160].view(np.int32).reshape(10, 4), x @ w)
    total = result.total
    assert (total.fill_cycles, total.stream_cycles, total.drain_cycles) == (4, 10, 4 + 4 - 2)
    assert total.folds == 1 and total.macs == 10 * 3 * 4
    # One instruction issued per cycle; 8 bytes per cycle, 10 cycles of latency. The weights
    # (12 bytes, issued at 1) move in cycles 2-3 and land at 14; the inputs (30 bytes, behind
    # them) move in 4-7 and land at 18. The wait passes at 14, the view issues at 15, the
    # preload runs 16-19; the inputs' wait passes at 18, the view at 19. The first stream runs
    # from 20 for 6 cycles plus 1: its drain is 4 instructions ahead, one more than the R - 1
    # cycles before results leave the array. The second stream follows at 27 (4 cycles), the
    # drain at 31 (6 cycles): 37.
    assert total.cycles == 37
    assert total.stall_cycles == 17


@pytest.mark.parametrize(
    "program, message",
    [
        ("view slot=1 spad=ifmap dtype=f32 offset=4092 rows=2 cols=2 row_stride=2 col_stride=1\nstream top=0",
         "leaves the ifmap scratchpad"),
        ("dma.load tag=0 spad=filter spad_addr=4090 dram_addr=0 rows=1 row_bytes=16 dram_stride=16 spad_stride=16",
         "reaches byte 4106 of the filter scratchpad"),
        ("wait tag=9", "wait for tag 9, which nothing has issued"),
        ("drain accumulate=0", "drain with nothing streamed"),
        ("config rows=8 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32", "the program is for a 8x4 ws array"),
        ("view slot=0 spad=filter dtype=i8 offset=0 rows=5 cols=4 row_stride=4 col_stride=1\npreload",
         "does not fit the 4x4 array"),
    ],
)
def test_programs_the_hardware_cannot_run_are_reported(program: str, message: str) -> None:
    with pytest.raises(SimulationError, match=message):
        _run(program, np.zeros(256, np.uint8))


def test_im2col_views_pad_with_zeros() -> None:
    sim = Simulator(CONFIG)
    sim.spads[0][:9] = np.arange(1, 10, dtype=np.uint8)  # a 3x3 image, one channel
    sim.views = [None] * 7
    sim.views[1] = isa.make("view.im2col", slot=1, spad=0, dtype=0, offset=0, rows=9, cols=9, oh0=0, ow0=0, c0=0, kh0=0, kw0=0,
                            out_w=3, kernel_h=3, kernel_w=3, stride_h=1, stride_w=1, dilation_h=1, dilation_w=1,
                            row0=1, col0=1, band_h=3, band_w=3, channel_stride=9, transpose=0)
    patches = sim.read(1)
    image = np.pad(np.arange(1, 10).reshape(3, 3), 1)
    expected = np.array([image[r:r + 3, c:c + 3].reshape(-1) for r in range(3) for c in range(3)])
    np.testing.assert_array_equal(patches, expected)


def test_artifact_emits_program_and_dram_image(tmp_path) -> None:
    artifact = compiled_int8("8x8", "ws")
    text = artifact.emit("asm", str(tmp_path / "q.s"))
    binary = artifact.emit("bin", str(tmp_path / "q.bin"))
    dram = artifact.emit("dram", str(tmp_path / "q.dram"))
    assert isa.assemble((tmp_path / "q.s").read_text()) == artifact.compiled.program
    assert isa.from_binary((tmp_path / "q.bin").read_bytes()) == artifact.compiled.program
    assert dram == [str(tmp_path / "q.dram"), str(tmp_path / "q.json")]
    image = (tmp_path / "q.dram").read_bytes()
    layout = json.loads((tmp_path / "q.json").read_text())
    assert set(layout["inputs"]) == {"x", "y"} and set(layout["outputs"]) == {"d", "f"}
    assert layout["inputs"]["x"] == {"address": 0, "shape": [2, 3, 12, 12], "dtype": "int8"}
    assert image == artifact.compiled.image.tobytes() and len(image) <= layout["dram_bytes"]
    assert int8_weights()["fb"].tobytes() in image
    assert text == [str(tmp_path / "q.s")] and binary == [str(tmp_path / "q.bin")]
