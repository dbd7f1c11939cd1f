"""Fixtures of the quantization tests: the digits classifier, trained once per
session into a temporary directory by samples/digits/train_digits.py."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGITS_DIR = ROOT / "samples" / "digits"


@dataclass(frozen=True)
class Digits:
    model: Path  # digits_mlp.loom
    weights: Path  # .npz
    calibration: Path  # .npz, x: [128, 64]
    test_x: np.ndarray  # [T, 64]
    test_y: np.ndarray  # [T]


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> Digits:
    spec = importlib.util.spec_from_file_location("train_digits", DIGITS_DIR / "train_digits.py")
    trainer = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = trainer  # its dataclass looks its module up
    spec.loader.exec_module(trainer)
    out = tmp_path_factory.mktemp("digits")
    trainer.main(out)
    test = np.load(out / "digits_test.npz")
    return Digits(DIGITS_DIR / "digits_mlp.loom", out / "digits_mlp.npz", out / "digits_calibration.npz",
                  test["x"], test["y"])
