"""Replay a command trace and prove that it keeps every DRAM timing rule.

The checker shares no code with the scheduler in `simulator.py`: it reads
only the trace (cycle, channel, command) and the configuration, rebuilds
each bank's state from the commands, and tests each rule against the
history. A trace passes when the list of violations is empty. Rule names:

    command-bus  two commands in one cycle on one channel
    bank-state   ACT to an open bank, a column access to a closed bank or
                 another row, REF with a bank open
    trcd trp tras trtp twr tccd_s tccd_l burst trrd_s trrd_l tfaw trfc trefi
                 the timing parameters of the same names (see simulator.py)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from backends.pim.commands import (
    ACT,
    ALL,
    BCAST,
    BUS_COMMANDS,
    MAC,
    OPCODES,
    PRE,
    RD,
    RDACC,
    REF,
    WR,
)
from dialects.pim import PimConfig

RULES = ("command-bus", "bank-state", "trcd", "trp", "tras", "trtp", "twr", "tccd_s", "tccd_l", "burst",
         "trrd_s", "trrd_l", "tfaw", "trfc", "trefi")


@dataclass(frozen=True)
class Violation:
    rule: str
    channel: int
    cycle: int
    message: str

    def __str__(self) -> str:
        return f"channel {self.channel} cycle {self.cycle}: {self.rule}: {self.message}"


class _Channel:
    """What the checker remembers about one channel while replaying it."""

    def __init__(self, config: PimConfig):
        self.row = [-1] * config.banks
        self.last = {kind: [None] * config.banks for kind in ("act", "pre", "rd", "wr")}
        self.acts: list[tuple[int, int]] = []  # (cycle, banks activated) of the recent ACTs
        self.last_act: int | None = None
        self.last_act_in_group: dict[int, int] = {}
        self.last_column: int | None = None
        self.last_column_on: dict[tuple[str, int], int] = {}
        self.last_burst: int | None = None
        self.refreshes: list[int] = []
        self.previous = None


def _addressed(config: PimConfig, unit: int, bank: int) -> tuple[int, ...]:
    units = list(range(config.units)) if unit == ALL else [unit]
    within = list(range(config.banks_per_unit)) if bank == ALL else [bank]
    return tuple(u * config.banks_per_unit + b for u in units for b in within)


def _occupied(config: PimConfig, op: int, unit: int, bank: int) -> frozenset:
    """Bank groups whose column path a command uses, and units it drives."""
    keys: set[tuple[str, int]] = set()
    if op in (RD, WR, MAC):
        keys |= {("group", b // (config.banks // config.bank_groups)) for b in _addressed(config, unit, bank)}
    if op in (BCAST, MAC, RDACC):
        keys |= {("unit", u) for u in (range(config.units) if unit == ALL else [unit])}
    return frozenset(keys)


def check_trace(trace: np.ndarray, config: PimConfig) -> list[Violation]:
    """Every rule the trace breaks (empty when it keeps them all)."""
    c = config
    found: list[Violation] = []
    channels: dict[int, _Channel] = defaultdict(lambda: _Channel(c))
    order = np.argsort(trace["cycle"], kind="stable")
    end = int(trace["cycle"].max()) if len(trace) else 0
    columns = [trace[name][order].tolist() for name in ("cycle", "channel", "op", "unit", "bank", "row")]

    addressed: dict[tuple[int, int], tuple[int, ...]] = {}
    occupied_by: dict[tuple[int, int, int], frozenset] = {}
    for t, ch, op, unit, bank, row in zip(*columns):
        state = channels[ch]
        if (unit, bank) not in addressed:
            addressed[unit, bank] = _addressed(c, unit, bank)
        if (op, unit, bank) not in occupied_by:
            occupied_by[op, unit, bank] = _occupied(c, op, unit, bank)

        def violate(rule: str, message: str, ch: int = ch, t: int = t, op: int = op) -> None:
            found.append(Violation(rule, ch, t, f"{OPCODES[op]}: {message}"))

        def at_least(rule: str, since: int | None, gap: int, what: str, t: int = t) -> None:
            if since is not None and t - since < gap:
                violate(rule, f"{t - since} cycles after {what}, needs {gap}")

        if state.previous is not None and state.previous == t:
            violate("command-bus", "a second command in the same cycle")
        state.previous = t
        banks = addressed[unit, bank] if op != REF else range(c.banks)
        if state.refreshes and op in (ACT, REF):
            at_least("trfc", state.refreshes[-1], c.trfc, "REF")

        if op == ACT:
            for b in banks:
                if state.row[b] != -1:
                    violate("bank-state", f"bank {b} already has row {state.row[b]} open")
                at_least("trp", state.last["pre"][b], c.trp, f"PRE of bank {b}")
            groups = {b // (c.banks // c.bank_groups) for b in banks}
            at_least("trrd_s", state.last_act, c.trrd_s, "the previous ACT")
            same_group = [state.last_act_in_group[g] for g in groups if g in state.last_act_in_group]
            at_least("trrd_l", max(same_group, default=None), c.trrd_l, "an ACT in the same bank group")
            state.acts = [(when, n) for when, n in state.acts if t - when < c.tfaw] + [(t, len(banks))]
            weight = sum(min(4, n) for _, n in state.acts)
            if weight > 4:
                violate("tfaw", f"{weight} activations within {c.tfaw} cycles")
            state.last_act = t
            state.last_act_in_group.update({g: t for g in groups})
            for b in banks:
                state.row[b], state.last["act"][b] = row, t
        elif op == PRE:
            for b in banks:
                if state.row[b] == -1:
                    continue
                at_least("tras", state.last["act"][b], c.tras, f"ACT of bank {b}")
                at_least("trtp", state.last["rd"][b], c.trtp, f"RD of bank {b}")
                at_least("twr", state.last["wr"][b], c.twr, f"WR of bank {b}")
                state.row[b], state.last["pre"][b] = -1, t
        elif op == REF:
            open_banks = [b for b in banks if state.row[b] != -1]
            if open_banks:
                violate("bank-state", f"banks {open_banks} are open")
            for b in banks:
                at_least("trp", state.last["pre"][b], c.trp, f"PRE of bank {b}")
            state.refreshes.append(t)
            allowed = (len(state.refreshes) + c.refresh_postpone) * c.trefi
            if t > allowed:
                violate("trefi", f"refresh number {len(state.refreshes)} at {t}, due by {allowed}")
        else:
            if op in (RD, WR, MAC):
                for b in banks:
                    if state.row[b] != row:
                        violate("bank-state", f"bank {b} has row {state.row[b]} open, not {row}")
                    at_least("trcd", state.last["act"][b], c.trcd, f"ACT of bank {b}")
            occupied = occupied_by[op, unit, bank]
            at_least("tccd_s", state.last_column, c.tccd_s, "the previous column command")
            shared = [state.last_column_on[key] for key in occupied if key in state.last_column_on]
            at_least("tccd_l", max(shared, default=None), c.tccd_l, "a column command on the same bank group or unit")
            state.last_column = t
            state.last_column_on.update({key: t for key in occupied})
            if op in BUS_COMMANDS:
                at_least("burst", state.last_burst, c.burst_cycles, "the previous burst on the bus")
                state.last_burst = t
            for b in banks:
                if op == RD:
                    state.last["rd"][b] = t
                elif op == WR:
                    state.last["wr"][b] = t

    for ch, state in channels.items():
        owed = end // c.trefi - c.refresh_postpone
        if len(state.refreshes) < owed:
            found.append(Violation("trefi", ch, end, f"{len(state.refreshes)} refreshes by cycle {end}, "
                                                     f"at least {owed} needed"))
    return found
