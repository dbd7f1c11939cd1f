"""The FSMs: one per loop nest, chained per engine, engines started as the mode says.

A nest's FSM spends exactly what the schedule counted:
`loop_overhead + (iterations - 1) * II + depth` cycles (an unpipelined nest
is one whose II is its depth). The first `loop_overhead // 2` cycles enter
the loop, an iteration issues every II cycles after that, the last one
leaves the pipeline `depth` cycles after it issued, and the remaining
overhead cycles leave the loop. `issue` starts an iteration: the loop
counters advance with it (`carry` says which loop dim moved), and a valid
bit follows the iteration down the pipeline so stores only write real
iterations.

Nests of an engine run one after another; an engine starts when its
producers have finished (dataflow) or when the engine before it has
(time-multiplexed). A nest's last cycle hands over combinationally, so
there is no idle cycle between nests or engines. The design computes one
inference per reset.
"""

from __future__ import annotations

from backends.fpga.hls_model import NestSchedule
from backends.rtl.netlist import ModuleBuilder, Signal, bits_for


def nest_cycles(ns: NestSchedule, overhead: int) -> tuple[int, int]:
    """(II the FSM issues at, total cycles) of a nest."""
    interval = ns.ii or ns.depth
    return interval, overhead + (ns.iterations - 1) * interval + ns.depth


class NestControl:
    """Timing and loop counters of one nest."""

    def __init__(self, m: ModuleBuilder, prefix: str, ns: NestSchedule, overhead: int, first: bool):
        self.m = m
        interval, total = nest_cycles(ns, overhead)
        self.total = total
        enter = overhead // 2
        self.busy = m.reg(f"{prefix}_busy", 1, init=int(first))
        self.count = m.reg(f"{prefix}_count", bits_for(total))
        self.last = self.busy.q & self.count.q.eq(total - 1)
        self.count.set(self.count.q + 1, when=self.busy.q)
        self.count.set(0, when=self.last)
        self.busy.set(0, when=self.last)
        issued = m.reg(f"{prefix}_issued", bits_for(ns.iterations))
        window = self.busy.q & self.count.q.uge(enter) & issued.q.ult(ns.iterations)
        if interval > 1:
            slot = m.reg(f"{prefix}_slot", bits_for(interval - 1))
            slot.set(m.mux(slot.q.eq(interval - 1), 0, slot.q + 1), when=window)
            window = window & slot.q.eq(0)
        self.issue = window.named(f"{prefix}_issue")
        issued.set(issued.q + 1, when=self.issue)
        self.valid = [self.issue]  # valid[k]: the iteration at pipeline stage k is real
        for stage in range(1, ns.depth + 1):
            register = m.reg(f"{prefix}_valid{stage}", 1)
            register.set(self.valid[-1])
            self.valid.append(register.q)
        self.trips = tuple(t // f for t, f in zip(ns.nest.trips, ns.directives.factors))
        self.carry = self._loop_counters(prefix)

    def start(self, go: Signal) -> None:
        self.busy.set(1, when=go)

    def _loop_counters(self, prefix: str) -> dict[int, Signal]:
        """Counters over the issue space, innermost dim fastest; returns, per loop
        dim that can advance, the condition that it is the one advancing at an issue."""
        m = self.m
        wrapped = m.const(1, 1)  # every dim inside the current one is at its last value
        carry: dict[int, Signal] = {}
        for dim in reversed(range(len(self.trips))):
            trip = self.trips[dim]
            if trip == 1:
                continue
            counter = m.reg(f"{prefix}_j{dim}", bits_for(trip - 1))
            at_end = counter.q.eq(trip - 1)
            counter.set(m.mux(at_end, 0, counter.q + 1), when=self.issue & wrapped)
            carry[dim] = wrapped & ~at_end
            wrapped = wrapped & at_end
        return carry
