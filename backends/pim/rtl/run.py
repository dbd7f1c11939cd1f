"""Run PIM programs on the bank unit's Verilog under Verilator and compare
with the command-level simulator.

The Verilog depends only on the hardware parameters (`RtlConfig`), so every
unit of every channel, and every program for the same stack, shares one
export and one Verilator build; a run differs only in its `$readmemh` files.

`run_on_rtl` replays a model's run unit by unit: each (channel, unit) that
some command addresses gets the channel's scheduled trace, the host's words
and its banks' rows, and must end with the simulator's register file and
return the simulator's words, bit for bit. The model is then run once more
with the host receiving the Verilog's words instead of the simulator's, so
its outputs are computed from the RTL's read-outs.
"""

from __future__ import annotations

import functools
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from backends.pim.artifact import PimArtifact
from backends.pim.rtl.design import (
    BANKS_FILE,
    COMMANDS_FILE,
    HOST_WORDS_FILE,
    TOP,
    UNIT_FILE,
    RtlConfig,
    build_sim,
    build_unit,
)
from backends.pim.rtl.images import (
    UnitImages,
    busy_units,
    check_program,
    program_rtl_config,
    unit_images,
)
from backends.rtl import verilator
from backends.rtl.export import export_verilog
from backends.rtl.netlist import design
from compiler.diagnostics import InternalError

HARNESS = verilator.Harness(TOP, scalars=("error", "outputs"), readout_address="dbg_addr", readout_data="dbg_data")


@functools.cache
def verilog(config: RtlConfig) -> dict[str, str]:
    """The unit and its simulation wrapper, as Verilog files."""
    return export_verilog(design(build_unit(config).finish(), build_sim(config).finish()))


@functools.cache
def unit_verilog(config: RtlConfig) -> dict[str, str]:
    """The synthesizable unit alone."""
    return export_verilog(design(build_unit(config).finish()))


@dataclass
class UnitRun:
    """The end state of one unit's simulation."""

    ticks: int
    error: bool
    registers: np.ndarray  # [grf, column_bytes] uint8
    accumulators: np.ndarray  # [accs, lanes * 4] uint8
    returned: np.ndarray  # [words, column_bytes] uint8


def write_images(images: UnitImages, directory: Path) -> None:
    for name, text in ((COMMANDS_FILE, images.commands), (HOST_WORDS_FILE, images.host_words),
                       (BANKS_FILE, images.banks), (UNIT_FILE, f"{images.unit:02x}\n00\n")):
        (directory / name).write_text(text)


def _bytes(words: list[int], per_row: int) -> np.ndarray:
    """32-bit words, lowest first, as rows of `per_row` words in bytes."""
    return np.array(words, "<u4").view(np.uint8).reshape(-1, 4 * per_row)


def run_unit(build: verilator.Build, config: RtlConfig, images: UnitImages, limit: int) -> UnitRun:
    """Simulate one unit on its images and read back its register file and log."""
    with tempfile.TemporaryDirectory(prefix="loom-pim-rtl-") as work:
        write_images(images, Path(work))
        # The register file and the log are read in one pass: a second run would
        # replay the whole trace again.
        count = config.log_base + config.log_depth * config.column_bits // 32
        result = build.run(Path(work), limit, 0, count)
    if not result.done:
        raise InternalError(f"the bank unit did not finish its trace in {limit} cycles "
                            f"(channel {images.channel}, unit {images.unit})")
    words = result.words
    per_column = config.column_bits // 32
    registers = _bytes(words[:config.grf * per_column], per_column)
    acc_per = config.acc_bits // 32
    accumulators = _bytes(words[config.rf_acc_base:config.rf_acc_base + config.accs * acc_per], acc_per)
    log = words[config.log_base:config.log_base + result.scalars["outputs"] * per_column]
    return UnitRun(result.ticks, bool(result.scalars["error"]), registers, accumulators, _bytes(log, per_column))


@dataclass
class RtlCheck:
    """What `run_on_rtl` found: per-unit disagreements (empty when every unit
    matched the simulator bit for bit) and the model's outputs computed from
    the Verilog's read-outs."""

    units: int
    mismatches: list[str] = field(default_factory=list)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    ticks: int = 0


def compare(images: UnitImages, run: UnitRun) -> list[str]:
    """How a unit's Verilog run differs from the simulator's (empty if not at all)."""
    where = f"channel {images.channel} unit {images.unit}"
    problems = []
    if run.error:
        problems.append(f"{where}: the bank model or the unit raised error")
    if not np.array_equal(run.registers, images.registers):
        problems.append(f"{where}: input registers differ")
    if not np.array_equal(run.accumulators, images.accumulators):
        problems.append(f"{where}: accumulators differ")
    if not np.array_equal(run.returned, images.returned):
        problems.append(f"{where}: returned {len(run.returned)} words, the simulator {len(images.returned)}, "
                        f"or their values differ")
    return problems


def cycle_limit(images: UnitImages) -> int:
    last = images.commands.splitlines()[-2] if images.commands.count("\n") > 1 else "0" * 8
    return int(last[:8], 16) + 1000


def run_on_rtl(artifact: PimArtifact, inputs: dict[str, np.ndarray], jobs: int = 2) -> RtlCheck:
    """Run the model on the simulator, then every busy unit on the Verilog; the
    outputs come from a second run whose read-outs are the Verilog's."""
    check_program(artifact.program)
    artifact.run(**inputs)
    stack = artifact.stack
    assert stack is not None
    config = program_rtl_config(artifact.program, stack)
    build = verilator.build(verilog(config), HARNESS)
    images = [unit_images(stack, config, channel, unit) for channel in range(stack.config.channels)
              for unit in busy_units(stack, channel)]
    with ThreadPoolExecutor(jobs) as pool:
        runs = list(pool.map(lambda i: run_unit(build, config, i, cycle_limit(i)), images))
    check = RtlCheck(len(images), ticks=max([r.ticks for r in runs], default=0))
    for image, run in zip(images, runs):
        check.mismatches += compare(image, run)
    returned = {(i.channel, i.unit): iter(r.returned) for i, r in zip(images, runs)}
    check.outputs = artifact.run_with_returned(inputs, returned)
    return check

