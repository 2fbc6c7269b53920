"""The one place that speaks Evidently (0.7 API: Report, Dataset, DataDefinition, Workspace).

Evidently changes its API often; the rest of monitoring hands these
functions plain frames and calibrated thresholds and gets plain numbers back.
Each test runs with the threshold ``monitoring/shift.py`` calibrated, so the
report's own drift flags agree with the verdict.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.shift import CLASSIFIER, EMBEDDING, PREDICTION, STAT

log = logging.getLogger(__name__)
PREDICTED = "predicted_label"
PROJECT = "transferops drift"


def frame(
    embeddings: np.ndarray,
    predictions: np.ndarray,
    stats: np.ndarray,
    stat_names: list[str],
    features: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per image: embedding coordinates, image statistics, the predicted class, and
    the raw embeddings (``features``) when the classifier test runs."""
    data = pd.DataFrame(embeddings, columns=[f"emb_{i}" for i in range(embeddings.shape[1])])
    if features is not None:
        raw = pd.DataFrame(features, columns=[f"raw_{i}" for i in range(features.shape[1])])
        data = pd.concat([data, raw], axis=1)
    for i, name in enumerate(stat_names):
        data[name] = stats[:, i].astype(float)
    data[PREDICTED] = np.asarray(predictions, dtype=str)
    return data


def run_report(
    current: pd.DataFrame,
    reference: pd.DataFrame,
    stat_names: list[str],
    thresholds: dict[str, float],
):
    """One Evidently report: embedding MMD, the classifier on the raw embeddings (when it
    has a threshold), a normed Wasserstein distance per tested image statistic (those
    with a threshold), predicted classes.

    Returns the snapshot and each test's value by test name.
    """
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod

    embedding_columns = [c for c in current.columns if c.startswith("emb_")]
    raw_columns = [c for c in current.columns if c.startswith("raw_")]
    classifier = CLASSIFIER in thresholds
    if classifier and not raw_columns:
        raise ValueError("a classifier threshold but no raw embeddings in the frames")
    # Every role is given, so Evidently infers none: embedding coordinates are only embeddings
    # (profiling 1,312 columns as numerical took 4 s a check and showed nothing).
    definition = DataDefinition(
        numerical_columns=list(stat_names),
        categorical_columns=[PREDICTED],
        datetime_columns=[],
        text_columns=[],
        list_columns=[],
        unknown_columns=[*embedding_columns, *raw_columns],
        embeddings={"embedding": embedding_columns}
        | ({"raw embedding": raw_columns} if classifier else {}),
    )
    tests = [
        (
            EMBEDDING,
            EmbeddingsDrift(
                embeddings_name="embedding",
                drift_method=MMDDriftMethod(threshold=thresholds[EMBEDDING]),
            ),
        )
    ]
    if classifier:
        method = ModelDriftMethod(threshold=thresholds[CLASSIFIER], bootstrap=False)
        tests.append(
            (CLASSIFIER, EmbeddingsDrift(embeddings_name="raw embedding", drift_method=method))
        )
    tests += [
        (
            STAT + name,
            ValueDrift(column=name, method="wasserstein", threshold=thresholds[STAT + name]),
        )
        for name in stat_names
        if STAT + name in thresholds
    ]
    tests.append(
        (
            PREDICTION,
            ValueDrift(column=PREDICTED, method="chisquare", threshold=thresholds[PREDICTION]),
        )
    )
    with _embedding_pictures_by_pca():
        snapshot = Report([metric for _, metric in tests]).run(
            Dataset.from_pandas(current, data_definition=definition),
            Dataset.from_pandas(reference, data_definition=definition),
        )
    values = [float(m["value"]) for m in snapshot.dict()["metrics"]]
    return snapshot, dict(zip([name for name, _ in tests], values, strict=True))


class _PrincipalPlane:
    """Stands in for scikit-learn's TSNE where Evidently draws an embedding set's picture:
    the first two principal components of the rows it is given (``fit_transform`` only)."""

    def __init__(self, n_components: int = 2, **_: object) -> None:
        self.n_components = n_components

    def fit_transform(self, rows: pd.DataFrame) -> np.ndarray:
        from sklearn.decomposition import PCA

        return PCA(n_components=self.n_components, random_state=0).fit_transform(rows)


_picture_lock = threading.Lock()


@contextlib.contextmanager
def _embedding_pictures_by_pca() -> Iterator[None]:
    """Evidently 0.7's ``EmbeddingsDrift`` draws its picture from a t-SNE of up to 3,500 rows:
    1,000 gradient steps, about 5 s per embedding set on 2 CPUs, longer than every test of a
    check together. The picture is drawn from the principal plane instead (the subspace the
    MMD test reads, in milliseconds). Only the picture changes: the test values do not read
    it. Patched for the report's run only, under a lock, and restored after."""
    from evidently.legacy.metrics.data_drift import embeddings_drift

    with _picture_lock:
        original = embeddings_drift.TSNE
        embeddings_drift.TSNE = _PrincipalPlane
        try:
            yield
        finally:
            embeddings_drift.TSNE = original


def default_drift(
    current: pd.DataFrame, reference: pd.DataFrame, stat_names: list[str]
) -> dict[str, bool]:
    """What Evidently decides out of the box, per test: drifted or not.

    The embedding method a user gets by default (a classifier told to separate
    the two sets, drift above ROC AUC 0.55; with a bootstrap when the
    reference has fewer than 1,000 rows, as ``EmbeddingsDriftMetric`` picks),
    and the default test of each column for its type and size (K-S or
    chi-square at p < 0.05 up to 1,000 reference rows, Wasserstein or
    Jensen-Shannon at 0.1 above). For the drift benchmark's peer
    (``benchmarks/drift_power.py``); the check itself uses calibrated thresholds.
    """
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model

    embedding_columns = [c for c in current.columns if c.startswith("emb_")]
    method = model(bootstrap=len(reference) < 1000)
    _, drifted, _ = method(current[embedding_columns], reference[embedding_columns])
    flags = {EMBEDDING: bool(drifted)}
    columns = [(STAT + n, n, ColumnType.Numerical) for n in stat_names]
    for test, column, kind in [*columns, (PREDICTION, PREDICTED, ColumnType.Categorical)]:
        stattest = get_stattest(reference[column], current[column], kind, None)
        flags[test] = bool(stattest(reference[column], current[column], kind, None).drifted)
    return flags


def save_report(snapshot, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    html, json_path = out_dir / "report.html", out_dir / "report.json"
    # save_* take a str: a pathlib.Path is silently ignored (ENVIRONMENT.md).
    snapshot.save_html(str(html))
    snapshot.save_json(str(json_path))
    return html, json_path


def add_to_workspace(snapshot, workspace: Path, name: str) -> str:
    """Add the run to the Evidently workspace (``evidently ui --workspace DIR``); its id."""
    from evidently.ui.workspace import Workspace

    ws = Workspace.create(str(workspace))
    projects = ws.search_project(PROJECT)
    project = projects[0] if projects else ws.create_project(PROJECT)
    if not projects:
        project.description = "transferops: every drift check of the serving model"
        project.save()
    ref = ws.add_run(project.id, snapshot, include_data=False, name=name)
    return str(getattr(ref, "id", ref))


def prepend_to_body(html_path: Path, block: str) -> None:
    """Put ``block`` first in the report's body, so the summary opens the page."""
    text = html_path.read_text(encoding="utf-8")
    start = text.find("<body")
    end = text.find(">", start) + 1
    if start < 0 or end <= 0:
        raise ValueError(f"{html_path}: no <body> to put the summary in")
    html_path.write_text(text[:end] + block + text[end:], encoding="utf-8")
