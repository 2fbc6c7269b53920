"""Domain-shift check: the serving model's reference against a window of traffic.

Reference: the champion's evaluation set (embeddings and predictions, shipped
inside its BentoML model). Current: the latest ``monitor.window`` logged
predictions of that model. Embeddings are projected on a PCA fitted to the
reference. The MMD threshold is calibrated on the reference itself (random
in-distribution splits of the window's size), so the false-alarm rate is set
by ``monitor.p_value``, not by Evidently's default threshold.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA

from monitoring.evidently_report import embedding_frame, mmd_score, run_drift_report
from pipelines.config import Params
from pipelines.evaluate import REFERENCE
from pipelines.predlog import read_predictions
from pipelines.stage import run_stage

log = logging.getLogger(__name__)
HISTORY = "history.jsonl"


@dataclass
class DriftVerdict:
    status: str  # "drift" | "no_drift" | "insufficient_data"
    model_tag: str | None
    window_size: int
    reference_size: int = 0
    embedding_mmd: float | None = None
    mmd_threshold: float | None = None
    prediction_p_value: float | None = None
    p_value: float | None = None
    reasons: list[str] = field(default_factory=list)
    report_dir: str | None = None
    checked_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def drift(self) -> bool:
        return self.status == "drift"


@dataclass(frozen=True)
class Reference:
    embeddings: np.ndarray
    predictions: list[str]


def load_reference(model_tag: str) -> Reference:
    """The evaluation-set reference packaged with a BentoML model."""
    import bentoml

    model_dir = Path(bentoml.models.get(model_tag).path)
    with np.load(model_dir / REFERENCE) as data:  # plain arrays: no pickle
        return Reference(data["embeddings"], data["predictions"].tolist())


def calibrate_mmd_threshold(
    reference: np.ndarray, window: int, p_value: float, draws: int, seed: int
) -> float:
    """The (1 - p_value) quantile of MMD between in-distribution splits of the reference.

    Each draw holds out ``window`` reference rows as a pseudo-window and
    scores it against the rest; with no shift, a real window exceeds this
    threshold with probability about ``p_value`` (a little less, since the
    held-in reference is smaller than the real one).
    """
    rng = np.random.default_rng(seed)
    window = min(window, len(reference) // 2)
    scores = []
    for _ in range(draws):
        order = rng.permutation(len(reference))
        scores.append(mmd_score(reference[order[:window]], reference[order[window:]]))
    return float(np.quantile(scores, 1 - p_value))


def check_drift(params: Params) -> DriftVerdict:
    """Compare the latest traffic window with the serving model's reference."""
    cfg = params.monitor
    logged = read_predictions(params.paths.prediction_log)
    if logged.empty:
        return _record(
            params,
            DriftVerdict("insufficient_data", None, 0, reasons=["no predictions logged yet"]),
        )
    tag = logged["model_tag"].iloc[-1]
    window = logged[logged["model_tag"] == tag].tail(cfg.window)
    if len(window) < cfg.min_window:
        return _record(
            params,
            DriftVerdict(
                "insufficient_data",
                tag,
                len(window),
                reasons=[f"{len(window)} predictions < monitor.min_window = {cfg.min_window}"],
            ),
        )
    reference = load_reference(tag)
    pca = PCA(n_components=cfg.embedding_components, random_state=params.seed)
    ref_z = pca.fit_transform(reference.embeddings)
    cur_z = pca.transform(np.stack(window["embedding"].to_numpy()))
    threshold = calibrate_mmd_threshold(
        ref_z, len(window), cfg.p_value, cfg.calibration_draws, params.seed
    )
    report_dir = (
        Path(params.paths.reports) / "drift" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    )
    scores = run_drift_report(
        embedding_frame(ref_z, reference.predictions),
        embedding_frame(cur_z, window["label"].tolist()),
        mmd_threshold=threshold,
        p_value=cfg.p_value,
        out_dir=report_dir,
    )
    reasons = []
    if scores.embedding_mmd > threshold:
        reasons.append(
            f"embedding MMD {scores.embedding_mmd:.4f} > calibrated threshold {threshold:.4f}"
        )
    if scores.prediction_p_value < cfg.p_value:
        reasons.append(
            f"predicted-class distribution changed (chi-square p = "
            f"{scores.prediction_p_value:.2g} < {cfg.p_value})"
        )
    return _record(
        params,
        DriftVerdict(
            "drift" if reasons else "no_drift",
            tag,
            len(window),
            len(ref_z),
            embedding_mmd=scores.embedding_mmd,
            mmd_threshold=threshold,
            prediction_p_value=scores.prediction_p_value,
            p_value=cfg.p_value,
            reasons=reasons,
            report_dir=str(report_dir),
        ),
    )


def _record(params: Params, verdict: DriftVerdict) -> DriftVerdict:
    """Write the verdict next to its report and append it to the history."""
    drift_dir = Path(params.paths.reports) / "drift"
    drift_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps(asdict(verdict) | {"drift": verdict.drift})
    if verdict.report_dir:
        (Path(verdict.report_dir) / "summary.json").write_text(line)
    with open(drift_dir / HISTORY, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
    log.info(
        "drift check: %s (%d predictions of %s) %s",
        verdict.status,
        verdict.window_size,
        verdict.model_tag,
        "; ".join(verdict.reasons),
    )
    return verdict


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], check_drift, argv)


if __name__ == "__main__":
    sys.exit(main())
