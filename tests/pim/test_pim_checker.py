"""The timing checker accepts traces that keep every rule and names the rule a trace breaks.

Each case is a short trace on one channel of `small()` (tRCD 5, tRP 4,
tRAS 10, tRTP 3, tWR 6, tCCD_S 2, tCCD_L 4, burst 2, tRRD_S 2, tRRD_L 3,
tFAW 12, tREFI 200, tRFC 20): a valid version, and the same trace with one
command one cycle too early (or missing), which must be reported under the
rule's name. Unit u owns banks 2u and 2u + 1; bank group = bank // 4.
"""

from __future__ import annotations

import numpy as np
import pytest
from pim_helpers import small

from backends.pim.checker import RULES, check_trace
from backends.pim.commands import ACT, ALL, MAC, PRE, RD, REF, WR, command
from backends.pim.simulator import TRACE


def trace(events: list[tuple[int, tuple]]) -> np.ndarray:
    return np.array([(cycle, 0, *cmd) for cycle, cmd in events], dtype=TRACE)


def act(unit: int, bank: int = 0, row: int = 1) -> tuple:
    return command(ACT, unit, bank, row)


def rd(unit: int, bank: int = 0, row: int = 1, col: int = 0) -> tuple:
    return command(RD, unit, bank, row, col)


# rule -> (valid trace, index of the command to move one cycle earlier)
CASES = {
    "trcd": ([(0, act(0)), (5, rd(0))], 1),
    "trp": ([(0, act(0)), (10, command(PRE, 0, 0)), (14, act(0, row=2))], 2),
    "tras": ([(0, act(0)), (10, command(PRE, 0, 0))], 1),
    "trtp": ([(0, act(0)), (5, rd(0)), (10, rd(0, col=1)), (13, command(PRE, 0, 0))], 3),
    "twr": ([(0, act(0)), (8, command(WR, 0, 0, 1, 0)), (14, command(PRE, 0, 0))], 2),
    "tccd_s": ([(0, act(0)), (2, act(2)), (7, rd(0)), (9, rd(2))], 3),
    "tccd_l": ([(0, act(0)), (5, rd(0)), (9, rd(0, col=1))], 2),
    "trrd_s": ([(0, act(0)), (2, act(2))], 1),
    "trrd_l": ([(0, act(0)), (3, act(0, bank=1))], 1),
    "tfaw": ([(0, act(0)), (2, act(2)), (4, act(4)), (6, act(6)), (12, act(1))], 4),
    "trfc": ([(0, command(REF)), (20, act(0))], 1),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_one_cycle_early_breaks_the_rule(rule: str) -> None:
    events, moved = CASES[rule]
    assert check_trace(trace(events), small()) == []
    broken = list(events)
    broken[moved] = (broken[moved][0] - 1, broken[moved][1])
    found = check_trace(trace(broken), small())
    assert rule in {v.rule for v in found}, found


def test_burst_spacing_on_the_bus() -> None:
    """With a 3-cycle burst, two reads tCCD_S apart in different bank groups still collide on the bus."""
    config = small(burst_cycles=3)
    events = [(0, act(0)), (2, act(2)), (7, rd(0)), (10, rd(2))]
    assert check_trace(trace(events), config) == []
    events[3] = (9, rd(2))
    assert [v.rule for v in check_trace(trace(events), config)] == ["burst"]


def test_all_bank_activation_fills_the_four_activation_window() -> None:
    events = [(0, command(ACT, ALL, 0, 1)), (12, act(0, bank=1))]
    assert check_trace(trace(events), small()) == []
    events[1] = (11, act(0, bank=1))
    assert [v.rule for v in check_trace(trace(events), small())] == ["tfaw"]


def test_missing_and_late_refreshes() -> None:
    config = small()  # tREFI 200, one refresh may be postponed
    fine = [(150, command(REF)), (350, command(REF)), (500, act(0))]
    assert check_trace(trace(fine), config) == []
    assert {v.rule for v in check_trace(trace([(500, act(0))]), config)} == {"trefi"}
    late = [(401, command(REF)), (500, act(0))]
    assert [v.rule for v in check_trace(trace(late), config)] == ["trefi"]


@pytest.mark.parametrize("events, message", [
    ([(0, act(0)), (5, act(0, row=2))], "already has row 1 open"),
    ([(0, rd(0))], "has row -1 open, not 1"),
    ([(0, act(0)), (5, command(MAC, 0, 0, 2, 0))], "has row 1 open, not 2"),
    ([(0, act(0)), (10, command(REF))], "banks [0] are open"),
])
def test_bank_state(events: list, message: str) -> None:
    found = check_trace(trace(events), small())
    assert any(v.rule == "bank-state" and message in v.message for v in found), found


def test_one_command_per_cycle() -> None:
    found = check_trace(trace([(0, act(0)), (0, act(4))]), small())
    assert "command-bus" in {v.rule for v in found}


def test_every_rule_is_exercised() -> None:
    covered = set(CASES) | {"burst", "tfaw", "trefi", "bank-state", "command-bus"}
    assert covered == set(RULES)
