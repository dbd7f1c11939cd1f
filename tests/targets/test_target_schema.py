"""Hardware-description TOML: the documented schema parses, and every
malformed file is a LoomError at the right key, line and column."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compiler.diagnostics import LoomError
from compiler.targets import from_dict, parse_description, parse_size
from compiler.targets.schema import KeyLocator

DOC = Path(__file__).resolve().parents[2] / "docs" / "targets" / "descriptions.md"

VALID = """\
name = "tiny"
clock_hz = 1e9

[[compute]]
kind = "vector-unit"
lanes = 8
dtypes = ["f32", "i8"]

[[memory]]
name = "spm"
capacity_bytes = "64KiB"
bandwidth_bytes_per_cycle = 32
latency_cycles = 2

[[memory]]
name = "DRAM"
capacity_bytes = "1GiB"
bandwidth_bytes_per_cycle = 8
latency_cycles = 100
"""


def doc_example() -> str:
    return re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S).group(1)


def first_line(error: LoomError) -> str:
    return error.render().splitlines()[0]


def test_documented_example_parses_with_every_field() -> None:
    target = parse_description(doc_example(), "doc.toml")
    assert target.name == "edge-npu"
    assert target.clock_hz == 800e6
    array, vector = target.compute
    assert array.kind == "systolic-array" and array.array == (32, 32) and array.count == 2
    assert array.macs_per_cycle == 2048
    assert vector.lanes == 16 and vector.ops_per_cycle == 16  # default: lanes
    assert vector.vector_lanes("f16") == 32 and vector.vector_lanes("i8") == 0
    assert [level.name for level in target.memory] == ["scratchpad", "DRAM"]
    assert target.level("scratchpad").capacity_bytes == 512 * 1024
    assert target.level("scratchpad").banks == 8 and target.level("DRAM").banks == 1
    assert target.scratchpad().name == "scratchpad" and target.offchip.name == "DRAM"
    assert target.energy_pj["mac_i8"] == pytest.approx(0.23)
    assert target.params == {"dataflow": "ws", "sram": {"ifmap_bytes": 131072}}
    assert target.peak_macs_per_second("i8") == pytest.approx(800e6 * 2048)
    assert target.peak_macs_per_second("f32") == pytest.approx(800e6 * 16)


def test_defaults_and_to_dict_round_trip() -> None:
    target = parse_description(VALID, "tiny.toml")
    unit = target.compute[0]
    assert (unit.count, unit.array, unit.ops_per_cycle) == (1, None, 8.0)
    assert target.vector_lanes("i8") == 32 and target.vector_lanes("f32") == 8
    assert target.energy_pj == {} and target.params == {}
    assert from_dict(target.to_dict(), "tiny.toml") == target


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096", 4096),
        ("32KiB", 32 << 10),
        ("1MiB", 1 << 20),
        ("16GiB", 16 << 30),
        ("1.5MiB", 3 << 19),
        ("64kB", 64000),
        ("2 MB", 2_000_000),
        ("100B", 100),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def with_line(index: int, replacement: str | None) -> str:
    """VALID with line `index` (0-based) replaced, or removed when None."""
    out = VALID.splitlines()
    if replacement is None:
        del out[index]
    else:
        out[index] = replacement
    return "\n".join(out) + "\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            with_line(10, 'capacity_bytes = "-3"'),
            'bad.toml:11:1: error: memory[0].capacity_bytes must be a positive size, got "-3"',
        ),
        (
            with_line(16, "capacity_bytes = 0"),
            "bad.toml:17:1: error: memory[1].capacity_bytes must be a positive size, got 0",
        ),
        (
            with_line(16, 'capacity_bytes = "32KiB"'),
            "bad.toml:17:1: error: memory[1].capacity_bytes (32 KiB) must be larger than"
            " memory[0].capacity_bytes (64 KiB): levels are listed fastest and smallest first",
        ),
        (
            with_line(15, 'name = "spm"'),
            'bad.toml:16:1: error: memory[1].name "spm" is already the name of memory[0]',
        ),
        (
            with_line(12, "latency_cycle = 2"),
            "bad.toml:13:1: error: unknown key 'memory[0].latency_cycle'; did you mean 'latency_cycles'?",
        ),
        (
            with_line(12, None),
            "bad.toml:9:1: error: memory[0] is missing required key 'latency_cycles'",
        ),
        (
            with_line(11, "bandwidth_bytes_per_cycle = -1"),
            "bad.toml:12:1: error: memory[0].bandwidth_bytes_per_cycle must be a positive number, got -1",
        ),
        (
            with_line(4, 'kind = "systolic_array"'),
            "bad.toml:5:1: error: compute[0].kind must be one of cpu-core, vector-unit, systolic-array,"
            ' pim-bank-unit, fpga-fabric, got "systolic_array"; did you mean \'systolic-array\'?',
        ),
        (
            with_line(5, "lanes = 2.5"),
            "bad.toml:6:1: error: compute[0].lanes must be a positive integer, got 2.5",
        ),
        (
            with_line(5, "lanes = true"),
            "bad.toml:6:1: error: compute[0].lanes must be a positive integer, got true",
        ),
        (
            with_line(6, 'dtypes = ["f32", "f64"]'),
            "bad.toml:7:1: error: compute[0].dtypes[1] must be one of f32, f16, bf16, i8, i32,"
            ' got "f64"; did you mean \'f16\'?',
        ),
        (
            with_line(6, "dtypes = []"),
            "bad.toml:7:1: error: compute[0].dtypes must be a non-empty list of dtypes, got []",
        ),
        (
            with_line(6, None),
            "bad.toml:4:1: error: compute[0] is missing required key 'dtypes'",
        ),
        (
            with_line(5, "array = [16]"),
            "bad.toml:6:1: error: compute[0].array must be [rows, cols] of positive integers, got [16]",
        ),
        (
            with_line(1, "clock = 1e9"),
            "bad.toml:2:1: error: unknown key 'clock'; did you mean 'clock_hz'?",
        ),
        (
            with_line(1, None),
            "bad.toml:1:1: error: a target description is missing required key 'clock_hz' (or 'clock_mhz')",
        ),
        (
            with_line(1, "clock_hz = 1e9\nclock_mhz = 1000"),
            "bad.toml:3:1: error: give either clock_hz or clock_mhz, not both",
        ),
        (
            with_line(0, "name = 3"),
            "bad.toml:1:1: error: name must be a non-empty string, got 3",
        ),
        (
            VALID.split("[[memory]]")[0],
            "bad.toml:1:1: error: a target description needs at least one [[memory]] table",
        ),
        (
            VALID + '\n[energy_pj]\nmac_i8 = 0.2\ndram_read_byte = "lots"\n',
            'bad.toml:23:1: error: energy_pj.dram_read_byte must be a non-negative number, got "lots"',
        ),
        (
            with_line(10, "capacity_bytes = "),
            "bad.toml:11:18: error: invalid TOML: Invalid value",
        ),
    ],
)
def test_errors_name_key_path_and_position(text: str, message: str) -> None:
    with pytest.raises(LoomError) as info:
        parse_description(text, "bad.toml")
    assert first_line(info.value) == message


def test_error_shows_the_line_with_a_caret_under_the_key() -> None:
    with pytest.raises(LoomError) as info:
        parse_description(with_line(10, '  capacity_bytes = "-3"'), "targets/bad.toml")
    assert info.value.render().splitlines()[1:] == ['  capacity_bytes = "-3"', "  " + "^" * len("capacity_bytes")]


def test_locator_falls_back_to_the_table_then_to_line_one() -> None:
    text = 'name = "x"\n[[compute]]\nkind = "cpu-core"\n[[memory]]\nname = "a"\n[[memory]]\nname = "b"\n'
    locator = KeyLocator(text)
    assert locator.locate(("memory", 1, "name"))[:2] == (7, 1)
    assert locator.locate(("memory", 1, "banks"))[:2] == (6, 1)  # absent key: its table
    assert locator.locate(("memory", 0))[:2] == (4, 1)
    assert locator.locate(("energy_pj", "mac_i8"))[:2] == (1, 1)  # no such table
    assert locator.locate(("name",))[:2] == (1, 1)


def test_inline_tables_are_located_at_their_key() -> None:
    text = VALID.replace("[[compute]]\nkind = \"vector-unit\"\nlanes = 8\ndtypes = [\"f32\", \"i8\"]\n", "")
    text = 'compute = [{kind = "cpu-core", dtypes = ["f64"]}]\n' + text
    with pytest.raises(LoomError) as info:
        parse_description(text, "inline.toml")
    assert first_line(info.value).startswith("inline.toml:1:1: error: compute[0].dtypes[0] must be one of")
