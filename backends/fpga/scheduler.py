"""Operation scheduling for HLS: ASAP, ALAP, resource-constrained list
scheduling and iterative modulo scheduling, on small dependence graphs.

A graph's nodes have a latency (cycles from start until the result can be
used; 0 for wiring, which chains into the same cycle) and optionally a
resource they occupy for `occupancy` consecutive cycles from their start.
Edges carry an iteration distance: 0 inside one iteration, d > 0 from an
iteration to the one d later (a loop-carried dependence, such as an
accumulator written back and read again).

Resources are counted per cycle; `limits` gives how many of each exist
(absent means unlimited). In a modulo schedule with initiation interval II
a resource used at cycle t is busy in slot t mod II of every iteration.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Node:
    name: str
    latency: int
    resource: str | None = None
    occupancy: int = 1


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    distance: int = 0


@dataclass
class Graph:
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)

    def add(self, node: Node) -> Node:
        if node.name in self.nodes:
            raise ValueError(f"duplicate node {node.name}")
        self.nodes[node.name] = node
        return node

    def depend(self, src: str, dst: str, distance: int = 0) -> None:
        self.edges.append(Edge(src, dst, distance))

    def preds(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.dst == name and e.distance == 0]

    def succs(self, name: str) -> list[Edge]:
        return [e for e in self.edges if e.src == name and e.distance == 0]

    def topological(self) -> list[str]:
        """Nodes in an order respecting the intra-iteration edges (insertion order among equals)."""
        indegree = {n: 0 for n in self.nodes}
        for e in self.edges:
            if e.distance == 0:
                indegree[e.dst] += 1
        ready = [n for n in self.nodes if indegree[n] == 0]
        order: list[str] = []
        while ready:
            n = ready.pop(0)
            order.append(n)
            for e in self.succs(n):
                indegree[e.dst] -= 1
                if indegree[e.dst] == 0:
                    ready.append(e.dst)
        if len(order) != len(self.nodes):
            raise ValueError("the intra-iteration dependences form a cycle")
        return order


@dataclass(frozen=True)
class Schedule:
    start: dict[str, int]
    ii: int | None  # None: not pipelined
    length: int  # cycles from the first start to the last result (the pipeline depth)

    def usage(self, graph: Graph) -> dict[str, int]:
        """Peak units of each resource busy in one cycle (modulo II when pipelined)."""
        return _usage_peak(graph, self.start, self.ii)


def _length(graph: Graph, start: Mapping[str, int]) -> int:
    return max((start[n] + max(node.latency, 1) for n, node in graph.nodes.items()), default=0)


def asap(graph: Graph) -> dict[str, int]:
    """Earliest start of every node, ignoring resources."""
    start: dict[str, int] = {}
    for n in graph.topological():
        start[n] = max((start[e.src] + graph.nodes[e.src].latency for e in graph.preds(n)), default=0)
    return start


def alap(graph: Graph, length: int | None = None) -> dict[str, int]:
    """Latest start of every node that still finishes within `length` (default: the ASAP length)."""
    length = _length(graph, asap(graph)) if length is None else length
    start: dict[str, int] = {}
    for n in reversed(graph.topological()):
        node = graph.nodes[n]
        latest = length - max(node.latency, 1)
        for e in graph.succs(n):
            latest = min(latest, start[e.dst] - node.latency)
        start[n] = latest
    return start


def _priorities(graph: Graph) -> dict[str, tuple[int, int]]:
    """Least mobility (ALAP - ASAP) first, then earliest ASAP: critical nodes go first."""
    early, late = asap(graph), alap(graph)
    return {n: (late[n] - early[n], early[n]) for n in graph.nodes}


def _fits(busy: dict[tuple[str, int], int], node: Node, t: int, limits: Mapping[str, int], ii: int | None) -> bool:
    if node.resource is None or node.resource not in limits:
        return True
    return all(busy.get((node.resource, _slot(t + k, ii)), 0) < limits[node.resource] for k in range(node.occupancy))


def _reserve(busy: dict[tuple[str, int], int], node: Node, t: int, ii: int | None) -> None:
    if node.resource is not None:
        for k in range(node.occupancy):
            key = (node.resource, _slot(t + k, ii))
            busy[key] = busy.get(key, 0) + 1


def _slot(t: int, ii: int | None) -> int:
    return t if ii is None else t % ii


def _usage_peak(graph: Graph, start: Mapping[str, int], ii: int | None) -> dict[str, int]:
    busy: dict[tuple[str, int], int] = {}
    for n, node in graph.nodes.items():
        _reserve(busy, node, start[n], ii)
    peak: dict[str, int] = {}
    for (resource, _), count in busy.items():
        peak[resource] = max(peak.get(resource, 0), count)
    return peak


def list_schedule(graph: Graph, limits: Mapping[str, int]) -> Schedule:
    """Resource-constrained list scheduling: cycle by cycle, start the ready
    nodes of highest priority while their resources last."""
    _check_limits(graph, limits)
    priority = _priorities(graph)
    start: dict[str, int] = {}
    busy: dict[tuple[str, int], int] = {}
    pending = set(graph.nodes)
    cycle = 0
    while pending:
        ready = sorted(
            (n for n in pending
             if all(e.src in start and start[e.src] + graph.nodes[e.src].latency <= cycle for e in graph.preds(n))),
            key=lambda n: priority[n],
        )
        for n in ready:
            if _fits(busy, graph.nodes[n], cycle, limits, None):
                _reserve(busy, graph.nodes[n], cycle, None)
                start[n] = cycle
                pending.discard(n)
        cycle += 1
    return Schedule(start, None, _length(graph, start))


def _check_limits(graph: Graph, limits: Mapping[str, int]) -> None:
    for node in graph.nodes.values():
        if node.resource in limits and limits[node.resource] < 1:
            raise ValueError(f"node {node.name} needs resource {node.resource}, of which there are none")


def res_mii(graph: Graph, limits: Mapping[str, int]) -> int:
    """The II the resources allow: busy cycles per iteration over units, per resource."""
    demand: dict[str, int] = {}
    for node in graph.nodes.values():
        if node.resource in limits:
            demand[node.resource] = demand.get(node.resource, 0) + node.occupancy
    return max([1, *(math.ceil(d / limits[r]) for r, d in demand.items())])


def _longest_paths_from(graph: Graph, source: str) -> dict[str, int]:
    """Longest intra-iteration path (sum of latencies) from `source` to each reachable node."""
    order = graph.topological()
    dist: dict[str, int] = {source: 0}
    for n in order[order.index(source):]:
        if n not in dist:
            continue
        for e in graph.succs(n):
            candidate = dist[n] + graph.nodes[n].latency
            if candidate > dist.get(e.dst, -1):
                dist[e.dst] = candidate
    return dist


def rec_mii(graph: Graph) -> int:
    """The II the recurrences allow: for a loop-carried edge u -> v at distance
    d closing a cycle through v ... u, the cycle's delay over d."""
    bound = 1
    for e in graph.edges:
        if e.distance == 0:
            continue
        reach = _longest_paths_from(graph, e.dst)
        if e.src in reach:
            delay = reach[e.src] + graph.nodes[e.src].latency
            bound = max(bound, math.ceil(delay / e.distance))
    return bound


def _sink(graph: Graph, start: dict[str, int], busy: dict[tuple[str, int], int], limits: Mapping[str, int],
          ii: int, order: list[str]) -> None:
    """Move every node with successors as late as they allow (last first), so a
    value read back from the previous iteration (an accumulator) is read just
    before it is needed and the recurrence closes in as few cycles as possible."""
    for n in reversed(order):
        node, succs = graph.nodes[n], graph.succs(n)
        if not succs:
            continue
        latest = min(start[e.dst] for e in succs) - node.latency
        if latest <= start[n]:
            continue
        _release(busy, node, start[n], ii)
        t = next((t for t in range(latest, start[n], -1) if _fits(busy, node, t, limits, ii)), start[n])
        _reserve(busy, node, t, ii)
        start[n] = t


def _release(busy: dict[tuple[str, int], int], node: Node, t: int, ii: int | None) -> None:
    if node.resource is not None:
        for k in range(node.occupancy):
            busy[(node.resource, _slot(t + k, ii))] -= 1


def _recurrences_hold(graph: Graph, start: Mapping[str, int], ii: int) -> bool:
    return all(start[e.dst] + e.distance * ii >= start[e.src] + graph.nodes[e.src].latency
               for e in graph.edges if e.distance > 0)


def modulo_schedule(graph: Graph, limits: Mapping[str, int], target_ii: int = 1, max_ii: int = 4096) -> Schedule:
    """Iterative modulo scheduling: from II = max(target, ResMII, RecMII)
    upwards, place nodes in dependence order at their earliest start whose
    slots (mod II) have free units, and accept the first II at which every
    node fits and every loop-carried dependence holds."""
    _check_limits(graph, limits)
    order = graph.topological()  # every predecessor is placed before its successors
    ii = max(target_ii, res_mii(graph, limits), rec_mii(graph))
    while ii <= max_ii:
        start: dict[str, int] = {}
        busy: dict[tuple[str, int], int] = {}
        placed = True
        for n in order:
            node = graph.nodes[n]
            earliest = max((start[e.src] + graph.nodes[e.src].latency for e in graph.preds(n)), default=0)
            for t in range(earliest, earliest + ii):
                if _fits(busy, node, t, limits, ii):
                    _reserve(busy, node, t, ii)
                    start[n] = t
                    break
            else:
                placed = False
                break
        if placed:
            _sink(graph, start, busy, limits, ii, order)
        if placed and _recurrences_hold(graph, start, ii):
            return Schedule(start, ii, _length(graph, start))
        ii += 1
    raise ValueError(f"no modulo schedule with II <= {max_ii}")
