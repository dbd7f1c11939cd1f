"""What a hardware description says: compute units, a memory hierarchy, energy.

The dataclasses are what passes and backends read (tile sizes from cache
capacities, spill plans from scratchpad sizes, cycle estimates from lanes
and bandwidths). They are frozen and shared through the loader's cache, so
derive variants with `dataclasses.replace` rather than mutating them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compiler.diagnostics import LoomError
from dialects.nn import DTYPES

# Compute-unit kinds the backends and cost models know how to reason about.
COMPUTE_KINDS = ("cpu-core", "vector-unit", "systolic-array", "pim-bank-unit", "fpga-fabric")


def dtype_bits(dtype: str) -> int:
    return DTYPES[dtype].bitwidth  # type: ignore[attr-defined]


_BINARY_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def format_bytes(count: int) -> str:
    """`32768` -> `32 KiB`; exact when the count is a whole number of a unit."""
    for unit, scale in _BINARY_UNITS:
        if count >= scale:
            whole, rest = divmod(count, scale)
            return f"{whole} {unit}" if rest == 0 else f"{count / scale:.1f} {unit}"
    return f"{count} B"


@dataclass(frozen=True)
class ComputeUnit:
    """`count` identical units of one kind.

    `lanes` is the SIMD width in elements of the widest dtype the unit
    handles (narrower dtypes pack proportionally more); `array` is the
    [rows, cols] shape of a systolic array; `ops_per_cycle` counts
    multiply-accumulates one unit completes per cycle.
    """

    kind: str
    count: int
    lanes: int
    array: tuple[int, int] | None
    ops_per_cycle: float
    dtypes: tuple[str, ...]

    def supports(self, dtype: str) -> bool:
        return dtype in self.dtypes

    def vector_lanes(self, dtype: str) -> int:
        """Elements of `dtype` one unit processes side by side; 0 if unsupported."""
        if not self.supports(dtype):
            return 0
        widest = max(dtype_bits(d) for d in self.dtypes)
        return max(1, self.lanes * widest // dtype_bits(dtype))

    @property
    def macs_per_cycle(self) -> float:
        """Multiply-accumulates per cycle of all `count` units together."""
        return self.count * self.ops_per_cycle


@dataclass(frozen=True)
class MemoryLevel:
    """One level of the hierarchy, as one compute unit sees it: a private
    level (a core's L1, a PIM unit's registers) gives its own size and
    bandwidth, a shared level (L3, DRAM) its total. `banks` says into how
    many independently accessible banks that capacity is split."""

    name: str
    capacity_bytes: int
    bandwidth_bytes_per_cycle: float
    latency_cycles: int
    banks: int = 1


@dataclass(frozen=True)
class TargetDescription:
    """A whole target. `memory` runs fastest and smallest first; its last
    level is the off-chip (or backing) memory."""

    name: str
    clock_hz: float
    compute: list[ComputeUnit]
    memory: list[MemoryLevel]
    energy_pj: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""  # the file it came from, or "built-in"

    def level(self, name: str) -> MemoryLevel:
        for level in self.memory:
            if level.name == name:
                return level
        known = ", ".join(level.name for level in self.memory)
        raise LoomError(f"target '{self.name}' has no memory level '{name}' (levels: {known})")

    @property
    def offchip(self) -> MemoryLevel:
        return self.memory[-1]

    def scratchpad(self) -> MemoryLevel:
        """The largest on-chip level: the one spilled to and reloaded from off-chip memory."""
        if len(self.memory) < 2:
            raise LoomError(f"target '{self.name}' has a single memory level, so no on-chip scratchpad")
        return self.memory[-2]

    def vector_lanes(self, dtype: str) -> int:
        """The widest SIMD width any compute unit offers for `dtype`."""
        lanes = max((unit.vector_lanes(dtype) for unit in self.compute), default=0)
        if lanes == 0:
            raise LoomError(f"target '{self.name}' has no compute unit for dtype '{dtype}'")
        return lanes

    def peak_macs_per_second(self, dtype: str | None = None) -> float:
        units = [u for u in self.compute if dtype is None or u.supports(dtype)]
        return self.clock_hz * sum(u.macs_per_cycle for u in units)

    def to_dict(self) -> dict[str, Any]:
        """The description in the TOML schema's shape; `from_dict` reads it back."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["clock_hz"] = self.clock_hz
        out["compute"] = [_unit_dict(unit) for unit in self.compute]
        out["memory"] = [
            {
                "name": level.name,
                "capacity_bytes": level.capacity_bytes,
                "bandwidth_bytes_per_cycle": level.bandwidth_bytes_per_cycle,
                "latency_cycles": level.latency_cycles,
                "banks": level.banks,
            }
            for level in self.memory
        ]
        if self.energy_pj:
            out["energy_pj"] = dict(self.energy_pj)
        if self.params:
            out["params"] = dict(self.params)
        return out


def _unit_dict(unit: ComputeUnit) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": unit.kind, "count": unit.count, "lanes": unit.lanes}
    if unit.array is not None:
        out["array"] = list(unit.array)
    out["ops_per_cycle"] = unit.ops_per_cycle
    out["dtypes"] = list(unit.dtypes)
    return out


def describe(target: TargetDescription) -> str:
    """A human summary: clock, compute with peak rates, the memory hierarchy."""
    lines = [f"target {target.name}" + (f": {target.description}" if target.description else "")]
    if target.source:
        lines.append(f"  from      {target.source}")
    lines.append(f"  clock     {target.clock_hz / 1e6:g} MHz")
    for unit in target.compute:
        shape = f" {unit.array[0]}x{unit.array[1]}" if unit.array else ""
        lanes = f", {unit.lanes} lanes" if unit.lanes > 1 else ""
        peak = target.clock_hz * unit.macs_per_cycle / 1e9
        lines.append(
            f"  compute   {unit.count} x {unit.kind}{shape}{lanes}, {unit.ops_per_cycle:g} MAC/cycle each"
            f" ({peak:g} GMAC/s), dtypes {', '.join(unit.dtypes)}"
        )
    width = max(len(level.name) for level in target.memory)
    for level in target.memory:
        banks = f", {level.banks} banks" if level.banks > 1 else ""
        lines.append(
            f"  memory    {level.name:<{width}}  {format_bytes(level.capacity_bytes):>10}"
            f"  {level.bandwidth_bytes_per_cycle:.4g} B/cycle, {level.latency_cycles}-cycle latency{banks}"
        )
    if target.energy_pj:
        energy = ", ".join(f"{k} {v:g}" for k, v in target.energy_pj.items())
        lines.append(f"  energy    {energy} (pJ)")
    if target.params:
        lines.append(f"  params    {', '.join(target.params)}")
    return "\n".join(lines)
