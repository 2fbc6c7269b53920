"""Drift check: the serving model's reference against a window of its traffic.

Reference: the model's evaluation set (``reference.npz`` inside its BentoML
model): embeddings, image statistics, predictions, labels, groups and
per-stage BatchNorm distances. Current: the latest ``monitor.window``
logged predictions of the model that served last, with the feedback labels
that came back for them.

One check:

1. domain shift: embedding MMD, a Wasserstein distance per image statistic
   and a chi-square test of the predicted classes (``monitoring/shift.py``), with
   thresholds calibrated on the reference for ``monitor.false_alarm_rate``
   (cached per model and window size), run as one Evidently report;
2. where it sits: per-stage BatchNorm distances, early or late;
3. bias: per-group gaps against the reference (``monitoring/bias.py``);
4. the gallery: the window's least familiar images beside typical reference
   images of the same predicted class, per alarmed group too
   (``monitoring/gallery.py``);
5. a report folder ``reports/drift/<time>/`` (Evidently HTML with the
   summary on top, Evidently JSON, ``summary.json``, pictures), the run
   added to the Evidently workspace, the verdict appended to
   ``history.jsonl``.

The folder is written under a temporary name and renamed when complete, so
a failed check never leaves a half report or replaces an earlier one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from monitoring import bias, evidently_report, gallery, shift, summary
from monitoring.accuracy import AccuracyEstimator, fit_estimator
from transferops.commands import run_stage
from transferops.config import Params
from transferops.data.pictures import from_png
from transferops.data.preparation import BASE_REGIME
from transferops.files import write_atomic
from transferops.logs.jsonl import append_jsonl, read_jsonl
from transferops.logs.predictions import (
    latest_model,
    read_feedback,
    read_predictions,
    read_thumbnails,
)
from transferops.models.saved import REFERENCE
from transferops.models.transferability import shift_location

log = logging.getLogger(__name__)
HISTORY, WORKSPACE, CALIBRATION = "history.jsonl", "workspace", "calibration"
TESTS_VERSION = 3  # part of a cached calibration's key: 2 added the classifier test, 3 its
# relabelled draws (monitor.classifier_fits)


@dataclass
class DriftVerdict:
    status: str  # "drift" | "no_drift" | "insufficient_data"
    model_tag: str | None
    window_size: int
    reference_size: int = 0
    shift: bool = False  # a domain-shift test fired
    bias_alarm: bool = False  # a per-group gap alarmed
    tests: dict[str, dict] = field(default_factory=dict)  # test -> value, threshold, fired
    stage_shift: dict[str, float] = field(default_factory=dict)
    shift_location: str | None = None  # early | late, from the BatchNorm distances
    # Accuracy without labels (monitoring/accuracy.py): ATC's estimate, the mean calibrated
    # confidence beside it, the reference's accuracy, and the accuracy measured from the
    # feedback labels that came back for this window (with how many).
    accuracy: dict = field(default_factory=dict)
    # The tests fired against the whole reference but not against this regime of it
    # (the base data or a drop the model was trained on): known traffic, not drift.
    regime: str | None = None
    regime_tests: dict[str, dict] = field(default_factory=dict)  # regime -> rows, fired
    untested: list[str] = field(default_factory=list)  # image statistics with no test, and why
    gallery: list[dict] = field(default_factory=list)  # per gallery: title, images shown
    bias: dict = field(default_factory=dict)
    false_alarm_rate: float | None = None
    window_start: str | None = None
    window_end: str | None = None
    reasons: list[str] = field(default_factory=list)
    report_dir: str | None = None
    workspace_run: str | None = None
    checked_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    @property
    def drift(self) -> bool:
        return self.status == "drift"

    def to_dict(self) -> dict:
        return asdict(self) | {"drift": self.drift}


@dataclass(frozen=True)
class Reference:
    """A model's evaluation set, as monitoring compares traffic with it."""

    embeddings: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    stats: np.ndarray
    stat_names: list[str]
    bn: np.ndarray | None
    bn_stages: list[str]
    regimes: np.ndarray  # per row: "base" or the drop it came from (older references: all base)
    probabilities: np.ndarray | None = None  # (rows, columns): the model's, per row
    columns: list[str] = field(default_factory=list)  # the classes of those columns
    splits: np.ndarray | None = None  # per row: test or val (older references: None)
    # Typical images per class for the gallery (evaluation.typical_rows), and their thumbnails.
    typical_rows: np.ndarray | None = None
    typical_thumbnails: np.ndarray | None = None

    def typical(self) -> dict[str, list[np.ndarray]]:
        """Predicted class -> its typical reference thumbnails (empty for older references)."""
        if self.typical_rows is None or self.typical_thumbnails is None:
            return {}
        out: dict[str, list[np.ndarray]] = {}
        for row, picture in zip(self.typical_rows, self.typical_thumbnails, strict=True):
            out.setdefault(str(self.predictions[row]), []).append(picture)
        return out


def load_reference(model_tag: str) -> Reference:
    """The evaluation-set reference packaged with a BentoML model."""
    from transferops.registry.store import stored_model_dir

    with np.load(stored_model_dir(model_tag) / REFERENCE) as data:  # plain arrays: no pickle
        has_bn = "bn" in data.files
        return Reference(
            embeddings=data["embeddings"],
            predictions=data["predictions"].astype(str),
            labels=data["labels"].astype(str),
            groups=data["groups"].astype(str),
            stats=data["stats"],
            stat_names=data["stat_names"].astype(str).tolist(),
            bn=data["bn"] if has_bn else None,
            bn_stages=data["bn_stages"].astype(str).tolist() if has_bn else [],
            regimes=(
                data["regimes"].astype(str)
                if "regimes" in data.files
                else np.full(len(data["labels"]), BASE_REGIME)
            ),
            probabilities=data["probabilities"],
            columns=data["columns"].astype(str).tolist() if "columns" in data.files else [],
            splits=data["splits"].astype(str) if "splits" in data.files else None,
            typical_rows=data["typical_rows"] if "typical_rows" in data.files else None,
            typical_thumbnails=(
                data["typical_thumbnails"] if "typical_thumbnails" in data.files else None
            ),
        )


def read_window(params: Params) -> tuple[str | None, pd.DataFrame]:
    """The latest ``monitor.window`` predictions of the model that served last."""
    tag = latest_model(params.paths.prediction_log)
    if tag is None:
        return None, read_predictions(params.paths.prediction_log, last=0)
    return tag, read_predictions(params.paths.prediction_log, last=params.monitor.window, model=tag)


def with_feedback(window: pd.DataFrame, log_dir: Path) -> np.ndarray:
    """True labels for the window's rows ("" where none came back)."""
    feedback = read_feedback(log_dir)
    labels = window["request_id"].map(
        dict(zip(feedback["request_id"], feedback["label"], strict=True))
    )
    return labels.fillna("").astype(str).to_numpy()


def calibrate(
    reference: shift.Sample, rows: int, stat_names: list[str], params: Params
) -> shift.Calibration:
    """``shift.calibrate`` with the ``monitor`` settings (uncached)."""
    cfg = params.monitor
    return shift.calibrate(
        reference,
        rows,
        stat_names,
        cfg.false_alarm_rate,
        cfg.calibration_draws,
        params.seed,
        cfg.min_effect,
        cfg.classifier_fits,
    )


def calibration_for(
    reference: shift.Sample, rows: int, stat_names: list[str], params: Params, tag: str
) -> shift.Calibration:
    """Thresholds for windows of ``rows``.

    The draws hold out ``min(rows, reference / 2)`` rows, so every window of at least half
    the reference shares one set of draws: it is computed once per model and settings,
    cached, and rescaled to each window's size (exactly what calibrating for that size gives).
    """
    cfg = params.monitor
    held_out = shift.held_out_rows(rows, len(reference))
    key = json.dumps(
        [TESTS_VERSION, held_out, len(reference), cfg.false_alarm_rate, cfg.calibration_draws,
         cfg.classifier_fits, cfg.embedding_components, cfg.max_rows, cfg.min_effect,
         params.seed],
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = (
        Path(params.paths.reports)
        / "drift"
        / CALIBRATION
        / f"{tag.replace(':', '-')}-{digest}.json"
    )
    if path.is_file():
        calibration = shift.Calibration(**json.loads(path.read_text()))
    else:
        calibration = calibrate(reference, held_out, stat_names, params)
        write_atomic(path, json.dumps(calibration.to_dict()))
    return calibration.for_window(rows)


def sample_rows(n: int, limit: int, seed: int) -> np.ndarray:
    """All of ``n`` rows, or a seeded sample of ``limit`` (``monitor.max_rows``)."""
    rows = np.arange(n)
    return rows if n <= limit else np.sort(np.random.default_rng(seed).choice(n, limit, False))


def reference_sample(reference: Reference, params: Params) -> tuple[PCA, shift.Sample]:
    """The reference as the tests see it, and the PCA fitted on it."""
    rows = sample_rows(len(reference.predictions), params.monitor.max_rows, params.seed)
    sample = reference.embeddings[rows]
    # A team's small dataset may hold few reference images. Components fitted on
    # nearly as many points as there are components hold the reference exactly but
    # shrink every new image towards its mean (a false embedding alarm), so keep at
    # least four reference images per component.
    components = min(params.monitor.embedding_components, max(2, len(sample) // 4))
    pca = PCA(n_components=components, random_state=params.seed)
    embedded = pca.fit_transform(sample)
    return pca, shift.Sample(
        embedded, reference.stats[rows], reference.predictions[rows], features=sample
    )


def window_sample(
    pca: PCA, embeddings: np.ndarray, stats: np.ndarray, predictions: np.ndarray
) -> shift.Sample:
    """A window as the tests see it: PCA coordinates for the MMD, raw embeddings kept."""
    return shift.Sample(pca.transform(embeddings), stats, predictions, features=embeddings)


def report_frame(sample: shift.Sample, stat_names: list[str]) -> pd.DataFrame:
    return evidently_report.frame(
        sample.embeddings, sample.predictions, sample.stats, stat_names, sample.features
    )


def check_drift(params: Params) -> DriftVerdict:
    """Compare the latest traffic window with the serving model's reference; write the report."""
    cfg = params.monitor
    tag, window = read_window(params)
    if tag is None or len(window) < cfg.min_window:
        reason = (
            "no predictions logged yet"
            if tag is None
            else f"{len(window)} predictions < monitor.min_window = {cfg.min_window}"
        )
        return _record(
            params, DriftVerdict("insufficient_data", tag, len(window), reasons=[reason])
        )
    reference = load_reference(tag)
    pca, ref_sample = reference_sample(reference, params)
    tested = window.iloc[sample_rows(len(window), cfg.max_rows, params.seed)]
    stat_names = reference.stat_names
    current = window_sample(
        pca,
        np.stack(tested["embedding"].to_numpy()),
        tested[stat_names].to_numpy(dtype=float),
        tested["label"].to_numpy(dtype=str),
    )
    calibration = calibration_for(ref_sample, len(current), stat_names, params, tag)
    snapshot, values = evidently_report.run_report(
        report_frame(current, stat_names),
        report_frame(ref_sample, stat_names),
        stat_names,
        calibration.thresholds,
    )
    verdict = DriftVerdict(
        "no_drift",
        tag,
        len(window),
        len(ref_sample),
        false_alarm_rate=cfg.false_alarm_rate,
        window_start=window["time"].iloc[0].isoformat(),
        window_end=window["time"].iloc[-1].isoformat(),
    )
    for test, value in values.items():
        threshold = calibration.thresholds[test]
        fired = shift.fires(test, value, threshold)
        detail = _detail(test, current, ref_sample, stat_names)
        verdict.tests[test] = {
            "value": value,
            "threshold": threshold,
            "fired": fired,
            "detail": detail,
        }
        if fired:
            verdict.reasons.append(
                f"{summary.test_title(test)}: {value:.3g} {shift.relation(test)} threshold "
                f"{threshold:.3g} ({detail})"
            )
    verdict.shift = any(t["fired"] for t in verdict.tests.values())
    if verdict.shift:
        known_regime(verdict, current, reference, pca, params)
    untested = sorted(set(stat_names) - set(calibration.tested_stats))
    verdict.untested = [f"{name}: the same for every reference image" for name in untested]
    _locate(verdict, window, reference)
    _judge_bias(verdict, window, reference, params)
    _estimate_accuracy(verdict, window, reference, params)
    verdict.status = "drift" if verdict.shift or verdict.bias_alarm else "no_drift"
    galleries = _galleries(verdict, tested, current, ref_sample, reference, params)
    return _record(params, verdict, snapshot, galleries)


def _galleries(
    verdict: DriftVerdict,
    tested: pd.DataFrame,
    current: shift.Sample,
    reference: shift.Sample,
    full: Reference,
    params: Params,
) -> list[gallery.Gallery]:
    """The window's gallery, and one per group the bias check alarmed on."""
    count = params.monitor.gallery
    if count == 0 or current.features is None or reference.features is None:
        return []
    scores = gallery.unfamiliarity(current.features, reference.features)
    ids = tested["request_id"].to_numpy(dtype=str)
    groups = tested["group"].fillna("").astype(str).to_numpy()
    typical = full.typical()

    def thumbnails(request_ids: list[str]) -> dict[str, np.ndarray]:
        found = read_thumbnails(params.paths.prediction_log, request_ids)
        return {key: from_png(data) for key, data in found.items()}

    wanted = [
        (f"the {count} images of this window least like the reference", np.ones(len(ids), bool))
    ]
    alarmed = list(dict.fromkeys(g["group"] for g in verdict.bias.get("gaps", []) if g["alarm"]))
    wanted += [(f"group '{name}': its least familiar images", groups == name) for name in alarmed]
    built = []
    for title, rows in wanted:
        made = gallery.build(
            title,
            np.where(rows, scores, -np.inf),
            ids,
            current.predictions,
            groups,
            thumbnails,
            typical,
            min(count, int(rows.sum())),
        )
        if made is not None:
            built.append(made)
    verdict.gallery = [g.to_dict() for g in built]
    return built


REGIME_SPLITS = 5  # splits of a regime a window is compared with (known_regime)


def known_regime(
    verdict: DriftVerdict,
    current: shift.Sample,
    reference: Reference,
    pca: PCA,
    params: Params,
) -> None:
    """Whether a window that drifted from the whole reference is like one regime of it.

    After a retrain on a drop (say, labelled blurred images), the reference
    mixes the base data and the drop; traffic that is all base, or all like
    the drop, differs from the mix but is what the model was trained for. Each
    regime with at least ``monitor.min_regime_rows`` rows is tested on its
    own: a seeded sample of the window (at most half the regime's rows)
    against the rest of seeded splits of the regime, with thresholds
    calibrated on the regime for exactly that comparison, a test firing on
    most splits. The first regime
    (largest first) that no test tells apart makes the verdict "known traffic".
    """
    names, counts = np.unique(reference.regimes, return_counts=True)
    usable = [
        (name, int(count))
        for count, name in sorted(zip(counts, names, strict=True), reverse=True)
        if count >= params.monitor.min_regime_rows
    ]
    if len(usable) < 2:  # one regime is the whole reference, already tested
        return
    rng = np.random.default_rng(params.seed)
    for name, count in usable:
        rows = np.flatnonzero(reference.regimes == name)
        rows = rows[sample_rows(len(rows), params.monitor.max_rows, params.seed)]
        part = window_sample(
            pca, reference.embeddings[rows], reference.stats[rows], reference.predictions[rows]
        )
        size = min(len(current), count // 2)
        window = current.take(np.sort(rng.choice(len(current), size, replace=False)))
        tag = f"{verdict.model_tag}@{name}"
        calibration = calibration_for(part, size, reference.stat_names, params, tag)
        # Against the rest of seeded splits of the regime, as each calibration draw
        # compared (at half the regime, scaling the MMD's threshold to the whole regime
        # is too rough); one split's luck would decide alone, so a test counts as fired
        # when it fires on most of REGIME_SPLITS splits.
        thresholds = calibration.against(len(part) - size)
        votes: dict[str, int] = {}
        for _ in range(REGIME_SPLITS):
            rest = part.take(np.sort(rng.choice(len(part), len(part) - size, replace=False)))
            values = shift.scores(window, rest, reference.stat_names, calibration.tested_stats)
            for test, value in values.items():
                votes[test] = votes.get(test, 0) + shift.fires(test, value, thresholds[test])
        fired = [test for test, count in votes.items() if count > REGIME_SPLITS // 2]
        verdict.regime_tests[name] = {"rows": count, "window": size, "fired": fired}
        if not fired:
            verdict.regime = name
            verdict.shift = False
            verdict.reasons.append(
                f"known traffic: the window differs from the whole reference but not from "
                f"its '{name}' part ({count} reference images; {size} window images tested), "
                "which the model was trained on"
            )
            return


def _detail(
    test: str,
    current: shift.Sample,
    reference: shift.Sample,
    stat_names: list[str],
) -> str:
    if test.startswith(shift.STAT):
        i = stat_names.index(test[len(shift.STAT) :])
        ref, cur = reference.stats[:, i], current.stats[:, i]
        return f"mean {ref.mean():.4g} -> {cur.mean():.4g} (reference SD {ref.std():.3g})"
    if test == shift.PREDICTION:
        classes = sorted(set(reference.predictions) | set(current.predictions))
        ref = {c: float(np.mean(reference.predictions == c)) for c in classes}
        cur = {c: float(np.mean(current.predictions == c)) for c in classes}
        c = max(classes, key=lambda k: abs(cur[k] - ref[k]))
        return f"{str(c)!r} predicted {ref[c]:.1%} -> {cur[c]:.1%}"
    if test == shift.CLASSIFIER:
        return f"ROC AUC of a linear classifier on the {current.features.shape[1]}-d embeddings"
    return f"{current.embeddings.shape[1]} principal components"


def _locate(verdict: DriftVerdict, window: pd.DataFrame, reference: Reference) -> None:
    """Per-stage BatchNorm shift and its location, when both sides recorded them."""
    if reference.bn is None:
        return
    logged = [b for b in window["bn"] if isinstance(b, list) and len(b) == len(reference.bn_stages)]
    if len(logged) < len(window) // 2:
        return
    effects = shift.stage_shift(np.asarray(logged, dtype=float), reference.bn, reference.bn_stages)
    verdict.stage_shift = effects
    verdict.shift_location = shift_location({s: abs(v) for s, v in effects.items()})


def accuracy_estimator(reference: Reference) -> AccuracyEstimator | None:
    """ATC fitted on the reference: temperature on its val rows, threshold on its test rows.

    None for references written before the evaluate stage kept splits and columns.
    """
    if reference.splits is None or not reference.columns or reference.probabilities is None:
        return None
    column = {name: i for i, name in enumerate(reference.columns)}
    known = np.array([label in column for label in reference.labels])
    labels = np.array([column.get(label, -1) for label in reference.labels])
    val = np.flatnonzero((reference.splits == "val") & known)
    test = np.flatnonzero((reference.splits == "test") & known)
    if len(val) < 20 or len(test) < 20:
        return None
    return fit_estimator(reference.probabilities, labels, val, test)


def _estimate_accuracy(
    verdict: DriftVerdict, window: pd.DataFrame, reference: Reference, params: Params
) -> None:
    estimator = accuracy_estimator(reference)
    if estimator is None:
        return
    probabilities = np.stack(window["probabilities"].to_numpy()).astype(np.float64)
    labels = with_feedback(window, params.paths.prediction_log)
    labelled = labels != ""
    predictions = window["label"].to_numpy(dtype=str)
    verdict.accuracy = {
        "estimated": estimator.estimate(probabilities),
        "mean_confidence": estimator.mean_confidence(probabilities),
        "reference": estimator.fitted_accuracy,
        "feedback": (
            float(np.mean(predictions[labelled] == labels[labelled])) if labelled.any() else None
        ),
        "feedback_labels": int(labelled.sum()),
        "temperature": estimator.temperature,
        "fitted_rows": estimator.fitted_rows,
    }


def _judge_bias(
    verdict: DriftVerdict, window: pd.DataFrame, reference: Reference, params: Params
) -> None:
    groups = window["group"].fillna("").astype(str).to_numpy()
    labels = with_feedback(window, params.paths.prediction_log)
    predictions = window["label"].to_numpy(dtype=str)
    classes = sorted(
        set(reference.labels) | set(reference.predictions) | set(predictions) | set(labels) - {""}
    )
    result = bias.group_gaps(
        bias.Side(predictions, labels, groups),
        bias.Side(reference.predictions, reference.labels, reference.groups),
        classes,
        params.monitor.bias,
        params.seed,
    )
    verdict.bias = result.to_dict() | {"labelled": int((labels != "").sum())}
    verdict.bias_alarm = bool(result.alarms)
    verdict.reasons += [f"bias: {gap.sentence()}" for gap in result.alarms]


def _record(
    params: Params,
    verdict: DriftVerdict,
    snapshot=None,
    galleries: list[gallery.Gallery] | None = None,
) -> DriftVerdict:
    """Write the report folder (complete, or not at all) and append the verdict to the history."""
    drift_dir = Path(params.paths.reports) / "drift"
    drift_dir.mkdir(parents=True, exist_ok=True)
    if snapshot is not None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        final, staging = drift_dir / stamp, drift_dir / f".{stamp}.partial"
        try:
            html, _ = evidently_report.save_report(snapshot, staging)
            history = [*read_history(drift_dir, verdict.model_tag), verdict.to_dict()]
            pictures = [staging / "drift_history.png", staging / "group_gaps.png"]
            summary.plot_history(history, pictures[0])
            summary.plot_gaps(verdict.bias.get("gaps", []), pictures[1])
            if verdict.accuracy:
                pictures.append(staging / "accuracy.png")
                summary.plot_accuracy(history, pictures[-1])
            if verdict.stage_shift:
                pictures.append(staging / "stage_shift.png")
                summary.plot_stages(verdict.stage_shift, verdict.shift_location, pictures[-1])
            shown = [
                gallery.plot(g, staging / f"gallery_{i}.png") for i, g in enumerate(galleries or [])
            ]
            verdict.report_dir = str(final)
            evidently_report.prepend_to_body(
                html, summary.html_block(verdict.to_dict(), pictures, shown)
            )
            (staging / "summary.json").write_text(json.dumps(verdict.to_dict(), indent=2))
            os.replace(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            verdict.workspace_run = evidently_report.add_to_workspace(
                snapshot, drift_dir / WORKSPACE, f"{verdict.status} {stamp}"
            )
        except Exception as err:  # the report stands on its own; the UI is a convenience
            log.warning("could not add the run to the Evidently workspace: %s", err)
    append_jsonl(drift_dir / HISTORY, verdict.to_dict())
    log.info(
        "drift check: %s (%d predictions of %s) %s",
        verdict.status,
        verdict.window_size,
        verdict.model_tag,
        "; ".join(verdict.reasons),
    )
    return verdict


def read_history(drift_dir: Path, model_tag: str | None = None) -> list[dict]:
    """Every recorded check, oldest first (of one model, when given)."""
    rows = read_jsonl(Path(drift_dir) / HISTORY)
    return [r for r in rows if model_tag is None or r.get("model_tag") == model_tag]


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], check_drift, argv)


if __name__ == "__main__":
    sys.exit(main())
