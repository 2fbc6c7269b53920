"""The one place that speaks Evidently (0.7 API: Report, Dataset, DataDefinition).

Evidently changes its API often; the rest of monitoring calls these functions
with plain frames and gets plain numbers back.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

PREDICTION = "predicted_label"


@dataclass(frozen=True)
class DriftScores:
    embedding_mmd: float
    prediction_p_value: float


def embedding_frame(embeddings: np.ndarray, predictions: list[str]) -> pd.DataFrame:
    columns = [f"emb_{i}" for i in range(embeddings.shape[1])]
    frame = pd.DataFrame(embeddings, columns=columns)
    frame[PREDICTION] = list(predictions)
    return frame


def mmd_score(current: np.ndarray, reference: np.ndarray) -> float:
    """Evidently's MMD statistic (RBF kernel, median heuristic) on two samples."""
    from evidently.metrics.embeddings import MMDDriftMethod

    score, _, _ = MMDDriftMethod(threshold=np.inf)(pd.DataFrame(current), pd.DataFrame(reference))
    return float(score)


def run_drift_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    mmd_threshold: float,
    p_value: float,
    out_dir: Path,
) -> DriftScores:
    """Embedding drift (MMD) and predicted-class drift (chi-square) in one report.

    Writes ``report.html`` and ``report.json`` to ``out_dir``.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.metrics.embeddings import MMDDriftMethod

    embedding_columns = [c for c in reference.columns if c.startswith("emb_")]
    definition = DataDefinition(
        numerical_columns=embedding_columns,
        categorical_columns=[PREDICTION],
        embeddings={"embedding": embedding_columns},
    )
    report = Report(
        [
            EmbeddingsDrift(
                embeddings_name="embedding", drift_method=MMDDriftMethod(threshold=mmd_threshold)
            ),
            ValueDrift(column=PREDICTION, method="chisquare", threshold=p_value),
        ]
    )
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition),
        Dataset.from_pandas(reference, data_definition=definition),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    # save_* take a str: a pathlib.Path is silently ignored (ENVIRONMENT.md).
    snapshot.save_html(str(out_dir / "report.html"))
    snapshot.save_json(str(out_dir / "report.json"))
    values = [metric["value"] for metric in snapshot.dict()["metrics"]]
    return DriftScores(embedding_mmd=float(values[0]), prediction_p_value=float(values[1]))
