"""Train digits_mlp.loom on scikit-learn's digits data set.

    python samples/digits/train_digits.py [OUT_DIR]

writes, to OUT_DIR (default: this directory):

- digits_mlp.npz: the weights (w1, b1, w2, b2, w3, b3), for --weights;
- digits_calibration.npz: x, 128 training images with a leading sample
  dim, for --calibration;
- digits_test.npz: x and the labels y of the held-out test set.

Then, for example:

    loom quantize samples/digits/digits_mlp.loom --weights samples/digits/digits_mlp.npz \\
        --calibration samples/digits/digits_calibration.npz --scheme int8-per-channel -o q.mlir

The data set ships with scikit-learn (no download); training takes about a
second and is deterministic for a given seed.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CALIBRATION_SAMPLES = 128


@dataclass
class DigitsData:
    weights: dict[str, np.ndarray]
    calibration: np.ndarray  # [S, 64] training images
    test_x: np.ndarray  # [T, 64]
    test_y: np.ndarray  # [T]
    train_accuracy: float


def train(seed: int = 0) -> DigitsData:
    """A 64-128-64-10 ReLU MLP fitted with Adam on 75% of the digits."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    classifier = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=300, random_state=seed)
    # The matrices are small: BLAS threads would only contend for the cores.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(train_x, train_y)
    weights = {}
    for index, (w, b) in enumerate(zip(classifier.coefs_, classifier.intercepts_), start=1):
        weights[f"w{index}"] = w.astype(np.float32)
        weights[f"b{index}"] = b.astype(np.float32)
    picked = np.random.default_rng(seed).choice(len(train_x), CALIBRATION_SAMPLES, replace=False)
    return DigitsData(weights, train_x[np.sort(picked)], test_x, test_y.astype(np.int64),
                      float(classifier.score(train_x, train_y)))


def main(out_dir: Path) -> None:
    data = train()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "digits_mlp.npz", **data.weights)
    np.savez(out_dir / "digits_calibration.npz", x=data.calibration)
    np.savez(out_dir / "digits_test.npz", x=data.test_x, y=data.test_y)
    print(f"wrote digits_mlp.npz, digits_calibration.npz, digits_test.npz to {out_dir} "
          f"(training accuracy {data.train_accuracy:.4f})")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent)
