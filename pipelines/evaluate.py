"""Stage ``evaluate``: the saved model end to end on the test images.

Writes ``metrics.json`` (accuracy, macro-F1, per-class precision/recall),
``confusion.png``, and ``reference.npz``: the test set's embeddings,
probabilities, labels and predictions, which monitoring compares traffic with.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)
from tqdm import tqdm

from pipelines.classifier import embed_and_classify, eval_transform, load_classifier
from pipelines.config import Params
from pipelines.datasets import ManifestImages, read_accepted
from pipelines.features import loader_for
from pipelines.runtime import select_device, set_threads
from pipelines.stage import run_stage

log = logging.getLogger(__name__)
METRICS, CONFUSION, REFERENCE = "metrics.json", "confusion.png", "reference.npz"


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, classes: list[str]) -> dict:
    """Headline and per-class metrics as plain floats."""
    indices = list(range(len(classes)))
    precision, recall, _, support = precision_recall_fscore_support(
        labels, predictions, labels=indices, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "macro_f1": float(
            f1_score(labels, predictions, labels=indices, average="macro", zero_division=0)
        ),
        "n": len(labels),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "support": int(s)}
            for name, p, r, s in zip(classes, precision, recall, support, strict=True)
        },
    }


def plot_confusion(
    labels: np.ndarray, predictions: np.ndarray, classes: list[str], path: Path
) -> None:
    matrix = confusion_matrix(labels, predictions, labels=list(range(len(classes))))
    figure, axes = plt.subplots(figsize=(8, 7))
    ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
        ax=axes, xticks_rotation=45, colorbar=False, cmap="Blues"
    )
    axes.set_title("Confusion matrix (test split)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def evaluate(params: Params) -> dict:
    """Score the model on the test split and save the monitoring reference."""
    set_threads(params.threads)
    device = select_device(params.device)
    paths = params.paths
    model, config = load_classifier(paths.model)
    model.to(device)
    manifest = read_accepted(paths.validation)
    dataset = ManifestImages(
        manifest[manifest["split"] == "test"],
        paths.prepared,
        config.classes,
        eval_transform(config),
    )
    embeddings, probabilities = [], []
    for images, _ in tqdm(
        loader_for(dataset, params.features.batch_size, device),
        desc="evaluate",
        unit="batch",
        disable=None,
    ):
        emb, prob = embed_and_classify(model, images.to(device))
        embeddings.append(emb)
        probabilities.append(prob)
    labels, probs = np.asarray(dataset.targets), np.concatenate(probabilities)
    predictions = probs.argmax(1)
    metrics = classification_metrics(labels, predictions, config.classes)
    out_dir = Path(paths.evaluation)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2))
    plot_confusion(labels, predictions, config.classes, out_dir / CONFUSION)
    np.savez(
        out_dir / REFERENCE,
        embeddings=np.concatenate(embeddings),
        probabilities=probs,
        labels=labels,
        predictions=predictions,
    )
    log.info(
        "test accuracy %.3f, macro-F1 %.3f on %d images",
        metrics["accuracy"],
        metrics["macro_f1"],
        metrics["n"],
    )
    return metrics


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
