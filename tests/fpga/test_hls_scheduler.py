"""ASAP, ALAP, list and modulo scheduling on small graphs with known answers."""

from __future__ import annotations

import pytest

from backends.fpga.scheduler import (
    Graph,
    Node,
    alap,
    asap,
    list_schedule,
    modulo_schedule,
    rec_mii,
    res_mii,
)


def diamond() -> Graph:
    """a -> (b, c) -> d with latencies 1, 2, 3, 1."""
    g = Graph()
    for name, latency in (("a", 1), ("b", 2), ("c", 3), ("d", 1)):
        g.add(Node(name, latency, "alu"))
    for src, dst in (("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")):
        g.depend(src, dst)
    return g


def test_asap_and_alap() -> None:
    g = diamond()
    assert asap(g) == {"a": 0, "b": 1, "c": 1, "d": 4}
    # b has one cycle of slack: it may start as late as 2
    assert alap(g) == {"a": 0, "b": 2, "c": 1, "d": 4}


def test_list_schedule_serialises_on_one_unit() -> None:
    g = diamond()
    unlimited = list_schedule(g, {})
    assert unlimited.start == {"a": 0, "b": 1, "c": 1, "d": 4} and unlimited.length == 5
    one = list_schedule(g, {"alu": 1})
    # the critical node c goes first, b next cycle, d after c's result
    assert one.start == {"a": 0, "c": 1, "b": 2, "d": 4}
    assert one.usage(g) == {"alu": 1}


def accumulate(add_latency: int, distance: int) -> Graph:
    """load x -> mul -> add(acc) -> store, the store feeding the acc load `distance` iterations later."""
    g = Graph()
    g.add(Node("load_x", 1, "mem", 1))
    g.add(Node("load_acc", 0))
    g.add(Node("mul", 2))
    g.add(Node("add", add_latency))
    g.add(Node("store", 0))
    for src, dst in (("load_x", "mul"), ("mul", "add"), ("load_acc", "add"), ("add", "store")):
        g.depend(src, dst)
    g.depend("store", "load_acc", distance)
    return g


@pytest.mark.parametrize("add_latency, distance, ii", [(1, 1, 1), (4, 1, 4), (4, 2, 2), (4, 8, 1)])
def test_modulo_ii_from_recurrence(add_latency: int, distance: int, ii: int) -> None:
    g = accumulate(add_latency, distance)
    assert rec_mii(g) == ii
    schedule = modulo_schedule(g, {"mem": 2})
    assert schedule.ii == ii
    start = schedule.start
    assert start["load_acc"] + distance * schedule.ii >= start["store"]  # the recurrence holds
    assert start["add"] >= start["mul"] + 2


def test_modulo_ii_from_port_conflicts() -> None:
    """Three loads from one array: II 2 on two ports, 3 on one; two beats each double that."""
    def loads(beats: int) -> Graph:
        g = Graph()
        for k in range(3):
            g.add(Node(f"load{k}", beats, "array", beats))
        g.add(Node("sum", 1))
        for k in range(3):
            g.depend(f"load{k}", "sum")
        return g

    for ports, beats, ii in ((2, 1, 2), (1, 1, 3), (1, 2, 6)):
        g = loads(beats)
        assert res_mii(g, {"array": ports}) == ii
        schedule = modulo_schedule(g, {"array": ports})
        assert schedule.ii == ii
        assert schedule.usage(g) == {"array": ports}


def test_target_ii_is_a_floor() -> None:
    assert modulo_schedule(accumulate(1, 1), {"mem": 2}, target_ii=3).ii == 3
