"""Stage ``evaluate``: the saved model end to end on the test images.

Writes ``metrics.json`` (accuracy, macro-F1 and expected calibration error
with bootstrap confidence intervals, per-class precision and recall, the same
per group when the data has groups), pictures (``confusion.png``,
``reliability.png``, ``groups.png`` with groups), and ``reference.npz``: the
test images' embeddings, probabilities, labels, predictions, groups and image
statistics, which monitoring compares production traffic with.

The scoring and metrics live in ``transferops/models/evaluation.py``; the
promotion gate scores champion and challenger with the same functions.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from transferops.commands import run_stage
from transferops.config import Params
from transferops.data.datasets import read_accepted
from transferops.data.preparation import regime_of
from transferops.models.classifier import load_classifier
from transferops.models.evaluation import (
    evaluation_metrics,
    join_scored,
    plot_confusion,
    plot_groups,
    plot_reliability,
    save_reference,
    score_split,
    thumbnails_of,
    typical_rows,
)
from transferops.models.saved import CONFUSION, GROUPS, METRICS, REFERENCE, RELIABILITY
from transferops.runtime import select_device, set_threads

log = logging.getLogger(__name__)


def evaluate(params: Params) -> dict:
    """Score the model on the test split; write metrics, pictures and the reference.

    The monitoring reference is the test and validation splits together (more
    rows: steadier drift thresholds), each row with its regime (the base data
    or the drop it came from, docs/monitoring.md).
    """
    set_threads(params.threads)
    device = select_device(params.device)
    paths, cfg = params.paths, params.evaluate
    model, config = load_classifier(paths.model)
    manifest = read_accepted(paths.validation)
    test = manifest[manifest["split"] == "test"]
    scored = score_split(model, config, test, paths.prepared, params.features.batch_size, device)
    metrics = evaluation_metrics(scored, config.classes, cfg, params.seed)
    metrics["domains"] = domain_accuracy(scored, test, paths.incoming)
    out_dir = Path(paths.evaluation)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_confusion(scored, config.classes, out_dir / CONFUSION)
    plot_reliability(scored, cfg.calibration_bins, metrics["ece"], out_dir / RELIABILITY)
    if metrics["groups"]:
        plot_groups(metrics, out_dir / GROUPS)
    else:  # not a DVC output: it exists only for data with groups
        (out_dir / GROUPS).unlink(missing_ok=True)
    val = manifest[manifest["split"] == "val"]
    batch = params.features.batch_size
    reference = join_scored(
        [scored, score_split(model, config, val, paths.prepared, batch, device, "reference")]
    )
    rows = pd.concat([test, val])
    regimes = [regime_of(source, paths.incoming) for source in rows["source"]]
    typical = typical_rows(reference)
    save_reference(
        reference,
        out_dir / REFERENCE,
        rows["split"].to_numpy(),
        np.asarray(regimes),
        config.classes,
        (typical, thumbnails_of(rows, paths.prepared, typical, config.picture_settings())),
    )
    (out_dir / METRICS).write_text(json.dumps(metrics, indent=2))
    low, high = metrics["ci"]["accuracy"]
    log.info(
        "test accuracy %.3f (%.0f%% interval %.3f-%.3f), macro-F1 %.3f, ECE %.3f on %d images",
        metrics["accuracy"],
        100 * cfg.confidence,
        low,
        high,
        metrics["macro_f1"],
        metrics["ece"],
        metrics["n"],
    )
    return metrics


def domain_accuracy(scored, test: pd.DataFrame, incoming: Path) -> dict[str, dict]:
    """Test accuracy per domain (the base data, each drop): what the model was trained on,
    and what the gate scores apart (``gate.max_forgetting``)."""
    domains = np.asarray([regime_of(source, incoming) for source in test["source"]])
    return {
        domain: {
            "n": int((domains == domain).sum()),
            "accuracy": float(scored.correct[domains == domain].mean()),
        }
        for domain in sorted(set(domains))
    }


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
