"""Accuracy without labels (monitoring/accuracy.py) on probabilities with a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.accuracy import fit_estimator, fit_temperature, rescaled

CLASSES = 10


def calibrated(rng: np.random.Generator, n: int, a: float, b: float):
    """Probabilities whose top confidence is exactly the chance of being right.

    Returns (probabilities, label columns): the top class holds c ~ Beta(a, b),
    the rest share 1 - c evenly; the true label is the top class with chance c.
    """
    confidence = np.clip(rng.beta(a, b, n), 1 / CLASSES + 1e-3, 1 - 1e-6)
    top = rng.integers(0, CLASSES, n)
    probabilities = np.repeat(((1 - confidence) / (CLASSES - 1))[:, None], CLASSES, axis=1)
    probabilities[np.arange(n), top] = confidence
    right = rng.random(n) < confidence
    other = (top + rng.integers(1, CLASSES, n)) % CLASSES
    return probabilities, np.where(right, top, other)


def fitted(rng: np.random.Generator):
    """An estimator fitted on an overconfident network's view of 2,000 labelled images."""
    source, labels = calibrated(rng, 2000, 8, 2)
    rows = np.arange(2000)
    return fit_estimator(rescaled(source, 0.5), labels, rows[:1000], rows[1000:]), source, labels


def test_temperature_undoes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    probabilities, labels = calibrated(rng, 4000, 6, 3)
    overconfident = rescaled(probabilities, 0.5)  # what an overconfident network says
    assert fit_temperature(overconfident, labels) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(probabilities, labels) == pytest.approx(1.0, rel=0.1)


def test_the_threshold_reproduces_the_accuracy_it_was_fitted_on() -> None:
    rng = np.random.default_rng(1)
    estimator, source, labels = fitted(rng)
    held = np.arange(1000, 2000)
    truth = float(np.mean(source[held].argmax(1) == labels[held]))
    assert estimator.fitted_accuracy == pytest.approx(truth)
    assert estimator.estimate(rescaled(source[held], 0.5)) == pytest.approx(truth, abs=0.002)
    fresh, fresh_labels = calibrated(rng, 2000, 8, 2)  # same kind of images, unseen
    fresh_truth = float(np.mean(fresh.argmax(1) == fresh_labels))
    assert abs(estimator.estimate(rescaled(fresh, 0.5)) - fresh_truth) < 0.03


def test_a_share_of_unrecognisable_images_lowers_the_estimate_by_that_share() -> None:
    """New images the model cannot read: low confidence, wrong at chance."""
    rng = np.random.default_rng(2)
    estimator, _, _ = fitted(rng)
    known, known_labels = calibrated(rng, 1400, 8, 2)
    unknown, unknown_labels = calibrated(rng, 600, 1.2, 8)
    window = np.concatenate([known, unknown])
    labels = np.concatenate([known_labels, unknown_labels])
    truth = float(np.mean(window.argmax(1) == labels))
    assert truth < 0.7, "the window really is worse"
    assert abs(estimator.estimate(rescaled(window, 0.5)) - truth) < 0.05


def test_mean_confidence_is_exact_while_calibration_holds() -> None:
    rng = np.random.default_rng(3)
    estimator, _, _ = fitted(rng)
    for a, b in ((8, 2), (5, 3), (3, 3)):
        window, labels = calibrated(rng, 3000, a, b)
        truth = float(np.mean(window.argmax(1) == labels))
        assert abs(estimator.mean_confidence(rescaled(window, 0.5)) - truth) < 0.03
