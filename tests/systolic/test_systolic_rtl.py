"""The accelerator's Verilog under Verilator: bit-exact with the simulator and
the interpreter, cycle counts as the simulator predicts, lint-clean, emitted
by `loom compile --emit verilog`."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from systolic_models import compiled_int8, int8_inputs, options

import compiler
from backends.rtl import synth, verilator
from backends.rtl.banked import BankLayout, banks_for
from backends.systolic import isa
from backends.systolic.codegen import Compiled, Place
from backends.systolic.rtl.design import TOP, RtlConfig
from backends.systolic.rtl.program import UnsupportedProgram, check_program, rtl_config
from backends.systolic.rtl.run import run_rtl, verilog
from backends.systolic.simulator import Simulator
from compiler.cli import main
from compiler.interpreter import run_model
from compiler.model import find_model
from dialects.systolic import ArrayConfig, Im2colView

GEMM = """
model gemm {
  input x: i8[20, 24]
  param w: i8[24, 12]
  param b: i8[12]
  y = relu(x @ w + b)
  output y
}
"""

# lenet's first convolution as a one-layer int8 model.
CONV1 = """
model conv1 {
  input x: i8[1, 1, 28, 28]
  param w: i8[6, 1, 5, 5]
  param b: i8[6]
  y = relu(conv2d(x, w, b, padding=2))
  output y
}
"""

MODELS = {"gemm": (GEMM, {"w": (24, 12), "b": (12,)}), "conv1": (CONV1, {"w": (6, 1, 5, 5), "b": (6,)})}


def random_int8(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.integers(-128, 128, shape).astype(np.int8) for name, shape in shapes.items()}


@functools.cache
def compiled(model: str, array: str):
    source, shapes = MODELS[model]
    return compiler.compile(source, target="systolic", weights=random_int8(shapes, 7), options=options(array, "ws"))


@pytest.mark.parametrize("array", ["4x4", "8x8"])
@pytest.mark.parametrize("model", ["gemm", "conv1"])
def test_rtl_is_bit_exact_and_takes_the_predicted_cycles(model: str, array: str) -> None:
    artifact = compiled(model, array)
    inputs = random_int8({spec.name: spec.shape for spec in artifact.signature.inputs}, 1)
    simulated = artifact.run(**inputs)
    reference = run_model(find_model(artifact.reference_module, None), inputs)
    rtl = run_rtl(artifact.compiled, inputs)
    for name, want in reference.items():
        np.testing.assert_array_equal(rtl.outputs[name], want)
        np.testing.assert_array_equal(simulated[name], want)
    predicted = artifact.report["cycles"]
    assert rtl.cycles == predicted


def test_strided_dilated_grouped_convolutions_over_two_images() -> None:
    """The shared int8 model: a strided, padded, biased convolution with relu,
    a dilated depthwise one and a matmul, on a batch of two."""
    artifact = compiled_int8("8x8", "ws")
    inputs = int8_inputs(0)
    result = compiler.check(artifact, inputs)
    assert result.max_abs_err == 0
    rtl = run_rtl(artifact.compiled, inputs)
    for name, want in result.reference.items():
        np.testing.assert_array_equal(rtl.outputs[name], want)
    assert rtl.cycles == artifact.report["cycles"]


def run_both(text: str, dram: np.ndarray) -> None:
    """Run a hand-written program on the simulator and the RTL (4x4, the models'
    description); their DRAM and cycle counts must agree."""
    config = ArrayConfig(4, 4, "ws", 1 << 16, 1 << 16, 1 << 16, 1 << 32, 16.0, 100, 1e9, ("i8",))
    program = isa.assemble(text)
    whole = Place(0, (dram.size,), np.dtype(np.uint8))
    rtl = run_rtl(Compiled(config, program, dram, dram.size, {}, {"dram": whole}), {})
    expected = dram.copy()
    result = Simulator(config).run(program, expected)
    np.testing.assert_array_equal(rtl.outputs["dram"], expected)
    assert rtl.cycles == result.total.cycles


def test_array_holds_until_it_knows_where_results_go() -> None:
    """Drains 5 and 2 instructions after their streams: the first holds the
    array for 5 - (R - 1) cycles, in the simulator as in the RTL; the second
    fold accumulates into a drain view set between stream and drain; the
    output unit copies the sums to where the DMA engine stores them from."""
    rng = np.random.default_rng(11)
    dram = np.zeros(1024, np.uint8)
    dram[0:32] = rng.integers(0, 256, 32)  # two 4x4 weight tiles
    dram[64:64 + 36] = rng.integers(0, 256, 36)  # 9 rows of 4 inputs
    run_both("""
        config rows=4 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32
        dma.load tag=0 spad=filter spad_addr=0 dram_addr=0 rows=1 row_bytes=32 dram_stride=32 spad_stride=32
        dma.load tag=1 spad=ifmap spad_addr=0 dram_addr=64 rows=9 row_bytes=4 dram_stride=4 spad_stride=8
        wait tag=0
        wait tag=1
        view slot=0 spad=filter dtype=i8 offset=0 rows=4 cols=4 row_stride=4 col_stride=1
        preload
        view slot=1 spad=ifmap dtype=i8 offset=0 rows=9 cols=4 row_stride=8 col_stride=1
        stream top=0
        nop
        layer id=0
        view slot=3 spad=ofmap dtype=i32 offset=0 rows=9 cols=4 row_stride=4 col_stride=1
        nop
        drain accumulate=0
        view slot=0 spad=filter dtype=i8 offset=16 rows=3 cols=4 row_stride=4 col_stride=1
        preload
        view slot=1 spad=ifmap dtype=i8 offset=1 rows=9 cols=3 row_stride=8 col_stride=1
        stream top=0
        view slot=3 spad=ofmap dtype=i32 offset=0 rows=9 cols=4 row_stride=4 col_stride=1
        drain accumulate=1
        view slot=4 spad=ofmap dtype=i32 offset=0 rows=9 cols=4 row_stride=4 col_stride=1
        view slot=6 spad=ofmap dtype=i32 offset=256 rows=9 cols=4 row_stride=4 col_stride=1
        post tag=3 bias=0 relu=0 mode=none out_dtype=i32 multiplier=0 shift=0 zero_point=0 per_channel=0
        wait tag=3
        dma.store tag=2 spad=ofmap spad_addr=256 dram_addr=256 rows=1 row_bytes=144 dram_stride=0 spad_stride=0
        wait tag=2
        halt
    """, dram)


def test_output_unit_modes_match_the_simulator() -> None:
    """Requantization (rounding, saturation, large multipliers), relu at the
    zero point, wrapping, i32 outputs and i32 bias, on a hand-written program."""
    rng = np.random.default_rng(5)
    acc = rng.integers(-(1 << 31), 1 << 31, (3, 4), dtype=np.int64).astype(np.int32)
    acc[0, :2] = [-300, 30]
    bias = np.array([10, -20, 1 << 30, -40], np.int32)
    dram = np.zeros(512, np.uint8)
    dram[0:48] = acc.view(np.uint8).reshape(-1)
    dram[64:80] = bias.view(np.uint8)
    posts = [("requant", "i8", 1, 3, 2, -5), ("requant", "i8", 0, 1518500250, 33, 3),
             ("requant", "i32", 1, 1 << 31, 31, 7), ("none", "i32", 0, 0, 0, 0), ("wrap", "i8", 1, 0, 0, 0)]
    lines = ["config rows=4 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32",
             "dma.load tag=0 spad=ofmap spad_addr=0 dram_addr=0 rows=3 row_bytes=16 dram_stride=16 spad_stride=20",
             "dma.load tag=1 spad=filter spad_addr=0 dram_addr=64 rows=1 row_bytes=16 dram_stride=16 spad_stride=16",
             "wait tag=0", "wait tag=1",
             "view slot=4 spad=ofmap dtype=i32 offset=0 rows=3 cols=4 row_stride=5 col_stride=1",
             "view slot=5 spad=filter dtype=i32 offset=0 rows=1 cols=4 row_stride=0 col_stride=1"]
    for index, (mode, dtype, relu, multiplier, shift, zero_point) in enumerate(posts):
        offset = 64 + 64 * index
        size = 4 if dtype == "i32" else 1
        lines += [f"view slot=6 spad=ofmap dtype={dtype} offset={offset} rows=3 cols=4 row_stride=1 col_stride=3",
                  (f"post tag={2 + index} bias={int(index != 1)} relu={relu} mode={mode} out_dtype={dtype} "
                   f"multiplier={multiplier} shift={shift} zero_point={zero_point} per_channel=0"),
                  f"wait tag={2 + index}",
                  (f"dma.store tag={10 + index} spad=ofmap spad_addr={offset} dram_addr={128 + 64 * index} "
                   f"rows=1 row_bytes={12 * size} dram_stride=0 spad_stride=0")]
    lines += [f"wait tag={10 + index}" for index in range(len(posts))] + ["halt"]
    run_both("\n".join(lines), dram)


def test_generated_verilog_is_lint_clean() -> None:
    for array in ("4x4", "8x8"):
        verilator.lint(verilog(rtl_config(compiled("gemm", array).compiled)), TOP)


def test_yosys_elaborates_the_design_without_structural_problems() -> None:
    """hierarchy, proc and check -assert (no multiple drivers, no combinational loops)."""
    synth.check(verilog(RtlConfig(4, 4, (256, 256, 512), 256, 32, 4, 100)), TOP)


def test_the_design_has_no_dividers() -> None:
    """An im2col view carries its start pixel and window element, so nothing divides."""
    text = verilog(RtlConfig(4, 4, (256, 256, 512), 256, 32, 4, 100))[f"{TOP}.sv"]
    assert " / " not in text and " % " not in text


def test_im2col_start_is_the_divided_pixel_and_window_element() -> None:
    view = Im2colView(rows=4, cols=4, offset=0, pixel0=47, k0=38, out_w=10, kernel_h=3, kernel_w=4, stride_h=1,
                      stride_w=1, dilation_h=1, dilation_w=1, row0=0, col0=0, band_h=12, band_w=12, channel_stride=144)
    assert view.start() == {"oh0": 4, "ow0": 7, "c0": 3, "kh0": 0, "kw0": 2}  # 38 = (3 * 3 + 0) * 4 + 2


def test_programs_outside_the_rtl_are_refused() -> None:
    residual = GEMM.replace("input x: i8[20, 24]", "input x: i8[20, 24]\n  input r: i8[20, 12]").replace(
        "x @ w + b", "x @ w + r")
    on_host = compiler.compile(residual, target="systolic", weights=random_int8(MODELS["gemm"][1], 0),
                               options=options("4x4", "ws"))
    with pytest.raises(UnsupportedProgram, match="host ops"):
        check_program(on_host.compiled)
    f32 = compiler.compile(GEMM.replace("i8", "f32"), target="systolic",
                           weights={k: v.astype(np.float32) for k, v in random_int8(MODELS["gemm"][1], 0).items()},
                           options=options("4x4", "ws"))
    with pytest.raises(UnsupportedProgram, match="i8 x i8 -> i32"):
        check_program(f32.compiled)
    source, shapes = MODELS["gemm"]
    output_stationary = compiler.compile(source, target="systolic", weights=random_int8(shapes, 0),
                                         options=options("4x4", "os"))
    with pytest.raises(UnsupportedProgram, match="weight-stationary"):
        check_program(output_stationary.compiled)


def test_compile_emits_verilog_with_program_testbench_and_readme(capsys, tmp_path) -> None:
    source = tmp_path / "gemm.loom"
    source.write_text(GEMM)
    weights = tmp_path / "w.npz"
    np.savez(weights, **random_int8(MODELS["gemm"][1], 7))
    out = tmp_path / "rtl"
    code = main(["compile", str(source), "--weights", str(weights), "--target", "systolic", "--array", "4x4",
                 "--emit", "verilog", "-o", str(out)])
    _, err = capsys.readouterr()
    assert code == 0, err
    names = {path.name for path in out.iterdir()}
    assert {f"{TOP}.sv", "filelist.f", "program.hex", "dram_b0.hex", "testbench.cpp", "layout.json",
            "README.md"} <= names
    files = {name: (out / name).read_text() for name in (out / "filelist.f").read_text().split()}
    verilator.lint(files, TOP)
    program = isa.from_binary(isa.to_binary(compiled("gemm", "4x4").compiled.program))
    words = (out / "program.hex").read_text().split()
    assert [int(w, 16) for w in words[:len(program)]] == [int.from_bytes(isa.encode(i), "little") for i in program]
    layout = json.loads((out / "layout.json").read_text())
    assert layout["array"] == [4, 4] and set(layout["outputs"]) == {"y"}
    assert "verilator --cc --exe --build" in (out / "README.md").read_text()


def test_programs_the_memories_cannot_serve_are_refused() -> None:
    """Each client moves a run per cycle from block RAM: two lanes in one bank at
    different rows, a store of accumulators (which live apart from the output
    unit's results), or a store that does not wait for the post whose results
    are still in the output unit's pipeline, are named rather than run wrongly."""
    config = ArrayConfig(4, 4, "ws", 1 << 16, 1 << 16, 1 << 16, 1 << 32, 16.0, 100, 1e9, ("i8",))

    def check(text: str) -> None:
        check_program(Compiled(config, isa.assemble("config rows=4 cols=4 dataflow=ws in_dtype=i8 acc_dtype=i32\n"
                                                    + text + "\nhalt"), np.zeros(0, np.uint8), 1024, {}, {}))

    transposed_post = """
        view slot=4 spad=ofmap dtype=i32 offset=0 rows=8 cols=4 row_stride={pitch} col_stride=1
        view slot=6 spad=ofmap dtype=i8 offset=4096 rows=8 cols=4 row_stride=1 col_stride=8
        post tag=0 bias=0 relu=0 mode=wrap out_dtype=i8 multiplier=0 shift=0 zero_point=0 per_channel=0
        wait tag=0"""
    check(transposed_post.format(pitch=5))  # a column of accumulators five words apart: four banks
    with pytest.raises(UnsupportedProgram, match="two of them in one bank"):
        check(transposed_post.format(pitch=4))
    store = "dma.store tag=1 spad=ofmap spad_addr=4096 dram_addr=0 rows=1 row_bytes=32 dram_stride=0 spad_stride=0"
    check(transposed_post.format(pitch=5) + "\n" + store)
    with pytest.raises(UnsupportedProgram, match="before the post with tag 0 was waited for"):
        check(transposed_post.format(pitch=5).replace("wait tag=0", store))
    with pytest.raises(UnsupportedProgram, match="stores what the output unit wrote"):
        check("""
            dma.load tag=0 spad=ofmap spad_addr=0 dram_addr=0 rows=1 row_bytes=64 dram_stride=0 spad_stride=0
            wait tag=0
            dma.store tag=1 spad=ofmap spad_addr=0 dram_addr=0 rows=1 row_bytes=64 dram_stride=0 spad_stride=0""")
    with pytest.raises(UnsupportedProgram, match="stores from the ofmap"):
        check("dma.store tag=1 spad=ifmap spad_addr=0 dram_addr=0 rows=1 row_bytes=4 dram_stride=0 spad_stride=0")


def test_banked_memory_spreads_runs_over_banks() -> None:
    """A run of n bytes at any address touches ceil((n + 3) / 4) words, one per bank."""
    assert banks_for(4) == 2 and banks_for(16) == 8 and banks_for(1, words=8) == 8 and banks_for(5) == 2
    layout = BankLayout("dram", 64, 4)
    data = np.arange(64, dtype=np.uint8)
    images = layout.image(data)
    assert list(images) == [f"dram_b{bank}.hex" for bank in range(4)]
    # Word w (bytes 4w..4w+3, little-endian) is line w // 4 of bank w % 4.
    assert images["dram_b1.hex"].split()[1] == f"{int.from_bytes(bytes(data[20:24]), 'little'):08x}"
