"""From a loop nest with HLS directives to a cycle-by-cycle schedule and resource figures.

One iteration of a pipelined nest runs the body once per *lane* (the
unrolled copies); all lanes share one schedule, as the datapath an FSM
drives in lockstep. The dependence graph has a node per body op plus a load
per array the body reads and a store of the result. An access to an array
occupies that array's ports for as many *beats* as the lanes' distinct
addresses in its busiest bank need (`memory_ports` accesses per bank per
cycle), so missing partitions show up as a longer II, as in HLS tools.

A reduction nest reads its accumulator back from the output array; the
same element comes back after the iterations of the loops inside the
innermost reduction loop, which is the distance of the store -> load
recurrence. Arrays small enough (or completely partitioned) live in
registers: no ports, no latency.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass

from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    IntegerAttr,
    StringAttr,
    i64,
)
from xdsl.dialects.linalg import ops as linalg
from xdsl.ir import Attribute, Operation, SSAValue

from backends.fpga.device import FpgaDevice, is_multiplier, operation_cost, type_bits
from backends.fpga.scheduler import (
    Graph,
    Node,
    Schedule,
    list_schedule,
    modulo_schedule,
)
from compiler.diagnostics import InternalError
from dialects import hls
from passes.hls_directives import Nest, nest_of


@dataclass(frozen=True)
class Access:
    """One array a nest touches: operand position, partitions, storage, beats per iteration."""

    operand: int
    shape: tuple[int, ...]
    partitions: tuple[hls.PartitionAttr, ...]
    in_registers: bool
    beats: int

    def banks(self) -> int:
        return math.prod(p.banks(self.shape[p.dim]) for p in self.partitions)


@dataclass(frozen=True)
class Directives:
    factors: tuple[int, ...]
    target_ii: int | None  # None: not pipelined
    partitions: tuple[tuple[hls.PartitionAttr, ...], ...]


def directives_of(op: Operation, nest: Nest) -> Directives:
    unroll = op.attributes.get(hls.UNROLL_ATTR)
    pipeline = op.attributes.get(hls.PIPELINE_ATTR)
    parts = op.attributes.get(hls.PARTITION_ATTR)
    factors = unroll.factors if isinstance(unroll, hls.UnrollAttr) else (1,) * len(nest.trips)
    partitions = tuple(tuple(p.data) for p in parts.data) if isinstance(parts, ArrayAttr) else ((),) * len(nest.maps)
    if len(factors) != len(nest.trips) or len(partitions) != len(nest.maps):
        raise InternalError(f"{op.name}: HLS directives do not fit its loop nest")
    for dim, factor in enumerate(factors):
        if factor > 1 and not nest.parallel[dim]:
            raise InternalError(f"{op.name}: unrolling reduction dim {dim} is not supported")
    return Directives(factors, pipeline.ii if isinstance(pipeline, hls.PipelineAttr) else None, partitions)


def lane_offsets(factors: tuple[int, ...]) -> list[tuple[int, ...]]:
    return list(itertools.product(*(range(f) for f in factors)))


def bank_key(parts: tuple[hls.PartitionAttr, ...], shape: tuple[int, ...], index):
    """The bank (one coordinate per partitioned dim) holding element `index` (ints or numpy arrays)."""
    return tuple(p.bank_of(index[p.dim], shape[p.dim]) for p in parts)


def access_beats(nest: Nest, directives: Directives, operand: int, ports: int) -> int:
    """Cycles one iteration's lanes need on the operand's array: distinct addresses
    per bank over the ports of a bank, at the first iteration."""
    amap, shape, parts = nest.maps[operand], nest.shapes[operand], directives.partitions[operand]
    addresses = {amap.eval(offset, []) for offset in lane_offsets(directives.factors)}
    per_bank = Counter(bank_key(parts, shape, address) for address in addresses)
    return math.ceil(max(per_bank.values()) / ports)


def stored_in_registers(shape: tuple[int, ...], bits: int, parts: tuple[hls.PartitionAttr, ...],
                        device: FpgaDevice) -> bool:
    complete = {p.dim for p in parts if p.kind == "complete"}
    return math.prod(shape) * bits <= device.register_bits or complete == set(range(len(shape)))


def _innermost_reduction_distance(nest: Nest, factors: tuple[int, ...]) -> int:
    reductions = [d for d, parallel in enumerate(nest.parallel) if not parallel]
    if not reductions:
        return 0
    inner = range(reductions[-1] + 1, len(nest.trips))
    return max(1, math.prod(math.ceil(nest.trips[d] / factors[d]) for d in inner))


@dataclass
class NestSchedule:
    """The schedule of one nest and what it costs."""

    op: Operation
    nest: Nest
    directives: Directives
    schedule: Schedule
    graph: Graph
    body_ops: list[tuple[str, Operation]]  # (graph node, op)
    units: dict[str, str]  # node -> unit class
    accesses: list[Access]
    lanes: int
    iterations: int
    dsps: int
    luts: int
    latency: int

    @property
    def ii(self) -> int | None:
        return self.schedule.ii

    @property
    def depth(self) -> int:
        return self.schedule.length


def _body(op: Operation):
    if isinstance(op, linalg.GenericOp):
        return op.body.block
    return None


def schedule_nest(op: Operation, device: FpgaDevice, muls_on_lut: bool = False) -> NestSchedule:
    """Schedule one structured op annotated by hls-directives (or not: one lane, not pipelined)."""
    nest = nest_of(op)
    assert nest is not None
    directives = directives_of(op, nest)
    lanes = math.prod(directives.factors)
    iterations = math.prod(math.ceil(t / f) for t, f in zip(nest.trips, directives.factors))
    operands = [*op.operands] if isinstance(op, linalg.GenericOp) else [op.operands[0], op.operands[1]]
    accesses = []
    for index, (shape, parts) in enumerate(zip(nest.shapes, directives.partitions)):
        registers = not shape or stored_in_registers(shape, type_bits(operands[index].type), parts, device)
        beats = 0 if registers else access_beats(nest, directives, index, device.memory_ports)
        accesses.append(Access(index, shape, parts, registers, beats))

    graph = Graph()
    units: dict[str, str] = {}
    output = len(nest.maps) - 1

    def access_node(name: str, access: Access, is_load: bool) -> Node:
        if access.in_registers:  # the producing unit's output register is the storage
            node = Node(name, 0)
        else:
            latency = (device.memory_latency if is_load else 1) + access.beats - 1
            node = Node(name, latency, f"array{access.operand}", access.beats)
        units[name] = "reg" if access.in_registers else "mem"
        return graph.add(node)

    body = _body(op)
    body_ops: list[tuple[str, Operation]] = []
    names: dict[SSAValue, str] = {}
    bits: dict[SSAValue, int] = {}
    dsps_of: dict[str, int] = {}
    luts = 0
    if body is not None:
        for index, arg in enumerate(body.args):
            if arg.uses:
                names[arg] = access_node(f"load{index}", accesses[index], True).name
        for number, body_op in enumerate(body.ops):
            if isinstance(body_op, linalg.YieldOp):
                continue
            on_dsp = is_multiplier(body_op) and not muls_on_lut
            unit, cost = operation_cost(body_op, device, on_dsp, bits)
            name = f"op{number}"
            graph.add(Node(name, cost.latency))
            units[name] = unit
            body_ops.append((name, body_op))
            luts += cost.luts
            if cost.dsps:
                dsps_of[name] = cost.dsps
            for operand in body_op.operands:
                if operand in names:
                    graph.depend(names[operand], name)
            names[body_op.results[0]] = name
        yielded = body.last_op.operands[0]  # type: ignore[union-attr]
        store = access_node("store", accesses[output], False)
        if yielded in names:
            graph.depend(names[yielded], store.name)
        acc = body.args[output]
        distance = _innermost_reduction_distance(nest, directives.factors)
        if distance and acc.uses:
            graph.depend(store.name, names[acc], distance)
    else:  # linalg.fill: store a constant
        access_node("store", accesses[output], False)

    limits = {f"array{a.operand}": device.memory_ports for a in accesses if not a.in_registers}
    if directives.target_ii is None:
        schedule = list_schedule(graph, limits)
        latency = device.loop_overhead + iterations * schedule.length
    else:
        schedule = modulo_schedule(graph, limits, directives.target_ii)
        latency = device.loop_overhead + (iterations - 1) * schedule.ii + schedule.length
    # DSP blocks are pooled among multipliers in different slots of the II
    slots: Counter[int] = Counter()
    for name, blocks in dsps_of.items():
        slots[schedule.start[name] % schedule.ii if schedule.ii else schedule.start[name]] += blocks
    dsps = lanes * max(slots.values(), default=0)
    return NestSchedule(op, nest, directives, schedule, graph, body_ops, units, accesses, lanes, iterations,
                        dsps, lanes * luts, latency)


def annotate(ns: NestSchedule) -> None:
    """Write the schedule onto the IR: cycle and unit on every body op, a summary on the nest."""
    for name, body_op in ns.body_ops:
        body_op.attributes[hls.CYCLE_ATTR] = IntegerAttr(ns.schedule.start[name], i64)
        body_op.attributes[hls.UNIT_ATTR] = StringAttr(ns.units[name])
    memory = {n: ns.schedule.start[n] for n in ns.graph.nodes if n.startswith(("load", "store"))}
    summary: dict[str, Attribute] = {
        "ii": IntegerAttr(ns.ii or 0, i64),
        "depth": IntegerAttr(ns.depth, i64),
        "iterations": IntegerAttr(ns.iterations, i64),
        "lanes": IntegerAttr(ns.lanes, i64),
        "latency": IntegerAttr(ns.latency, i64),
        "dsp": IntegerAttr(ns.dsps, i64),
        "lut": IntegerAttr(ns.luts, i64),
        "memory": DictionaryAttr({n: IntegerAttr(c, i64) for n, c in memory.items()}),
        "beats": ArrayAttr([IntegerAttr(a.beats, i64) for a in ns.accesses]),
    }
    ns.op.attributes[hls.SCHEDULE_ATTR] = DictionaryAttr(summary)
