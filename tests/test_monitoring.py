"""Drift checks with real Evidently reports: calibrated, quiet on unshifted data."""

from pathlib import Path

import numpy as np
import pytest

from flows.traffic import HeldOutPool, png_bytes
from monitoring.drift import calibrate_mmd_threshold, check_drift
from monitoring.evidently_report import embedding_frame, mmd_score, run_drift_report
from pipelines.config import load_params


def test_calibrated_threshold_is_quiet_on_same_distribution_and_fires_on_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(400, 8))
    threshold = calibrate_mmd_threshold(reference, 100, p_value=0.01, draws=100, seed=0)
    quiet = [mmd_score(rng.normal(size=(100, 8)), reference) > threshold for _ in range(20)]
    assert sum(quiet) <= 1, "same distribution: at most a rare false alarm"
    assert mmd_score(rng.normal(0.7, 1, size=(100, 8)), reference) > threshold


def test_report_files_and_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    reference = embedding_frame(rng.normal(size=(200, 4)), ["a", "b"] * 100)
    current = embedding_frame(rng.normal(2, 1, size=(80, 4)), ["a"] * 80)
    scores = run_drift_report(
        reference, current, mmd_threshold=0.01, p_value=0.01, out_dir=tmp_path
    )
    assert scores.embedding_mmd > 0.01
    assert scores.prediction_p_value < 0.01
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert (tmp_path / "report.json").is_file()


@pytest.fixture
def serve_traffic(trained_project: Path, service_client, tmp_path: Path):
    """Send images through the real service app; checks write reports under tmp_path."""
    params = load_params(trained_project, [f"paths.reports={tmp_path / 'reports'}"])
    pool = HeldOutPool(params.data.source, params.paths.prepared, seed=11)

    def send(count: int, shift: str) -> None:
        for image, _ in pool.take(count, shift):
            response = service_client.post(
                "/v1/classify", files=[("images", ("x.png", png_bytes(image), "image/png"))]
            )
            assert response.status_code == 200

    return params, send


def test_drift_verdicts_on_served_traffic(serve_traffic) -> None:
    params, send = serve_traffic
    send(5, "none")
    assert check_drift(params).status == "insufficient_data"
    send(params.monitor.window, "none")
    normal = check_drift(params)
    assert normal.status == "no_drift", normal.reasons
    assert (Path(normal.report_dir) / "report.html").is_file()
    send(params.monitor.window, "blur")
    shifted = check_drift(params)
    assert shifted.status == "drift"
    assert any("MMD" in reason for reason in shifted.reasons), shifted.reasons
    history = (params.paths.reports / "drift" / "history.jsonl").read_text().splitlines()
    assert len(history) == 3
