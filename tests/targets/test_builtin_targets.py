"""Built-in descriptions (host probing included), the loader and its cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler.diagnostics import LoomError
from compiler.targets import builtin_targets, describe, format_bytes, from_dict, load_target
from compiler.targets.host import DEFAULT_CACHE_BYTES, DEFAULT_CLOCK_HZ, host_description

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "targets"


@pytest.mark.parametrize("name", builtin_targets())
def test_builtins_load_validate_and_describe(name: str) -> None:
    target = load_target(name)
    assert target.name == name
    assert from_dict(target.to_dict(), target.source) == target
    sizes = [level.capacity_bytes for level in target.memory]
    assert sizes == sorted(set(sizes))
    summary = describe(target)
    assert summary.startswith(f"target {name}")
    for level in target.memory:
        assert level.name in summary and format_bytes(level.capacity_bytes) in summary


def test_sample_descriptions_are_builtins_named_after_their_files() -> None:
    names = sorted(path.stem for path in SAMPLES.glob("*.toml"))
    assert {"systolic-16x16", "pim-hbm", "fpga-ecp5"} <= set(names)
    assert builtin_targets() == ["host", *names]
    for name in names:
        assert load_target(str(SAMPLES / f"{name}.toml")).name == name


def test_sample_figures_are_consistent_with_their_params() -> None:
    systolic = load_target("systolic-16x16")
    assert systolic.compute[0].macs_per_cycle == 16 * 16
    assert sum(systolic.params["sram"].values()) == systolic.level("sram").capacity_bytes

    pim = load_target("pim-hbm")
    p = pim.params
    units = p["channels"] * p["pseudo_channels_per_channel"] * p["units_per_pseudo_channel"]
    assert pim.compute[0].count == units
    assert 2 * pim.peak_macs_per_second("f16") == pytest.approx(1.2e12, rel=0.05)  # 1.2 TFLOPS
    assert pim.level("hbm").banks == p["channels"] * p["pseudo_channels_per_channel"] * p["banks_per_pseudo_channel"]

    fpga = load_target("fpga-ecp5")
    assert fpga.compute[0].count == fpga.params["dsp_multipliers_18x18"]
    assert fpga.level("ebr").banks == fpga.params["ebr_blocks"]
    assert fpga.level("ebr").capacity_bytes == fpga.params["ebr_blocks"] * 2048


def test_unknown_name_lists_builtins_and_suggests() -> None:
    with pytest.raises(LoomError) as info:
        load_target("systolic-16x8")
    message = info.value.render()
    assert "unknown target description 'systolic-16x8'" in message
    assert all(name in message for name in builtin_targets())
    assert "did you mean 'systolic-16x16'?" in message


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(LoomError, match="no such target description file"):
        load_target(str(tmp_path / "absent.toml"))


def test_cache_returns_the_same_object_until_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    text = (SAMPLES / "fpga-ecp5.toml").read_text()
    path.write_text(text)
    first = load_target(str(path))
    assert load_target(str(path)) is first
    path.write_text(text.replace('clock_mhz = 100', 'clock_mhz = 125'))
    second = load_target(str(path))
    assert second.clock_hz == 125e6 and first.clock_hz == 100e6
    assert load_target("host") is load_target("host")


def test_scratchpad_and_level_lookup() -> None:
    target = load_target("pim-hbm")
    assert target.scratchpad().name == "row_buffer"
    with pytest.raises(LoomError, match="has no memory level 'L9' \\(levels: grf, row_buffer, hbm\\)"):
        target.level("L9")
    with pytest.raises(LoomError, match="no compute unit for dtype 'f32'"):
        target.vector_lanes("f32")


# --------------------------------------------------------------------------
# host
# --------------------------------------------------------------------------


def fake_cache(root: Path, entries: list[tuple[str, str, str]]) -> Path:
    for index, (level, kind, size) in enumerate(entries):
        directory = root / f"index{index}"
        directory.mkdir(parents=True)
        (directory / "level").write_text(level + "\n")
        (directory / "type").write_text(kind + "\n")
        (directory / "size").write_text(size + "\n")
    return root


def test_host_reads_sysfs_cpuinfo_and_features(tmp_path: Path) -> None:
    cache = fake_cache(
        tmp_path / "cache",
        [("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "2048K"), ("3", "Unified", "64M")],
    )
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 3000.000\nprocessor\t: 1\ncpu MHz\t\t: 1200.000\n")
    host = host_description(cache, cpuinfo, ("testcpu", {"avx2": True, "fma": True}), cores=6, memory_bytes=16 << 30)
    assert [(level.name, level.capacity_bytes) for level in host.memory] == [
        ("L1", 48 << 10), ("L2", 2 << 20), ("L3", 64 << 20), ("DRAM", 16 << 30)
    ]  # fmt: skip
    assert host.clock_hz == 3e9
    core = host.compute[0]
    assert (core.kind, core.count, core.lanes, core.ops_per_cycle) == ("cpu-core", 6, 8, 16.0)
    assert host.vector_lanes("i8") == 32
    assert host.level("DRAM").bandwidth_bytes_per_cycle == pytest.approx(20e9 / 3e9)
    assert "testcpu" in host.description


def test_host_falls_back_without_sysfs_or_cpuinfo(tmp_path: Path) -> None:
    host = host_description(tmp_path / "none", tmp_path / "none", ("generic", {}), cores=1, memory_bytes=1 << 30)
    assert [level.capacity_bytes for level in host.memory[:-1]] == list(DEFAULT_CACHE_BYTES.values())
    assert host.clock_hz == DEFAULT_CLOCK_HZ
    assert host.compute[0].lanes == 4 and host.compute[0].ops_per_cycle == 4.0


def test_host_keeps_the_hierarchy_ordered(tmp_path: Path) -> None:
    cache = fake_cache(tmp_path / "cache", [("1", "Data", "32K"), ("2", "Unified", "4096K"), ("3", "Unified", "4096K")])
    host = host_description(cache, tmp_path / "none", ("vm", {"avx512f": True}), cores=2, memory_bytes=1 << 30)
    assert [level.name for level in host.memory] == ["L1", "L2", "DRAM"]
    assert host.vector_lanes("f32") == 16
    from_dict(host.to_dict())  # passes the schema's checks


def test_this_machine() -> None:
    host = load_target("host")
    assert host.memory[-1].name == "DRAM" and host.memory[0].name == "L1"
    assert host.vector_lanes("f32") in (4, 8, 16)
    assert host.compute[0].count >= 1 and host.clock_hz > 0
