"""Design-space exploration: sweep reuse factors and partition caps, keep the Pareto front.

Every point re-runs `hls-directives` and `hls-schedule` on a copy of the
engine-level module, so the figures are exactly those a compile with the
same options reports. A point is dominated when another is no slower and
uses no more DSPs, LUTs or EBR blocks, and is better in at least one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from xdsl.dialects.builtin import ModuleOp

from backends.fpga.design import DesignEstimate, schedule_model
from backends.fpga.device import FpgaDevice
from compiler.context import make_context
from compiler.model import find_model
from dialects import hls
from passes.hls_directives import HlsDirectivesPass, engine_nests


@dataclass(frozen=True)
class DesignPoint:
    reuse_factor: int
    partition: int  # 0: as many banks as the lanes need
    mode: str
    latency: int
    interval: int
    dsp: int
    lut: int
    bram: int
    fits: bool

    def costs(self) -> tuple[int, int, int, int]:
        return self.latency, self.dsp, self.lut, self.bram

    def as_dict(self) -> dict:
        return {"reuse_factor": self.reuse_factor, "partition": self.partition, "mode": self.mode,
                "latency_cycles": self.latency, "interval_cycles": self.interval, "dsp": self.dsp,
                "lut": self.lut, "bram": self.bram, "fits": self.fits}


def apply_design(module: ModuleOp, device: FpgaDevice, reuse_factor: int, partition: int = 0,
                 mode: str = "auto", layers: str = "") -> DesignEstimate:
    """Attach directives for `reuse_factor` to `module` in place, schedule it, and return the estimate."""
    HlsDirectivesPass(reuse_factor=reuse_factor, partition=partition, layers=layers).apply(make_context(), module)
    return schedule_model(find_model(module, None), device, mode)


def reuse_ladder(module: ModuleOp) -> list[int]:
    """Powers of two from 1 to the iteration count of the largest nest."""
    largest = max((n.iterations for e in module.walk() if isinstance(e, hls.EngineOp) for n in engine_nests(e)),
                  default=1)
    ladder, r = [], 1
    while r < largest * 2:
        ladder.append(r)
        r *= 2
    return ladder


def explore(module: ModuleOp, device: FpgaDevice, reuse_factors: Sequence[int], partitions: Sequence[int] = (0,),
            mode: str = "auto", progress: Callable[[int, int], None] | None = None) -> list[DesignPoint]:
    """Every (reuse factor, partition cap) point, in sweep order."""
    grid = [(r, p) for r in reuse_factors for p in partitions]
    points = []
    for done, (reuse, partition) in enumerate(grid, 1):
        design = apply_design(module.clone(), device, reuse, partition, mode)
        points.append(DesignPoint(reuse, partition, design.mode, design.latency, design.interval,
                                  design.dsps, design.luts, design.brams, design.fits))
        if progress:
            progress(done, len(grid))
    return points


def dominates(a: DesignPoint, b: DesignPoint) -> bool:
    return all(x <= y for x, y in zip(a.costs(), b.costs())) and a.costs() != b.costs()


def pareto(points: Sequence[DesignPoint]) -> list[DesignPoint]:
    """The non-dominated points, fastest first; equal-cost duplicates keep the first."""
    front: list[DesignPoint] = []
    for p in points:
        if any(dominates(q, p) or (q.costs() == p.costs() and q in front) for q in points if q is not p):
            continue
        front.append(p)
    return sorted(front, key=lambda p: p.costs())


def fastest_fitting(points: Sequence[DesignPoint]) -> DesignPoint | None:
    fitting = [p for p in points if p.fits]
    return min(fitting, key=lambda p: (p.latency, p.dsp, p.lut, p.bram)) if fitting else None
