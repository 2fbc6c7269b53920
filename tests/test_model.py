"""Evaluation outputs on a really trained tiny model, and the metrics behind them."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import f1_score

from transferops.config import EvaluateParams, load_params
from transferops.data.imagestats import STAT_NAMES
from transferops.models.evaluation import (
    Scored,
    bootstrap_interval,
    evaluation_metrics,
    expected_calibration_error,
    macro_f1,
    plot_groups,
)


def test_evaluation_writes_metrics_pictures_and_reference(trained_project: Path) -> None:
    params = load_params(trained_project)
    out = params.paths.evaluation
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 120
    assert metrics["accuracy"] > 0.4, "10 classes: chance is 0.1"
    low, high = metrics["ci"]["accuracy"]
    assert low < metrics["accuracy"] < high and high - low < 0.3
    assert 0 <= metrics["ece"] <= 1 and metrics["groups"] == {}, "Fashion-MNIST has no groups"
    assert set(metrics["per_class"]) >= {"bag", "trouser"}
    for picture in ("confusion.png", "reliability.png"):
        assert (out / picture).stat().st_size > 10_000
    with np.load(out / "reference.npz") as ref:  # allow_pickle is off by default
        assert ref["embeddings"].shape == (160, 1280), "test (120) and val (40) images"
        assert list(ref["splits"]) == ["test"] * 120 + ["val"] * 40
        assert (ref["regimes"] == "base").all(), "no drops in this project"
        assert np.allclose(ref["probabilities"].sum(1), 1, atol=1e-4)
        assert set(ref["predictions"]) <= set(ref["classes"])
        assert list(ref["stat_names"]) == list(STAT_NAMES)
        width, height, brightness, contrast, sharpness = ref["stats"].T
        assert (width == 28).all() and (height == 28).all(), "Fashion-MNIST is 28x28"
        assert 0 < brightness.mean() < 255 and contrast.min() > 0 and sharpness.min() > 0
        assert (ref["groups"] == "").all()


def test_macro_f1_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.choice(list("abcde"), 300)
    predictions = np.where(rng.random(300) < 0.6, labels, rng.choice(list("abcdef"), 300))
    assert macro_f1(labels, predictions) == pytest.approx(
        f1_score(labels, predictions, average="macro")
    )


def test_expected_calibration_error() -> None:
    # Two bins: confidence 0.9 right 90% of the time, 0.6 right 30%: ECE = 0.5 * 0 + 0.5 * 0.3.
    confidence = np.array([0.9] * 10 + [0.6] * 10)
    correct = np.array([1] * 9 + [0] + [1] * 3 + [0] * 7, dtype=bool)
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx(0.15)


def test_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(100):
        hits = rng.random(200) < 0.7
        low, high = bootstrap_interval(lambda i, h=hits: h[i].mean(), 200, 300, 0.95, trial)
        covered += low <= 0.7 <= high
    assert 88 <= covered <= 100


def test_metrics_and_picture_per_group(tmp_path: Path) -> None:
    labels = np.array(["cat", "dog"] * 50)
    predictions = labels.copy()
    predictions[:20] = np.where(labels[:20] == "cat", "dog", "cat")  # group "night": 20 wrong
    groups = np.array(["night"] * 40 + ["day"] * 60)
    probabilities = np.full((100, 2), 0.5)
    scored = Scored(
        labels,
        predictions,
        probabilities,
        np.zeros((100, 4)),
        groups,
        np.zeros((100, 5)),
        np.zeros((100, 2)),
        ("stem", "head"),
    )
    cfg = EvaluateParams(calibration_bins=10, bootstrap=200, confidence=0.9)
    metrics = evaluation_metrics(scored, ["cat", "dog"], cfg, seed=0)
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["groups"]["night"]["accuracy"] == pytest.approx(0.5)
    assert metrics["groups"]["day"]["accuracy"] == 1.0
    assert metrics["groups"]["night"]["n"] == 40
    assert metrics["groups"]["night"]["per_class"]["cat"]["recall"] == pytest.approx(0.5)
    low, high = metrics["groups"]["night"]["ci"]["accuracy"]
    assert low < 0.5 < high
    plot_groups(metrics, tmp_path / "groups.png")
    assert (tmp_path / "groups.png").stat().st_size > 5_000
