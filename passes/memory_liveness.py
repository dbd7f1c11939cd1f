"""Buffer sizes and live ranges, shared by the memory scheduling and planning passes.

Both passes reason about buffers that live over a span of positions in a
straight-line sequence of ops: `schedule-memory` over nn ops in a candidate
order, `plan-memory` over the top-level ops of a lowered function. A buffer
is live on a closed range of positions, so two buffers whose ranges share a
position need disjoint memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IndexType,
    IntegerType,
    ShapedType,
)
from xdsl.ir import Attribute

# Bytes one element occupies in memory, as the CPU backend lays buffers out:
# bf16 as its upper 16 bits, i1 as a whole byte, index as 64 bits.
_FLOAT_BYTES = {Float16Type: 2, BFloat16Type: 2, Float32Type: 4, Float64Type: 8}


def element_bytes(t: Attribute) -> int:
    """Storage size in bytes of one element of type `t`."""
    if isinstance(t, IntegerType):
        return -(-t.width.data // 8)
    if isinstance(t, IndexType):
        return 8
    size = _FLOAT_BYTES.get(type(t))
    if size is None:
        raise ValueError(f"no storage size for element type {t}")
    return size


def shaped_bytes(t: ShapedType) -> int:
    """Storage size in bytes of a statically shaped tensor or memref."""
    shape = t.get_shape()
    if any(d < 0 for d in shape):
        raise ValueError(f"no static size for {t}")
    return math.prod(shape) * element_bytes(t.get_element_type())


@dataclass(frozen=True)
class LiveRange:
    """A buffer of `size` bytes live at positions `start` to `end`, both included."""

    start: int
    end: int
    size: int

    def overlaps(self, other: LiveRange) -> bool:
        return self.start <= other.end and other.start <= self.end


def max_live_bytes(ranges: Iterable[LiveRange]) -> int:
    """The most bytes live at any one position: a lower bound on any
    memory layout of the buffers, reached when no gaps are wasted."""
    # A range adds its size at `start` and drops it after `end`; drops sort
    # before additions at the same position.
    events = [event for r in ranges for event in ((r.start, r.size), (r.end + 1, -r.size))]
    events.sort(key=lambda event: (event[0], event[1] > 0))
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak
