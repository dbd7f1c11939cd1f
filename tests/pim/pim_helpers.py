"""Configurations and builders shared by the PIM tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from compiler.targets import load_target
from dialects.pim import PimConfig
from passes.pim_map import pim_config

ROOT = Path(__file__).resolve().parents[2]


def hbm() -> PimConfig:
    return pim_config(load_target("pim-hbm"))


def small(**changes) -> PimConfig:
    """A two-channel stack with round timing numbers, easy to reason about."""
    base = dataclasses.replace(
        hbm(), channels=2, trcd=5, trp=4, tras=10, trtp=3, twr=6, tccd_s=2, tccd_l=4, burst_cycles=2,
        trrd_s=2, trrd_l=3, tfaw=12, trefi=200, trfc=20, refresh_postpone=1, rows=64)
    return dataclasses.replace(base, **changes)
