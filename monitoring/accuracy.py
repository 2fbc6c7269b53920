"""Accuracy without labels: Average Thresholded Confidence on calibrated confidences.

Feedback labels arrive late or never; reviewers still ask how accurate the
model is on today's traffic. ATC (Garg et al., "Leveraging Unlabeled Data to
Predict Out-of-Distribution Performance", ICLR 2022) learns one threshold on
labelled data: the score above which the share of images equals the
accuracy there. On unlabelled traffic, the share of images above that
threshold is the estimate. The score is the negative entropy of the class
probabilities after temperature scaling (Guo et al. 2017), the paper's best
variant; the temperature is fitted on the reference's validation rows and the
threshold on its test rows, so neither is fitted on the rows it is judged by.
NannyML's CBPE averages calibrated confidences instead; ATC was chosen for
being less sensitive to the calibration drifting with the images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar

TEMPERATURES = (0.05, 20.0)  # the range the temperature is searched in


def _log_probabilities(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1.0))


def rescaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax(log p / T): the same ranking of classes, confidences sharpened or softened."""
    z = _log_probabilities(probabilities) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probabilities: np.ndarray, label_columns: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the true labels."""
    logp = _log_probabilities(probabilities)
    rows = np.arange(len(logp))

    def nll(temperature: float) -> float:
        z = logp / temperature
        z -= z.max(axis=1, keepdims=True)
        return float(-(z[rows, label_columns] - np.log(np.exp(z).sum(axis=1))).mean())

    return float(minimize_scalar(nll, bounds=TEMPERATURES, method="bounded").x)


def negative_entropy(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(probabilities, 1e-12, 1.0)
    return (p * np.log(p)).sum(axis=1)


@dataclass(frozen=True)
class AccuracyEstimator:
    """A fitted estimator; ``estimate`` needs only the model's probabilities."""

    temperature: float
    threshold: float  # on the negative entropy of the rescaled probabilities
    fitted_accuracy: float  # the accuracy on the rows the threshold was fitted on
    fitted_rows: int

    def scores(self, probabilities: np.ndarray) -> np.ndarray:
        return negative_entropy(rescaled(probabilities, self.temperature))

    def estimate(self, probabilities: np.ndarray) -> float:
        """ATC: the share of images scoring above the threshold."""
        return float(np.mean(self.scores(probabilities) > self.threshold))

    def mean_confidence(self, probabilities: np.ndarray) -> float:
        """The peer (CBPE-like): the mean calibrated top probability; exact while the
        calibration holds on the new images, optimistic when a shift breaks it."""
        return float(rescaled(probabilities, self.temperature).max(axis=1).mean())

    def to_dict(self) -> dict:
        return asdict(self)


def fit_estimator(
    probabilities: np.ndarray,
    label_columns: np.ndarray,
    calibration_rows: np.ndarray,
    threshold_rows: np.ndarray,
) -> AccuracyEstimator:
    """Temperature on ``calibration_rows``, ATC threshold on ``threshold_rows``.

    ``label_columns``: each row's true class as a column of ``probabilities``.
    The threshold is the score quantile at one minus the accuracy, so that the
    share of those rows above it equals their accuracy.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    temperature = fit_temperature(probabilities[calibration_rows], label_columns[calibration_rows])
    held = probabilities[threshold_rows]
    correct = held.argmax(axis=1) == label_columns[threshold_rows]
    accuracy = float(correct.mean())
    scores = negative_entropy(rescaled(held, temperature))
    threshold = (
        float(np.quantile(scores, 1.0 - accuracy))
        if 0 < accuracy < 1
        else (float(scores.min()) - 1e-9 if accuracy == 1 else float(scores.max()))
    )
    return AccuracyEstimator(temperature, threshold, accuracy, len(threshold_rows))
