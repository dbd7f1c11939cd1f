"""The `host` target: a description of the machine Loom runs on.

Cache sizes come from sysfs, the core count from the OS, SIMD width from
LLVM's view of the host CPU features and the clock from /proc/cpuinfo.
What the OS does not report (bandwidths, latencies, DRAM speed) is filled
from the assumptions below, and anything missing (no sysfs in a container,
no "cpu MHz" line on some architectures) falls back to the defaults, so the
host description always exists. docs/targets/descriptions.md lists them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from compiler.targets.description import ComputeUnit, MemoryLevel, TargetDescription
from dialects.nn import DTYPES

CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
CPUINFO = Path("/proc/cpuinfo")

DEFAULT_CLOCK_HZ = 2.5e9
DEFAULT_CACHE_BYTES = {1: 32 << 10, 2: 1 << 20, 3: 8 << 20}
DEFAULT_DRAM_BYTES = 8 << 30
# Bytes per cycle one core can move from each cache level, and load-to-use
# latency in cycles: typical of recent x86 and Arm server cores.
CACHE_BANDWIDTH = {1: 64.0, 2: 32.0, 3: 16.0}
CACHE_LATENCY = {1: 4, 2: 14, 3: 40}
# Roughly one DDR4-3200 channel, and a typical loaded DRAM latency.
DRAM_BYTES_PER_SECOND = 20e9
DRAM_LATENCY_SECONDS = 80e-9


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _sysfs_size(text: str) -> int | None:
    """sysfs writes cache sizes as "32K", "1024K" or "32M"."""
    match = re.fullmatch(r"(\d+)([KMG]?)", text)
    if match is None:
        return None
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)]


def cache_sizes(cache_dir: Path = CACHE_DIR) -> dict[int, int]:
    """Data (or unified) cache size by level, as sysfs reports them for cpu0."""
    sizes: dict[int, int] = {}
    for index in sorted(cache_dir.glob("index*")):
        level, kind, size = (_read(index / name) for name in ("level", "type", "size"))
        if level is None or not level.isdigit() or kind not in ("Data", "Unified") or size is None:
            continue
        parsed = _sysfs_size(size)
        if parsed:
            sizes[int(level)] = parsed
    return sizes


def clock_hz(cpuinfo: Path = CPUINFO) -> float:
    match = re.search(r"^cpu MHz\s*:\s*([\d.]+)", _read(cpuinfo) or "", re.MULTILINE)
    return float(match.group(1)) * 1e6 if match else DEFAULT_CLOCK_HZ


def f32_lanes(features: Mapping[str, bool]) -> int:
    if features.get("avx512f"):
        return 16
    if features.get("avx2"):
        return 8
    return 4


def host_features() -> tuple[str, Mapping[str, bool]]:
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name(), dict(llvm.get_host_cpu_features())


def dram_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return DEFAULT_DRAM_BYTES


def host_description(
    cache_dir: Path = CACHE_DIR,
    cpuinfo: Path = CPUINFO,
    cpu: tuple[str, Mapping[str, bool]] | None = None,
    cores: int | None = None,
    memory_bytes: int | None = None,
) -> TargetDescription:
    """Describe this machine; the arguments let tests stand in for it."""
    cpu_name, features = cpu if cpu is not None else host_features()
    clock = clock_hz(cpuinfo)
    lanes = f32_lanes(features)
    fma_pipes = 2 if features.get("fma") else 1
    core = ComputeUnit(
        kind="cpu-core",
        count=cores or os.cpu_count() or 1,
        lanes=lanes,
        array=None,
        ops_per_cycle=float(fma_pipes * lanes),
        dtypes=tuple(DTYPES),
    )
    sizes = cache_sizes(cache_dir) or DEFAULT_CACHE_BYTES
    levels: list[MemoryLevel] = []
    for level in sorted(sizes):
        # Keep the hierarchy strictly growing even if a machine reports a
        # level no larger than the one below it (some VMs do).
        if level in CACHE_BANDWIDTH and (not levels or sizes[level] > levels[-1].capacity_bytes):
            levels.append(MemoryLevel(f"L{level}", sizes[level], CACHE_BANDWIDTH[level], CACHE_LATENCY[level]))
    levels.append(
        MemoryLevel(
            "DRAM",
            max(memory_bytes or dram_bytes(), (levels[-1].capacity_bytes + 1) if levels else 1),
            DRAM_BYTES_PER_SECOND / clock,
            round(DRAM_LATENCY_SECONDS * clock),
        )
    )
    return TargetDescription(
        name="host",
        clock_hz=clock,
        compute=[core],
        memory=levels,
        description=f"this machine ({cpu_name}, {core.count} cores)",
        source="built-in (probed from sysfs, /proc/cpuinfo and LLVM)",
    )
