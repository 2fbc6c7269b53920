"""Drift and bias checks with real Evidently reports: calibrated, quiet on unshifted data."""

import json
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.serving import free_port, http_client
from monitoring import evidently_report, shift
from monitoring.bias import Side, group_gaps
from monitoring.drift import (
    DriftVerdict,
    Reference,
    check_drift,
    known_regime,
    read_history,
    reference_sample,
    window_sample,
)
from services.client import png_bytes
from tests.conftest import ROOT
from transferops.config import BiasParams, load_params
from transferops.data.shifts import CORRUPTIONS, HeldOutPool, corrupt
from transferops.logs.predictions import FILE_GLOB, read_predictions
from transferops.models.transferability import shift_location

STATS = ["width", "height", "brightness", "contrast", "sharpness"]
CLASSES = np.array(list("abcdefghij"))


def synthetic(
    rng: np.random.Generator, n: int, offset: float = 0.0, dims: int = 16
) -> shift.Sample:
    """Gaussian embeddings, integer-valued sizes and skewed grey levels, ten classes."""
    stats = np.column_stack(
        [
            np.full(n, 28.0),
            np.full(n, 28.0),
            rng.gamma(4, 20, n) + offset * 40,
            rng.normal(60, 10, n),
            rng.lognormal(6, 0.5, n),
        ]
    )
    embeddings = rng.normal(offset, 1, (n, dims))
    return shift.Sample(embeddings, stats, rng.choice(CLASSES, n), features=embeddings)


def frame(sample: shift.Sample) -> pd.DataFrame:
    return evidently_report.frame(
        sample.embeddings, sample.predictions, sample.stats, STATS, sample.features
    )


def test_statistics_are_evidently_s_own() -> None:
    """The calibration's numbers and the report's are the same computation."""
    rng = np.random.default_rng(3)
    reference, current = synthetic(rng, 300), synthetic(rng, 120, offset=0.2)
    tested = shift.tested_stats(reference.stats, STATS)
    assert tested == ["brightness", "contrast", "sharpness"], "constant sizes are not tested"
    thresholds = {t: 0.01 for t in shift.test_names(tested, classifier=True)}
    _, reported = evidently_report.run_report(frame(current), frame(reference), STATS, thresholds)
    ours = shift.scores(current, reference, STATS, tested)
    assert reported.keys() == ours.keys() and shift.CLASSIFIER in ours
    for test, value in ours.items():
        assert reported[test] == pytest.approx(value, rel=1e-9, abs=1e-12), test


def test_unshifted_windows_stay_quiet_at_the_calibrated_rate_and_shift_fires() -> None:
    rng = np.random.default_rng(0)
    reference = synthetic(rng, 400)
    calibration = shift.calibrate(reference, 100, STATS, 0.05, draws=300, seed=0, min_effect=0.1)
    assert "stat:width" not in calibration.thresholds, "the same for every reference image"
    assert calibration.thresholds["prediction"] <= 0.05, "never looser than the set rate"
    assert calibration.thresholds["stat:brightness"] >= 0.1, "never under min_effect"

    def alarms(window: shift.Sample) -> bool:
        values = shift.scores(window, reference, STATS, calibration.tested_stats)
        return any(shift.fires(t, v, calibration.thresholds[t]) for t, v in values.items())

    quiet = [alarms(synthetic(rng, 100)) for _ in range(120)]
    # All seven tests together: about 5% of windows; 12 or more would be p < 0.01.
    assert sum(quiet) < 12, f"{sum(quiet)} of 120 unshifted windows alarmed"
    shifted = [alarms(synthetic(rng, 100, offset=0.3)) for _ in range(10)]
    assert all(shifted)


def test_relabelled_classifier_draws_are_its_aucs_and_share_its_null() -> None:
    """A shuffled draw is the AUC roc_auc_score gives those sides (ties count half), and
    shuffles of a few fits spread like new fits on unshifted data."""
    from scipy.stats import ks_2samp
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(6)
    scores = np.r_[np.ones(30), np.zeros(10), rng.random(40)]  # saturated: many ties
    sides = np.r_[np.ones(50, int), np.zeros(30, int)]
    drawn = shift.relabelled_aucs(scores, sides, 5, np.random.default_rng(1))
    chosen = np.random.default_rng(1).random((5, 80)).argsort(1)[:, :50]
    for value, rows in zip(drawn, chosen, strict=True):
        shuffled = np.zeros(80, int)
        shuffled[rows] = 1
        assert value == pytest.approx(roc_auc_score(shuffled, scores), abs=1e-12)

    features = synthetic(rng, 300).features
    splits = [rng.permutation(300) for _ in range(150)]
    fitted = [shift.classifier_auc(features[s[:60]], features[s[60:]]) for s in splits]
    few = [shift.classifier_scores(features[s[:60]], features[s[60:]]) for s in splits[:10]]
    relabelled = np.concatenate([shift.relabelled_aucs(*f, 15, rng) for f in few])
    assert ks_2samp(fitted, relabelled).pvalue > 0.01


def test_windows_over_half_the_reference_share_one_cached_calibration(tmp_path: Path) -> None:
    """One set of draws serves every window of at least half the reference, rescaled to its
    size exactly as calibrating for that size would give, and is computed once."""
    from monitoring.drift import calibration_for

    rng = np.random.default_rng(4)
    reference = synthetic(rng, 200)
    params = load_params(
        ROOT / "params.yaml",
        [f"paths.reports={tmp_path}", "monitor.calibration_draws=100"],
    )
    for rows in (100, 130, 400):
        direct = shift.calibrate(
            reference, rows, STATS, params.monitor.false_alarm_rate, 100, params.seed,
            params.monitor.min_effect, params.monitor.classifier_fits,
        )  # fmt: skip
        shared = calibration_for(reference, rows, STATS, params, "model:tag")
        assert shared.window == rows
        assert shared.thresholds.keys() == direct.thresholds.keys()
        for test, value in direct.thresholds.items():
            assert shared.thresholds[test] == pytest.approx(value, rel=1e-12), (rows, test)
    assert len(list((tmp_path / "drift" / "calibration").iterdir())) == 1
    calibration_for(reference, 40, STATS, params, "model:tag")
    assert len(list((tmp_path / "drift" / "calibration").iterdir())) == 2, "a smaller window"


def test_a_small_reference_does_not_make_new_images_look_shifted() -> None:
    """24 reference images (a team's small test split): PCA keeps few components.

    With as many components as images, PCA holds the reference exactly and shrinks
    new images towards its mean; on the README walk's photographs (23 reference
    images) an unshifted window alarmed. Here: the cap, and quiet unshifted windows.
    """

    from monitoring.drift import Reference, reference_sample

    rng = np.random.default_rng(1)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml", [])
    dims, n = 64, 24

    def sample(rows: int) -> shift.Sample:
        base = synthetic(rng, rows)
        # Network embeddings: a few directions hold most of the variance.
        spread = 1 / np.sqrt(np.arange(1, dims + 1))
        return shift.Sample(rng.normal(0, 1, (rows, dims)) * spread, base.stats, base.predictions)

    ref = sample(n)
    reference = Reference(
        ref.embeddings, ref.predictions, ref.predictions, ref.predictions, ref.stats, STATS,
        None, [], np.full(n, "base"),
    )  # fmt: skip
    pca, projected = reference_sample(reference, params)
    assert pca.n_components_ <= n // 4
    calibration = shift.calibrate(projected, 60, STATS, 0.01, draws=200, seed=0)
    threshold = calibration.thresholds[shift.EMBEDDING]
    alarms = 0
    for _ in range(40):
        window = sample(60)
        embedded = window_sample(pca, window.embeddings, window.stats, window.predictions)
        value = shift.scores(embedded, projected, STATS, calibration.tested_stats)[shift.EMBEDDING]
        alarms += shift.fires(shift.EMBEDDING, value, threshold)
    assert alarms <= 6, f"{alarms} of 40 unshifted windows alarmed on embeddings"


def test_a_darker_window_moves_brightness_only() -> None:
    rng = np.random.default_rng(1)
    reference = synthetic(rng, 400)
    calibration = shift.calibrate(reference, 150, STATS, 0.01, draws=200, seed=1)
    window = synthetic(rng, 150)
    window.stats[:, 2] *= 0.6  # a darker camera; everything else as before
    values = shift.scores(window, reference, STATS, calibration.tested_stats)
    fired = {t for t, v in values.items() if shift.fires(t, v, calibration.thresholds[t])}
    assert fired == {"stat:brightness"}


def test_a_shift_outside_the_top_components_is_caught_by_the_classifier(tmp_path: Path) -> None:
    """JPEG's case in miniature: a small move along a direction of little variance.

    Network embeddings hold most of their variance in a few directions, which the
    MMD's principal components keep; a subtle corruption moves others. The
    classifier on the raw embeddings sees it; the MMD alone does not.
    """
    rng = np.random.default_rng(8)
    params = load_params(
        ROOT / "params.yaml",
        [
            f"paths.reports={tmp_path}",
            "monitor.calibration_draws=200",
            "monitor.embedding_components=8",
        ],
    )
    dims = 96
    spread = 1 / np.arange(1, dims + 1) ** 0.75

    def sample(rows: int, moved: float = 0.0) -> shift.Sample:
        base = synthetic(rng, rows)
        embeddings = rng.normal(0, 1, (rows, dims)) * spread
        embeddings[:, -12:] += moved * spread[-12:]  # twelve weak directions, all the same way
        return shift.Sample(embeddings, base.stats, base.predictions)

    ref = sample(800)
    reference = Reference(
        ref.embeddings, ref.predictions, ref.predictions, ref.predictions, ref.stats, STATS,
        None, [], np.full(800, "base"),
    )  # fmt: skip
    pca, projected = reference_sample(reference, params)
    calibration = shift.calibrate(projected, 200, STATS, 0.01, draws=200, seed=0)
    assert shift.CLASSIFIER in calibration.thresholds

    def fired(window: shift.Sample) -> set[str]:
        current = window_sample(pca, window.embeddings, window.stats, window.predictions)
        values = shift.scores(current, projected, STATS, calibration.tested_stats)
        return {t for t, v in values.items() if shift.fires(t, v, calibration.thresholds[t])}

    moved = [fired(sample(200, moved=1.0)) for _ in range(10)]
    assert sum(shift.CLASSIFIER in f for f in moved) >= 9, moved
    assert sum(shift.EMBEDDING in f for f in moved) <= 2, "the top components hardly moved"
    quiet = [fired(sample(200)) for _ in range(30)]
    assert sum(bool(f) for f in quiet) <= 3, quiet


BIAS = BiasParams(
    min_group_size=30,
    min_labelled=30,
    min_class_labelled=5,
    max_gap_change=0.15,
    confidence=0.99,
    bootstrap=300,
)


def _traffic(rng, groups: dict[str, float], n: int) -> Side:
    """Per group, answers right with the given accuracy; wrong answers are class 'a'."""
    labels, predictions, names = [], [], []
    for group, accuracy in groups.items():
        truth = rng.choice(CLASSES, n)
        right = rng.random(n) < accuracy
        labels.append(truth)
        predictions.append(np.where(right, truth, "a"))
        names.append(np.full(n, group))
    return Side(np.concatenate(predictions), np.concatenate(labels), np.concatenate(names))


@pytest.mark.parametrize(
    ("moved", "where"),
    [
        ({"stem": 3.0, "block0": 2.0, "block1": 0.1, "block2": 0.2}, "early"),
        ({"stem": 0.1, "block0": 0.2, "block1": 2.0, "block2": 3.0}, "late"),
        ({"stem": 1.0, "block0": 1.0, "block1": 1.0, "block2": 1.0}, "late"),  # a tie: late
    ],
)
def test_shift_location_on_known_answers(moved: dict, where: str) -> None:
    assert shift_location(moved) == where


def test_bias_alarm_names_the_degraded_group_with_values_and_interval() -> None:
    rng = np.random.default_rng(5)
    reference = _traffic(rng, {"": 0.9}, 600)  # the evaluation set had no groups
    fair = _traffic(rng, {"north": 0.9, "south": 0.9, "east": 0.9}, 150)
    assert not group_gaps(fair, reference, list(CLASSES), BIAS, seed=0).alarms
    degraded = _traffic(rng, {"north": 0.9, "south": 0.45, "east": 0.9}, 150)
    result = group_gaps(degraded, reference, list(CLASSES), BIAS, seed=0)
    named = {gap.group for gap in result.alarms}
    assert named == {"south"}, [g.sentence() for g in result.alarms]
    accuracy = next(g for g in result.alarms if g.metric == "accuracy")
    assert accuracy.current < -0.3 and accuracy.reference == 0.0
    low, high = accuracy.interval
    assert low <= accuracy.current <= high < 0
    assert "south" in accuracy.sentence() and "accuracy" in accuracy.sentence()


def test_small_groups_and_missing_labels_are_not_judged() -> None:
    rng = np.random.default_rng(6)
    reference = _traffic(rng, {"": 0.9}, 300)
    window = _traffic(rng, {"big": 0.9, "tiny": 0.1}, 40)
    window = Side(window.predictions[:50], window.labels[:50], window.groups[:50])
    unlabelled = Side(window.predictions, np.full(50, ""), window.groups)
    result = group_gaps(unlabelled, reference, list(CLASSES), BIAS, seed=0)
    assert not result.gaps and not result.alarms
    assert any("'tiny'" in s and "min_group_size" in s for s in result.skipped)


# --- checks on traffic through the real service --------------------------------------------


def empty_prediction_store(directory: Path) -> None:
    """Delete every prediction and label in the store; the service's connection stays valid."""
    for store in directory.glob(FILE_GLOB):
        with closing(sqlite3.connect(store, timeout=30)) as db, db:
            db.execute("DELETE FROM predictions")
            db.execute("DELETE FROM feedback")
    assert read_predictions(directory).empty


@pytest.fixture
def serve_traffic(trained_project: Path, service_client, tmp_path: Path):
    """Send images through the real service app; checks write under tmp_path.

    The service is the session's (one app per process), and so is its prediction
    store: each test starts from an empty one, so that it sees only its own traffic
    whichever tests ran before it on this worker.
    """
    params = load_params(
        trained_project,
        [
            f"paths.reports={tmp_path / 'reports'}",
            "monitor.window=240",
            "monitor.bias.min_group_size=60",
            "monitor.bias.min_labelled=60",
        ],
    )
    empty_prediction_store(Path(params.paths.prediction_log))  # the service's: not overridden
    pool = HeldOutPool(params.data.source, params.paths.prepared, seed=11)

    def send(count: int, shift_name: str, group: str | None = None, feedback: bool = False):
        for image, label in pool.take(count, shift_name):
            data = {"group": group} if group else {}
            response = service_client.post(
                "/v1/classify",
                files=[("images", ("x.png", png_bytes(image), "image/png"))],
                data=data,
            )
            assert response.status_code == 200
            if feedback:
                answer = response.json()[0]
                sent = service_client.post(
                    "/v1/feedback", json={"request_id": answer["request_id"], "label": label}
                )
                assert sent.status_code == 200

    return params, send


def test_drift_verdicts_reports_and_workspace_on_served_traffic(serve_traffic) -> None:
    params, send = serve_traffic
    send(5, "none")
    small = params.model_copy(update={"monitor": params.monitor.model_copy(update={"window": 60})})
    assert check_drift(small).status == "insufficient_data", "under monitor.min_window"
    send(60, "none")
    normal = check_drift(small)
    assert normal.status == "no_drift", normal.reasons
    send(60, "blur")
    shifted = check_drift(small)
    assert shifted.status == "drift" and shifted.shift
    assert shifted.tests["embedding"]["fired"] or shifted.tests["stat:sharpness"]["fired"]
    # Every stage of the model is judged, each a finite number of reference SDs, and the
    # location is the documented rule's on those numbers (the rule itself: known answers
    # in test_shift_location_on_known_answers). On this tiny model blur sits "late":
    # the location rule is weak (issue 21), so the test does not pretend otherwise.
    stages = ["stem", *(f"block{i}" for i in range(7)), "head"]
    assert list(shifted.stage_shift) == stages, shifted.stage_shift
    assert all(np.isfinite(v) for v in shifted.stage_shift.values())
    moved = {s: abs(v) for s, v in shifted.stage_shift.items()}
    assert shifted.shift_location == shift_location(moved)

    report = Path(shifted.report_dir)
    html = (report / "report.html").read_text()
    body = html[html.index("<body") :]
    assert body.index('id="transferops-summary"') < 200, "the summary opens the page"
    assert "DRIFT" in body[:3000] and "evidently" in body[3000:].lower(), "then Evidently's"
    for picture in ("drift_history.png", "group_gaps.png", "stage_shift.png", "accuracy.png"):
        assert (report / picture).stat().st_size > 5_000, picture
    # The gallery: the window's least familiar images (with their logged thumbnails),
    # each beside typical reference images of its predicted class.
    (shown,) = shifted.gallery
    blurred = set(read_predictions(params.paths.prediction_log, last=60)["request_id"])
    assert len(shown["images"]) == params.monitor.gallery
    assert {i["request_id"] for i in shown["images"]} <= blurred, "from this window"
    scores = [i["unfamiliarity"] for i in shown["images"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 1
    assert (report / "gallery_0.png").stat().st_size > 5_000
    assert 'class="transferops-gallery"' in body
    # Accuracy without labels, on every check: fitted on the reference's val and test rows.
    for check in (normal, shifted):
        assert check.accuracy["feedback"] is None and check.accuracy["feedback_labels"] == 0
        assert 0 <= check.accuracy["estimated"] <= 1
    assert shifted.accuracy["reference"] == normal.accuracy["reference"]
    assert "Estimated accuracy on this window" in body[:6000]
    summary = json.loads((report / "summary.json").read_text())
    assert summary["status"] == "drift" and summary["reasons"]
    assert json.loads((report / "report.json").read_text())["metrics"]
    assert not list(report.parent.glob(".*.partial")), "no half-written report left"

    history = read_history(params.paths.reports / "drift")
    assert [h["status"] for h in history] == ["insufficient_data", "no_drift", "drift"]
    assert_in_evidently_ui(params.paths.reports / "drift" / "workspace", runs=2)


def assert_in_evidently_ui(workspace: Path, runs: int) -> None:
    """A real `evidently ui` on the workspace lists the project and its runs."""
    import httpx

    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "evidently"), "ui", "--workspace", str(workspace),
         "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                projects = http_client().get(f"http://127.0.0.1:{port}/api/projects").json()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "evidently ui did not start in 60 s"
                time.sleep(0.5)
        project = next(p for p in projects if p["name"] == evidently_report.PROJECT)
        listed = http_client().get(
            f"http://127.0.0.1:{port}/api/projects/{project['id']}/snapshots"
        )
        assert len(listed.json()) == runs, "each check with a report is in the UI"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_failed_report_leaves_the_last_good_one(serve_traffic, monkeypatch) -> None:
    from monitoring import summary

    params, send = serve_traffic
    small = params.model_copy(update={"monitor": params.monitor.model_copy(update={"window": 60})})
    send(60, "none")
    good = check_drift(small)

    def broken(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(summary, "plot_gaps", broken)
    with pytest.raises(OSError, match="disk full"):
        check_drift(small)
    drift_dir = params.paths.reports / "drift"
    folders = [p for p in drift_dir.iterdir() if p.is_dir() and p.name[0].isdigit()]
    assert folders == [Path(good.report_dir)], "only the good report"
    assert not list(drift_dir.glob(".*.partial"))
    assert len(read_history(drift_dir)) == 1, "a failed check is not in the history"


def test_bias_scenario_names_the_degraded_group(serve_traffic) -> None:
    """Group names as callers write them (accents, slashes, @ + : _) reach the pictures intact."""
    params, send = serve_traffic
    north, south, east = "north @shop+1", "south: Zürich Süd/2", "east_Ålesund.øst"
    for group in (north, south, east):
        send(80, "none", group, feedback=True)
    fair = check_drift(params)
    assert not fair.bias_alarm, fair.reasons
    for group, condition in ((north, "none"), (south, "blur"), (east, "none")):
        send(80, condition, group, feedback=True)
    degraded = check_drift(params)
    assert degraded.bias_alarm, degraded.bias
    named = {gap["group"] for gap in degraded.bias["alarms"]}
    assert named == {south}, degraded.reasons
    assert any(r.startswith(f"bias: group '{south}'") for r in degraded.reasons)
    pictures = Path(degraded.report_dir) / "group_gaps.png"
    assert pictures.stat().st_size > 1000, "the per-group picture was drawn"
    # Every image came back labelled: the estimate sits beside the measured accuracy.
    measured = degraded.accuracy
    assert measured["feedback_labels"] == 240 and 0 <= measured["feedback"] <= 1
    assert 0 <= measured["estimated"] <= 1 and measured["temperature"] > 0
    assert (Path(degraded.report_dir) / "accuracy.png").stat().st_size > 5_000
    # A gallery of the alarmed group's own least familiar images, beside the window's.
    assert len(degraded.gallery) == 2 and "this window" in degraded.gallery[0]["title"]
    group_gallery = degraded.gallery[1]
    assert south in group_gallery["title"]
    assert {i["group"] for i in group_gallery["images"]} == {south}
    assert (Path(degraded.report_dir) / "gallery_1.png").stat().st_size > 5_000


def regimes_reference(rng: np.random.Generator) -> tuple[Reference, np.ndarray]:
    """A reference that mixes 400 base rows and 160 rows of a drop unlike them."""
    base, drop = synthetic(rng, 400, dims=40), synthetic(rng, 160, offset=1.0, dims=40)
    joined = [
        np.concatenate([a, b])
        for a, b in zip(
            (base.embeddings, base.stats, base.predictions),
            (drop.embeddings, drop.stats, drop.predictions),
            strict=True,
        )
    ]
    regimes = np.array(["base"] * 400 + ["blur-drop"] * 160)
    reference = Reference(
        embeddings=joined[0], predictions=joined[2], labels=joined[2],
        groups=np.full(560, ""), stats=joined[1], stat_names=STATS, bn=None, bn_stages=[],
        regimes=regimes,
    )  # fmt: skip
    return reference, regimes


def test_a_window_like_one_regime_of_the_reference_is_known_traffic(tmp_path: Path) -> None:
    """Ten windows each: like the base part, like the drop, like neither (a new shift)."""
    rng = np.random.default_rng(5)
    reference, _ = regimes_reference(rng)
    params = load_params(
        ROOT / "params.yaml", [f"paths.reports={tmp_path}", "monitor.calibration_draws=200"]
    )
    pca, _ = reference_sample(reference, params)

    def judged(offset: float) -> list[DriftVerdict]:
        verdicts = []
        for _ in range(10):
            window = synthetic(rng, 200, offset=offset, dims=40)
            current = window_sample(pca, window.embeddings, window.stats, window.predictions)
            verdict = DriftVerdict("drift", "m:1", 200, shift=True)
            known_regime(verdict, current, reference, pca, params)
            for tested in verdict.regime_tests.values():
                assert tested["window"] == min(200, tested["rows"] // 2), "half a regime at most"
            assert verdict.shift is (verdict.regime is None)
            verdicts.append(verdict)
        return verdicts

    # Each regime test alarms on about 1% of windows like it (monitor.false_alarm_rate).
    assert sum(v.regime == "base" for v in judged(0.0)) >= 9
    assert sum(v.regime == "blur-drop" for v in judged(1.0)) >= 9
    new = judged(-1.5)
    assert all(v.regime is None for v in new), "a new shift is unlike every regime"
    assert all(t["fired"] for v in new for t in v.regime_tests.values())
    assert all(set(v.regime_tests) == {"base", "blur-drop"} for v in new)


def test_a_reference_of_one_regime_tests_nothing_more(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    reference, _ = regimes_reference(rng)
    reference.regimes[:] = "base"
    params = load_params(ROOT / "params.yaml", [f"paths.reports={tmp_path}"])
    pca, _ = reference_sample(reference, params)
    window = synthetic(rng, 200, offset=1.0, dims=40)
    current = window_sample(pca, window.embeddings, window.stats, window.predictions)
    verdict = DriftVerdict("drift", "m:1", 200, shift=True)
    known_regime(verdict, current, reference, pca, params)
    assert (verdict.regime, verdict.regime_tests, verdict.shift) == (None, {}, True)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_runs_at_every_severity_and_grows_with_it(name: str) -> None:
    """The benchmark's ladders (a JPEG one failed on a missing import for two issues)."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).convert("L")
    original = np.asarray(image, dtype=float)
    moved = []
    for severity in range(1, 6):
        out = corrupt(image, name, severity, np.random.default_rng(1))
        assert out.mode == "L" and out.size == image.size
        moved.append(np.abs(np.asarray(out, dtype=float) - original).mean())
    assert moved[0] > 0 and moved[-1] >= moved[0], moved


def test_evidently_defaults_as_a_user_gets_them_flag_a_plain_shift() -> None:
    """The benchmark's peer (no calibration): its own methods and thresholds, one flag each."""
    rng = np.random.default_rng(7)
    reference, current = synthetic(rng, 300, dims=20), synthetic(rng, 150, offset=1.0, dims=20)
    flags = evidently_report.default_drift(
        evidently_report.frame(current.embeddings, current.predictions, current.stats, STATS),
        evidently_report.frame(reference.embeddings, reference.predictions, reference.stats, STATS),
        STATS,
    )
    assert set(flags) == {"embedding", *(f"stat:{s}" for s in STATS), "prediction"}
    assert flags["embedding"] and flags["stat:brightness"], flags
    assert not flags["stat:width"], "a column that is the same everywhere never drifts"
