"""Calibration data checks, activation range choices, the quant-config file
and the mixed scheme's budget."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.artifact import ModelSignature, TensorSpec
from compiler.diagnostics import LoomError
from passes.quant_calibration import AffineParams, calibration_samples, choose_range, load_calibration
from passes.quant_plan import LayerPlan, Settings, choose_mixed, load_settings

SIGNATURE = ModelSignature("m", (TensorSpec("x", (1, 8), "f32"), TensorSpec("t", (2,), "i32")), ())


def arrays(count: int = 5, **changes) -> dict[str, np.ndarray]:
    data = {"x": np.ones((count, 1, 8), np.float32), "t": np.zeros((count, 2), np.int64)}
    return data | changes


def test_samples_are_split_and_cast() -> None:
    samples = calibration_samples(arrays(), SIGNATURE, "c.npz")
    assert len(samples) == 5
    assert samples[0]["x"].shape == (1, 8) and samples[0]["t"].dtype == np.int32
    # an input of batch 1 also takes samples without that dim
    unbatched = calibration_samples(arrays(x=np.ones((5, 8))), SIGNATURE, "c.npz")
    assert unbatched[4]["x"].shape == (1, 8)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"x": np.ones((5, 7))}, r"has shape \[5, 7\], but input x: f32\[1,8\] needs \[S, 1, 8\] or \[S, 8\]"),
        ({"x": np.array(1.0)}, "has shape"),
        ({"x": np.ones((0, 1, 8)), "t": np.zeros((0, 2))}, "holds no samples"),
        ({"x": np.where(np.arange(40).reshape(5, 1, 8) == 17, np.nan, 0.0)}, r"NaN or infinite values \(sample 2\)"),
        ({"x": np.full((5, 1, 8), "a")}, "not numbers"),
        ({"t": np.zeros((4, 2))}, "different sample counts"),
    ],
)
def test_bad_calibration_data_is_reported(changes, message) -> None:
    with pytest.raises(LoomError, match=message):
        calibration_samples(arrays(**changes), SIGNATURE, "c.npz")


def test_calibration_files_are_checked(tmp_path) -> None:
    with pytest.raises(LoomError, match="does not exist"):
        load_calibration(tmp_path / "none.npz", SIGNATURE)
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(LoomError, match="is not an .npz archive"):
        load_calibration(tmp_path / "text.npz", SIGNATURE)
    np.savez(tmp_path / "other.npz", y=np.ones(3))
    with pytest.raises(LoomError, match=r"no array for input\(s\) x, t \(it holds: y\)"):
        load_calibration(tmp_path / "other.npz", SIGNATURE)


# --------------------------------------------------------------------------
# Ranges
# --------------------------------------------------------------------------


@pytest.fixture
def heavy_tailed() -> np.ndarray:
    return np.random.default_rng(3).standard_t(2, 20_000)


def round_trip_error(params: AffineParams, values: np.ndarray) -> float:
    return float(np.mean(np.square(params.round_trip(values) - values)))


def test_minmax_clips_nothing_and_percentile_clips_the_tails(heavy_tailed) -> None:
    minmax = choose_range(heavy_tailed, "minmax", 99.99, False)
    assert minmax.clip_rate(heavy_tailed) == 0
    percentile = choose_range(heavy_tailed, "percentile", 99.0, False)
    assert 0.015 < percentile.clip_rate(heavy_tailed) < 0.025
    assert percentile.scale < minmax.scale


def test_mse_range_beats_the_others_on_its_objective(heavy_tailed) -> None:
    ranges = {m: choose_range(heavy_tailed, m, 99.9, False) for m in ("minmax", "percentile", "mse")}
    errors = {m: round_trip_error(params, heavy_tailed) for m, params in ranges.items()}
    assert errors["mse"] < min(errors["minmax"], errors["percentile"])
    assert ranges["mse"].clip_rate(heavy_tailed) > 0  # it trades a few clipped values for finer steps


@pytest.mark.parametrize("symmetric", [False, True])
def test_zero_is_exact_and_ranges_include_it(symmetric) -> None:
    positive = np.linspace(0.5, 3.0, 100)
    params = choose_range(positive, "minmax", 99.99, symmetric)
    assert params.round_trip(np.zeros(1))[0] == 0
    assert params.zero_point == (0 if symmetric else -128)
    assert params.round_trip(positive.max()) == pytest.approx(3.0, abs=params.scale / 2)


# --------------------------------------------------------------------------
# Config and the mixed scheme
# --------------------------------------------------------------------------


def test_config_overrides_options_and_plans_layers(tmp_path) -> None:
    path = tmp_path / "q.toml"
    path.write_text('method = "percentile"\npercentile = 99.5\ngroup = 32\n'
                    '[layers]\nfc1 = "w4-awq"\nfc2 = "fp32"\nfc3 = "int8"\n')
    settings = load_settings(str(path), Settings(scheme="mixed"))
    assert (settings.method, settings.percentile, settings.group) == ("percentile", 99.5, 32)
    assert settings.layers == {
        "fc1": LayerPlan("w4", group=32, awq=True),
        "fc2": LayerPlan("fp32"),
        "fc3": LayerPlan("int8", per_channel=False),
    }


@pytest.mark.parametrize(
    "text, message",
    [
        ("colour = 1", "unknown key 'colour'"),
        ("symmetric = 1", "'symmetric' has the wrong type"),
        ("group = true", "'group' has the wrong type"),
        ('method = "median"', "unknown range method 'median'"),
        ("bits = 12", r"bit budget must be in \[4, 8\]"),
        ('[layers]\nfc1 = "mixed"', "cannot be 'mixed'"),
        ('[layers]\nfc1 = "int3"', "unknown quantization scheme 'int3' for layer 'fc1'"),
        ("[layers", "cannot read quant config"),
    ],
)
def test_bad_configs_are_reported(tmp_path, text, message) -> None:
    path = tmp_path / "q.toml"
    path.write_text(text)
    with pytest.raises(LoomError, match=message):
        load_settings(str(path), Settings())


def test_mixed_keeps_the_most_important_layers_within_the_budget() -> None:
    names, sizes = ["a", "b", "c", "d"], [100, 100, 400, 400]
    # budget 6 bits over 1000 weights: 2000 extra bits, 4 per weight upgraded
    assert choose_mixed(names, sizes, [1.0, 4.0, 3.0, 2.0], 6.0) == {"b", "c"}
    assert choose_mixed(names, sizes, [1.0, 4.0, 3.0, 2.0], 4.0) == set()
    assert choose_mixed(names, sizes, [1.0, 4.0, 3.0, 2.0], 8.0) == set(names)
    # a large important layer that does not fit is skipped for smaller ones
    assert choose_mixed(names, sizes, [1.0, 2.0, 4.0, 3.0], 5.0) == {"a", "b"}
