"""The bank unit's Verilog under Verilator: hand-written traces against the
behavioural banks, a compiled int8 model bit for bit against the simulator
and the interpreter, lint, and `--emit verilog`. Every Verilator run here
shares one build (the hardware parameters of `pim-hbm`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pim_helpers import ROOT, hbm

import compiler
from backends.base import CompileOptions
from backends.pim.commands import ACT, ALL, BCAST, MAC, PRE, RD, RDACC, REF, WR, command
from backends.pim.rtl.design import TOP, UNIT
from backends.pim.rtl.images import (
    UnitImages,
    UnsupportedProgram,
    busy_units,
    channel_trace,
    program_rtl_config,
    rtl_config,
    trace_hex,
    unit_images,
    words_hex,
)
from backends.pim.rtl.run import (
    HARNESS,
    compare,
    run_on_rtl,
    run_unit,
    unit_verilog,
    verilog,
)
from backends.pim.simulator import TRACE
from backends.rtl import verilator
from compiler import interpreter
from compiler.artifact import random_inputs
from compiler.cli import main
from compiler.model import find_model

CONFIG = rtl_config(hbm(), 1)
COLUMN = CONFIG.column_bytes


@pytest.fixture(scope="module")
def build() -> verilator.Build:
    return verilator.build(verilog(CONFIG), HARNESS)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cal") / "cal.npz"
    np.savez(path, x=np.random.default_rng(1).standard_normal((8, 1, 784)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def mlp_int8(calibration):
    return compiler.compile(ROOT / "samples/mlp.loom", target="pim",
                            options=CompileOptions(quantize="int8-per-channel", calibration=str(calibration),
                                                   extra={"pim_mode": "all-bank"}))


def trace(*commands: tuple, spacing: int = 3) -> str:
    """Commands issued `spacing` cycles apart (the unit needs no DRAM timing)."""
    records = np.array([(spacing * i, 0, *c) for i, c in enumerate(commands)], TRACE)
    return trace_hex(records)


def images(commands: str, host_words: np.ndarray, unit: int, banks: str = "") -> UnitImages:
    empty = np.zeros((0, COLUMN), np.uint8)
    return UnitImages(0, unit, commands, words_hex(host_words), banks, empty, empty, empty)


def signed_bytes(word: np.ndarray) -> np.ndarray:
    return word.view(np.int8).astype(np.int32)


def test_commands_on_the_behavioural_banks(build) -> None:
    """WR then RD and MAC on an open row, BCAST to all units and to another one,
    RDACC of every part; checked against products computed here."""
    rng = np.random.default_rng(0)
    written, inputs, other = rng.integers(0, 256, (3, COLUMN), dtype=np.uint8)
    text = trace(command(ACT, 1, 1, 3), command(WR, 1, 1, 3, 5), command(RD, 1, 1, 3, 5),
                 command(BCAST, ALL, reg=2), command(BCAST, 2, reg=0),
                 command(MAC, 1, 1, 3, 5, reg=2, acc=4, first=1), command(MAC, 1, 1, 3, 5, reg=2, acc=4),
                 *[command(RDACC, 1, acc=4, part=p) for p in range(CONFIG.parts)],
                 command(PRE, 1, ALL), command(REF))
    host = np.stack([written, inputs, other])
    mine = run_unit(build, CONFIG, images(text, host, unit=1), 1000)
    accumulator = 2 * signed_bytes(written) * signed_bytes(inputs)
    assert not mine.error
    np.testing.assert_array_equal(mine.returned[0], written)
    np.testing.assert_array_equal(mine.returned[1:].view("<i4").reshape(-1), accumulator)
    np.testing.assert_array_equal(mine.accumulators[4].view("<i4"), accumulator)
    np.testing.assert_array_equal(mine.registers[2], inputs)
    assert not mine.registers[0].any() and not mine.accumulators[:4].any()

    neighbour = run_unit(build, CONFIG, images(text, host, unit=2), 1000)
    assert not neighbour.error and len(neighbour.returned) == 0
    np.testing.assert_array_equal(neighbour.registers[0], other)  # its own BCAST, after the broadcast one
    np.testing.assert_array_equal(neighbour.registers[2], inputs)
    assert not neighbour.accumulators.any()


@pytest.mark.parametrize("case", ["act-open-bank", "mac-closed-bank", "mac-other-row", "ref-open-bank",
                                  "reserved-bits", "acc-out-of-range"])
def test_protocol_errors_raise_error(build, case: str) -> None:
    opened = command(ACT, 0, 0, 2)
    commands = {
        "act-open-bank": [opened, command(ACT, ALL, 0, 4)],
        "mac-closed-bank": [opened, command(MAC, 0, 1, 2, 0, first=1)],
        "mac-other-row": [opened, command(MAC, 0, 0, 3, 0, first=1)],
        "ref-open-bank": [opened, command(REF)],
        "reserved-bits": [command(ACT, 0, 0, 2)],  # with bit 63 set below
        "acc-out-of-range": [command(RDACC, 0, acc=CONFIG.accs)],
    }[case]
    text = trace(*commands)
    if case == "reserved-bits":  # set bit 63 of the word
        lines = text.splitlines()
        lines[0] = lines[0][:8] + "8" + lines[0][9:]
        text = "\n".join(lines) + "\n"
    run = run_unit(build, CONFIG, images(text, np.zeros((1, COLUMN), np.uint8), unit=0), 1000)
    assert run.error


def test_compiled_int8_model_matches_simulator_and_interpreter(mlp_int8) -> None:
    inputs = random_inputs(mlp_int8.signature, 3)
    check = run_on_rtl(mlp_int8, inputs)
    assert check.mismatches == []
    assert check.units == hbm().channels * hbm().units  # all-bank: every unit works
    reference = interpreter.run_model(find_model(mlp_int8.reference_module, None), dict(inputs))
    for name, want in reference.items():
        np.testing.assert_array_equal(check.outputs[name], want)
    # Commands are issued at their scheduled cycles: the last one by the end of the run.
    last = max(int(channel_trace(mlp_int8.stack, c)["cycle"].max()) for c in range(hbm().channels))
    assert last < check.ticks <= last + 3


def test_a_wrong_bank_row_or_read_out_is_caught(mlp_int8, build) -> None:
    mlp_int8.run(**random_inputs(mlp_int8.signature, 0))
    stack = mlp_int8.stack
    config = program_rtl_config(mlp_int8.program, stack)
    assert config == CONFIG
    good = unit_images(stack, config, 3, busy_units(stack, 3)[0])
    ones = int("01" * COLUMN, 16)
    lines = [line if line.startswith("@") else f"{int(line, 16) ^ ones:064x}"  # every weight off by one
             for line in good.banks.splitlines()]
    bad = UnitImages(**{**good.__dict__, "banks": "\n".join(lines) + "\n"})
    assert compare(good, run_unit(build, config, good, 100_000)) == []
    problems = compare(bad, run_unit(build, config, bad, 100_000))
    assert any("accumulators" in p for p in problems) and any("returned" in p for p in problems)

    # The outputs of run_on_rtl are computed from the words it hands back.
    inputs = random_inputs(mlp_int8.signature, 0)
    want = mlp_int8.run(**inputs)
    returned = {(c, u): iter([w for unit, w in stack.bus[c].returned if unit == u])
                for c in range(hbm().channels) for u in busy_units(stack, c)}
    returned[3, good.unit] = iter([w ^ np.uint8(0x10) for unit, w in stack.bus[3].returned if unit == good.unit])
    assert not np.array_equal(mlp_int8.run_with_returned(inputs, returned)["y"], want["y"])


def test_lint_clean() -> None:
    verilator.lint(verilog(CONFIG), TOP)
    verilator.lint(unit_verilog(CONFIG), UNIT)


def test_emit_verilog(capsys, tmp_path, calibration, build) -> None:
    out = tmp_path / "rtl"
    code = main(["compile", str(ROOT / "samples/mlp.loom"), "--target", "pim", "--quantize", "int8-per-channel",
                 "--calibration", str(calibration), "--emit", "verilog", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "filelist.f").read_text().split()[-1] == f"{TOP}.sv"
    assert (out / "testbench.cpp").read_text() == HARNESS.source()
    readme = (out / "README.md").read_text()
    assert f"--top-module {TOP}" in readme
    unit = out / "ch05_u6"
    limit, first, count = (int(a) for a in readme.split(f"../obj_dir/V{TOP} ")[1].split(" >")[0].split())
    result = build.run(unit, limit, first, count)
    assert result.done and not result.scalars["error"]
    expected = (unit / "expected.hex").read_text().split()
    words = np.array(result.words[:len(expected) * 8], "<u4").view(np.uint8).reshape(-1, COLUMN)
    assert [row[::-1].tobytes().hex() for row in words] == expected and expected


def test_float_models_are_refused(capsys, tmp_path) -> None:
    code = main(["compile", str(ROOT / "samples/mlp.loom"), "--target", "pim", "--emit", "verilog",
                 "-o", str(tmp_path / "rtl")])
    assert code == 1
    assert "i8 x i8 -> i32 lanes; this model puts f32 products on the units" in capsys.readouterr().err
    with pytest.raises(UnsupportedProgram):
        run_on_rtl(compiler.compile(ROOT / "samples/mlp.loom", target="pim"), {})
