"""The FSMs: one per loop nest, chained per engine, engines started as the mode says.

A nest's FSM spends exactly what the schedule counted:
`loop_overhead + (iterations - 1) * II + depth` cycles (an unpipelined nest
is one whose II is its depth). Its states are CIRCT `fsm.machine` states,
lowered by CIRCT's `convert-fsm-to-sv`: IDLE until started, ENTER for the
first `loop_overhead // 2` cycles, ISSUE while iterations issue (one every
II cycles), DRAIN while the last one leaves the pipeline and the remaining
overhead cycles leave the loop. The datapath side of the controller is a
cycle counter whose comparisons are the machine's transition guards, the
II slot counter, the loop counters that advance with each `issue` (`carry`
says which loop dim moved) and a valid bit that follows every iteration
down the pipeline so stores only write real iterations.

Nests of an engine run one after another; an engine starts when its
producers have finished (dataflow) or when the engine before it has
(time-multiplexed). A nest's last cycle hands over combinationally, so
there is no idle cycle between nests or engines. The design computes one
inference per reset.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects import fsm, hw
from xdsl.dialects.builtin import ArrayAttr, StringAttr, i1
from xdsl.ir import Block, Operation, Region

from backends.fpga.hls_model import NestSchedule
from backends.rtl.netlist import ModuleBuilder, Signal, bits_for

# Machine inputs (transition guards) and outputs, in port order.
GUARDS = ("go", "entered", "issued_last", "drained")
OUTPUTS = ("busy", "issuing")


def nest_cycles(ns: NestSchedule, overhead: int) -> tuple[int, int]:
    """(II the FSM issues at, total cycles) of a nest."""
    interval = ns.ii or ns.depth
    return interval, overhead + (ns.iterations - 1) * interval + ns.depth


def _as_attributes(op: Operation) -> Operation:
    """CIRCT 1.62's fsm ops keep their inherent attributes as attributes, not properties."""
    for inner in op.walk():
        if inner.name.startswith("fsm."):
            inner.attributes.update(inner.properties)
            inner.properties.clear()
    return op


@dataclass(frozen=True)
class MachineShape:
    """What distinguishes nest FSMs: whether they start busy, and which phases take cycles."""

    starts_busy: bool
    enters: bool  # loop_overhead // 2 > 0
    drains: bool  # cycles remain after the last issue

    @property
    def name(self) -> str:
        return "loom_nest_fsm" + "".join(f"_{flag}" for flag, on in
                                         (("busy", self.starts_busy), ("enter", self.enters), ("drain", self.drains)) if on)

    def build(self) -> fsm.MachineOp:
        """IDLE -go-> [ENTER -entered->] ISSUE -issued_last-> [DRAIN -drained->] IDLE."""
        body = Block(arg_types=[i1] * len(GUARDS))
        guard = dict(zip(GUARDS, body.args))
        low, high = hw.ConstantOp(0, 1), hw.ConstantOp(1, 1)
        body.add_ops([low, high])
        phases = ["IDLE", *(["ENTER"] if self.enters else []), "ISSUE", *(["DRAIN"] if self.drains else [])]
        leave = {"IDLE": "go", "ENTER": "entered", "ISSUE": "issued_last", "DRAIN": "drained"}
        for number, state in enumerate(phases):
            outputs = [high if state != "IDLE" else low, high if state == "ISSUE" else low]
            following = phases[(number + 1) % len(phases)]
            transition = fsm.TransitionOp(following, Region(Block([fsm.ReturnOp(guard[leave[state]])])),
                                          Region(Block()))
            body.add_op(fsm.StateOp(state, Region(Block([fsm.OutputOp(outputs)])), Region(Block([transition]))))
        initial = phases[1] if self.starts_busy else "IDLE"
        return _as_attributes(fsm.MachineOp(
            self.name, initial, ([i1] * len(GUARDS), [i1] * len(OUTPUTS)), None, None,
            ArrayAttr([StringAttr(n) for n in GUARDS]), ArrayAttr([StringAttr(n) for n in OUTPUTS]), Region(body)))


class Machines:
    """The `fsm.machine`s a design instantiates, one per shape."""

    def __init__(self):
        self.by_shape: dict[MachineShape, fsm.MachineOp] = {}

    def add(self, shape: MachineShape) -> None:
        if shape not in self.by_shape:
            self.by_shape[shape] = shape.build()

    def ops(self) -> list[fsm.MachineOp]:
        return list(self.by_shape.values())


class NestControl:
    """Timing and loop counters of one nest."""

    def __init__(self, m: ModuleBuilder, prefix: str, ns: NestSchedule, overhead: int, first: bool,
                 machines: Machines):
        self.m = m
        interval, total = nest_cycles(ns, overhead)
        self.total = total
        enter = overhead // 2
        last_issue = enter + (ns.iterations - 1) * interval
        shape = MachineShape(first, enter > 0, last_issue < total - 1)
        count = m.reg(f"{prefix}_count", bits_for(total))
        at_end = count.q.eq(total - 1)
        guards = [m.const(0, 1), count.q.eq(enter - 1) if shape.enters else m.const(0, 1),
                  count.q.eq(last_issue), at_end]
        machines.add(shape)
        # xDSL 0.74 types the clock operand as an integer; CIRCT's is the `!seq.clock` passed here
        self.instance = fsm.HWInstanceOp(f"{prefix}_fsm", shape.name, [g.value for g in guards], m.clk.value,
                                         m.rst.value, [i1] * len(OUTPUTS))
        _as_attributes(self.instance)
        m.block.add_op(self.instance)
        busy, issuing = (Signal(m, result) for result in self.instance.results)
        self.busy = busy.named(f"{prefix}_busy")
        self.last = self.busy & at_end
        count.set(count.q + 1, when=self.busy)
        count.set(0, when=self.last)
        window = issuing
        if interval > 1:
            slot = m.reg(f"{prefix}_slot", bits_for(interval - 1))
            slot.set(m.mux(slot.q.eq(interval - 1), 0, slot.q + 1), when=issuing)
            window = window & slot.q.eq(0)
        self.issue = window.named(f"{prefix}_issue")
        self.valid = [self.issue]  # valid[k]: the iteration at pipeline stage k is real
        for stage in range(1, ns.depth + 1):
            register = m.reg(f"{prefix}_valid{stage}", 1)
            register.set(self.valid[-1])
            self.valid.append(register.q)
        self.trips = tuple(t // f for t, f in zip(ns.nest.trips, ns.directives.factors))
        self.carry = self._loop_counters(prefix)

    def start(self, go: Signal) -> None:
        """Start the nest in the cycle after `go` (the machine's IDLE -> first phase guard)."""
        current = Signal(self.m, self.instance.operands[0])
        self.instance.operands[0] = (current | go).value

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
