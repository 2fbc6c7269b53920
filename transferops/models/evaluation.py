"""Scoring a model on labelled images: metrics with intervals, calibration, groups, pictures.

:func:`score_split` runs a classifier over manifest rows and keeps, per
image, its embedding, probabilities, BatchNorm distances per stage and image
statistics; the metrics (accuracy, macro-F1, expected calibration error with
bootstrap intervals, per class, per group) are plain numpy on class names.
The evaluate stage, the promotion gate and monitoring's reference all use
them. Plotting imports matplotlib lazily, so scoring stays light.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from transferops.config import EvaluateParams
from transferops.data.datasets import ManifestImages, load_rgb
from transferops.data.imagestats import STAT_NAMES, image_statistics
from transferops.data.pictures import PictureSettings, shrink, thumbnail
from transferops.models.bnshift import StageProbe
from transferops.models.classifier import InputSplit, eval_transform
from transferops.models.saved import ClassifierConfig
from transferops.runtime import loader_for, place_model, to_device

log = logging.getLogger(__name__)
NO_GROUP = ""  # how a missing group is stored (string arrays load without pickle)


@dataclass(frozen=True)
class Scored:
    """One model's answers on one set of labelled images, row for row."""

    labels: np.ndarray  # true class names
    predictions: np.ndarray  # predicted class names
    probabilities: np.ndarray  # (n, classes of the model)
    embeddings: np.ndarray  # (n, features)
    groups: np.ndarray  # group names; NO_GROUP where the data has none
    stats: np.ndarray  # (n, len(STAT_NAMES)) of the images as stored
    bn: np.ndarray  # (n, len(bn_stages)): BatchNorm distance per stage
    bn_stages: tuple[str, ...]

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(1)

    @property
    def correct(self) -> np.ndarray:
        return self.labels == self.predictions


class _ImagesWithStats(ManifestImages):
    """Images as the service sees them: shrunk for the model first (``pictures.shrink``)."""

    side = 0  # the model's working side (``InputSplit.side``); set per scoring

    def __getitem__(self, item: int):
        image, scale = shrink(self.load(item), self.side)
        return self.transform(image), self.targets[item], image_statistics(image, scale)


@torch.inference_mode()
def score_split(
    model: torch.nn.Module,
    config: ClassifierConfig,
    frame: pd.DataFrame,
    root: Path,
    batch_size: int,
    device: str,
    desc: str = "evaluate",
) -> Scored:
    """Run ``model`` over the images of ``frame`` (manifest rows under ``root``).

    Labels are compared by name, so a model can be scored on data whose class
    list differs from its own (a champion trained before a class was added).
    """
    from tqdm import tqdm

    names = sorted(set(frame["label"]))
    dataset = _ImagesWithStats(
        frame, root, names, eval_transform(config), config.picture_settings()
    )
    dataset.side = InputSplit(config).side
    model = place_model(model, device).eval()
    probe = StageProbe(model)
    embeddings, probabilities, stats, bn = [], [], [], []
    for images, _, batch_stats in tqdm(
        loader_for(dataset, batch_size, device), desc=desc, unit="batch", disable=None
    ):
        emb, prob, distances = probe.run(to_device(images, device))
        embeddings.append(emb)
        bn.append(distances)
        probabilities.append(prob)
        stats.append(batch_stats.numpy())
    probs = np.concatenate(probabilities)
    classes = np.asarray(config.classes)
    return Scored(
        labels=np.asarray(frame["label"], dtype=str),
        predictions=classes[probs.argmax(1)],
        probabilities=probs,
        embeddings=np.concatenate(embeddings),
        groups=np.asarray(frame["group"].fillna(NO_GROUP), dtype=str),
        stats=np.concatenate(stats).astype(np.float32),
        bn=np.concatenate(bn),
        bn_stages=tuple(probe.stages),
    )


# --- metrics: plain numpy on label names, cheap enough to bootstrap ---------


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float(np.mean(labels == predictions)) if len(labels) else float("nan")


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that occur as label or prediction."""
    if not len(labels):
        return float("nan")
    names, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    truth, guess = codes[: len(labels)], codes[len(labels) :]
    k = len(names)
    hits = np.bincount(truth[truth == guess], minlength=k)
    f1 = 2 * hits / (np.bincount(truth, minlength=k) + np.bincount(guess, minlength=k))
    return float(f1.mean())


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int) -> float:
    """Σ_b (n_b / n) |accuracy_b - confidence_b| over equal-width confidence bins."""
    if not len(confidence):
        return float("nan")
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)
    gap = np.bincount(index, weights=correct.astype(float) - confidence, minlength=bins)
    return float(np.abs(gap).sum() / len(confidence))


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], n: int, resamples: int, level: float, seed: int
) -> tuple[float, float]:
    """Percentile interval of ``statistic(rows)`` over ``resamples`` resamplings of ``n`` rows."""
    if n == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, n, n)) for _ in range(resamples)]
    tail = (1 - level) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail])
    return (float(low), float(high))


def headline_metrics(scored: Scored, cfg: EvaluateParams, seed: int, rows=None) -> dict:
    """Accuracy, macro-F1 and ECE of ``scored`` (or of its ``rows``), with intervals."""
    rows = np.arange(len(scored.labels)) if rows is None else rows
    labels, predictions = scored.labels[rows], scored.predictions[rows]
    confidence, correct = scored.confidence[rows], scored.correct[rows]
    statistics = {
        "accuracy": lambda i: accuracy(labels[i], predictions[i]),
        "macro_f1": lambda i: macro_f1(labels[i], predictions[i]),
        "ece": lambda i: expected_calibration_error(
            confidence[i], correct[i], cfg.calibration_bins
        ),
    }
    everything = np.arange(len(rows))
    metrics: dict = {name: fn(everything) for name, fn in statistics.items()}
    metrics["n"] = len(rows)
    metrics["ci"] = {
        name: bootstrap_interval(fn, len(rows), cfg.bootstrap, cfg.confidence, seed)
        for name, fn in statistics.items()
    }
    return metrics


def per_class(scored: Scored, classes: list[str], rows=None) -> dict:
    """Precision, recall and support of every class (over ``rows``, default all)."""
    rows = np.arange(len(scored.labels)) if rows is None else rows
    labels, predictions = scored.labels[rows], scored.predictions[rows]
    out = {}
    for name in classes:
        predicted, actual = predictions == name, labels == name
        hits = int(np.sum(predicted & actual))
        out[name] = {
            "precision": hits / int(predicted.sum()) if predicted.any() else 0.0,
            "recall": hits / int(actual.sum()) if actual.any() else 0.0,
            "support": int(actual.sum()),
        }
    return out


def group_names(scored: Scored) -> list[str]:
    return sorted(set(scored.groups) - {NO_GROUP})


def evaluation_metrics(scored: Scored, classes: list[str], cfg: EvaluateParams, seed: int) -> dict:
    """Everything ``metrics.json`` holds."""
    metrics = headline_metrics(scored, cfg, seed)
    metrics["confidence_level"] = cfg.confidence
    metrics["per_class"] = per_class(scored, classes)
    metrics["groups"] = {}
    for group in group_names(scored):
        rows = np.flatnonzero(scored.groups == group)
        metrics["groups"][group] = headline_metrics(scored, cfg, seed, rows)
        metrics["groups"][group]["per_class"] = per_class(scored, classes, rows)
    return metrics


# --- pictures ---------------------------------------------------------------


# Above this many classes the confusion matrix is drawn as colour only: a number per cell
# would not fit, and drawing 10,000 of them (100 classes) took matplotlib 15 s.
ANNOTATED_CLASSES = 25


def confusion_counts(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> np.ndarray:
    """Counts of (true class, predicted class), rows and columns in ``classes``' order."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=int)
    rows = [index[label] for label in labels]
    columns = [index[predicted] for predicted in predictions]
    np.add.at(matrix, (rows, columns), 1)
    return matrix


def plot_confusion(scored: Scored, classes: list[str], path: Path) -> None:
    """True class (rows) against predicted class (columns) on the test split."""
    from transferops.figures import new_figure, save_figure

    matrix = confusion_counts(scored.labels, scored.predictions, classes)
    side = min(8 + len(classes) / 10, 20)
    figure, axes = new_figure(figsize=(side, side * 7 / 8))
    image = axes.imshow(matrix, cmap="Blues", interpolation="nearest")
    ticks = np.arange(len(classes))
    title = "Confusion matrix (test split)"
    if len(classes) <= ANNOTATED_CLASSES:
        axes.set_xticks(ticks, classes, rotation=45, ha="right")
        axes.set_yticks(ticks, classes)
        dark = matrix > matrix.max() / 2
        for (row, column), count in np.ndenumerate(matrix):
            colour = "white" if dark[row, column] else "black"
            axes.text(column, row, count, ha="center", va="center", color=colour)
        axes.set(xlabel="predicted class", ylabel="true class", title=title)
    else:  # classes by index, in the model's order (model.json)
        figure.colorbar(image, ax=axes, shrink=0.8, label="images")
        axes.set(xlabel="predicted class (index)", ylabel="true class (index)")
        axes.set_title(f"{title}: {len(classes)} classes")
    save_figure(figure, path)


def plot_reliability(scored: Scored, bins: int, ece: float, path: Path) -> None:
    """Accuracy against confidence per bin; a calibrated model sits on the diagonal."""
    from transferops.figures import new_figure, save_figure

    index = np.clip((scored.confidence * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    hit_rate = np.bincount(index, weights=scored.correct, minlength=bins) / np.maximum(count, 1)
    centres = (np.arange(bins) + 0.5) / bins
    figure, (top, bottom) = new_figure(
        2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(centres[count > 0], hit_rate[count > 0], width=1 / bins, edgecolor="black")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(ylabel="accuracy", ylim=(0, 1), title=f"Reliability (test split), ECE {ece:.3f}")
    top.legend(loc="upper left")
    bottom.bar(centres, count, width=1 / bins, color="grey")
    bottom.set(xlabel="confidence (top probability)", ylabel="images", xlim=(0, 1))
    save_figure(figure, path)


def plot_groups(metrics: dict, path: Path) -> None:
    """Accuracy per group with its bootstrap interval, against the overall accuracy."""
    from transferops.figures import new_figure, save_figure

    groups = metrics["groups"]
    names = list(groups)
    values = np.array([groups[g]["accuracy"] for g in names])
    low = values - np.array([groups[g]["ci"]["accuracy"][0] for g in names])
    high = np.array([groups[g]["ci"]["accuracy"][1] for g in names]) - values
    figure, axes = new_figure(figsize=(max(5, 0.8 * len(names) + 2), 4))
    axes.bar(names, values, yerr=[low, high], capsize=4, color="tab:blue")
    axes.axhline(metrics["accuracy"], color="black", linestyle="--", label="all images")
    labels = [f"{g}\n(n={groups[g]['n']})" for g in names]
    axes.set_xticks(range(len(names)), labels)
    axes.set(ylabel="accuracy", ylim=(0, 1), title="Accuracy per group (test split)")
    axes.legend()
    save_figure(figure, path)


# --- the stage --------------------------------------------------------------


def join_scored(parts: list[Scored]) -> Scored:
    """Several scorings of one model as one, row after row."""
    fields = [f.name for f in dataclasses.fields(Scored) if f.name != "bn_stages"]
    joined = {name: np.concatenate([getattr(p, name) for p in parts]) for name in fields}
    return Scored(**joined, bn_stages=parts[0].bn_stages)


TYPICAL_PER_CLASS = 4  # reference thumbnails per class for the drift report's gallery


def typical_rows(scored: Scored, per_class: int = TYPICAL_PER_CLASS) -> np.ndarray:
    """Per predicted class, the correctly predicted rows nearest the class's mean embedding.

    What a reviewer compares an odd production image with: images the model
    knows well, of the class it gave the odd one. Sorted by class, then nearness.
    """
    chosen = []
    for name in sorted(set(scored.predictions)):
        rows = np.flatnonzero((scored.predictions == name) & scored.correct)
        if not len(rows):
            continue
        centre = scored.embeddings[rows].mean(0)
        distance = np.linalg.norm(scored.embeddings[rows] - centre, axis=1)
        chosen.extend(rows[np.argsort(distance, kind="stable")[:per_class]].tolist())
    return np.asarray(chosen, dtype=int)


def thumbnails_of(
    frame: pd.DataFrame, root: Path, rows: np.ndarray, picture: PictureSettings
) -> np.ndarray:
    """``pictures.thumbnail`` of ``frame``'s images at ``rows`` (manifest paths under ``root``)."""
    paths = frame["path"].to_numpy()
    return np.stack([thumbnail(load_rgb(Path(root) / paths[i], picture)) for i in rows])


def save_reference(
    scored: Scored,
    path: Path,
    splits: np.ndarray,
    regimes: np.ndarray,
    columns: list[str],
    typical: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """The monitoring reference; only plain arrays, so it loads without pickle.

    ``splits`` and ``regimes`` say, row for row, which split and which part of
    the data (``base`` or a drop: ``preparation.regime_of``) each image is;
    ``columns`` names the classes of the probabilities' columns (the model's);
    ``typical``: :func:`typical_rows` and their thumbnails, for the gallery.
    """
    rows, pictures = typical if typical is not None else (np.zeros(0, int), np.zeros((0, 0, 0, 3)))
    classes = sorted(set(scored.labels) | set(scored.predictions))
    np.savez(
        path,
        splits=np.asarray(splits, dtype=str),
        columns=np.asarray(columns, dtype=str),
        regimes=np.asarray(regimes, dtype=str),
        embeddings=scored.embeddings,
        probabilities=scored.probabilities,
        labels=scored.labels,
        predictions=scored.predictions,
        groups=scored.groups,
        stats=scored.stats,
        stat_names=np.asarray(STAT_NAMES),
        bn=scored.bn,
        bn_stages=np.asarray(scored.bn_stages),
        classes=np.asarray(classes),
        typical_rows=rows,
        typical_thumbnails=pictures.astype(np.uint8),
    )
