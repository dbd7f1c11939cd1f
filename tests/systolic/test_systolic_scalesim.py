"""Loom's compute cycles and utilization against SCALE-Sim's on the validation set.

SCALE-Sim runs from its own environment (`.venv-scalesim/`, created here on
first use from the package registry); one run per array and dataflow.
"""

from __future__ import annotations

import pytest

from backends.systolic.compare import VALIDATION_SET, compare

CONFIGS = [(array, dataflow) for array in VALIDATION_SET for dataflow in ("ws", "os", "is")]


def test_the_validation_set_covers_what_it_should() -> None:
    shapes = [shape for shapes in VALIDATION_SET.values() for shape in shapes]
    assert len(shapes) >= 20
    sizes = [size for array in VALIDATION_SET for size in array]
    assert min(sizes) == 8 and max(sizes) == 64
    assert sum(shape.is_conv for shape in shapes) >= 8
    ragged = [s for (rows, cols), group in VALIDATION_SET.items() for s in group
              if (s.m % rows or s.n % cols or s.k % rows) and not s.is_conv]
    assert len(ragged) >= 8


@pytest.mark.parametrize("array, dataflow", CONFIGS, ids=[f"{r}x{c}-{d}" for (r, c), d in CONFIGS])
def test_compute_cycles_equal_scalesim(array: tuple[int, int], dataflow: str) -> None:
    rows = compare(VALIDATION_SET[array], *array, dataflow)
    for row in rows:
        label = f"{row.shape.describe()} on {row.array} {dataflow}"
        assert row.max_abs_err == 0, label
        # SCALE-Sim reports the index of the last busy cycle; Loom counts the cycles.
        assert row.loom_compute_cycles == row.scalesim_cycles + 1, label
        assert abs(row.relative_difference) <= 0.02, label
        assert row.loom_utilization == pytest.approx(row.scalesim_utilization, abs=0.002), label
        assert row.scalesim_cycles_with_prefetch >= row.scalesim_cycles
        assert row.loom_cycles >= row.loom_compute_cycles
