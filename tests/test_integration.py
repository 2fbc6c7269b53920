"""The skeleton loop for real: a git+DVC repo, Prefect runs, `bentoml serve` on localhost.

Train through the Prefect training flow (`dvc repro` inside), check that a
second `dvc repro` has nothing to do, serve the model with a real
`bentoml serve`, send in-distribution then blurred traffic, and let the
monitoring flow find drift and retrain with a labelled drop of shifted images.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.data import checkout_version
from flows.serving import running_service
from flows.traffic import HeldOutPool, send, write_labelled_drop
from flows.workspace import create_workspace
from pipelines.datasets import read_manifest
from tests.conftest import ROOT, TINY, write_params

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = create_workspace(ROOT, tmp_path_factory.mktemp("repo") / "project")
    write_params(root / "params.yaml", TINY, base=root / "params.yaml")
    return root


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    # First start on a fresh PREFECT_HOME runs migrations: allow for it.
    with prefect_test_harness(server_startup_timeout=90):
        yield


def dvc(repo: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, text=True, capture_output=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_train_serve_detect_drift_and_retrain(
    repo: Path, prefect_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.monitoring import monitoring_flow
    from flows.training import training_flow
    from pipelines.config import load_params

    monkeypatch.chdir(repo)
    params = load_params(repo / "params.yaml")

    first = training_flow()
    assert first["gate"]["promoted"] and first["champion"] == first["model_tag"], "first model"
    lock = (repo / "dvc.lock").read_text()
    assert first["data_version"].endswith(".dir") and first["data_version"] in lock, (
        "the model's data version is DVC's hash of the prepared dataset"
    )
    assert "Data and pipelines are up to date" in dvc(repo, "repro")
    assert any((repo / ".dvcstore").rglob("*")), "dvc push filled the local remote"

    pool = HeldOutPool(params.data.source, params.paths.prepared, params.seed)
    drop = write_labelled_drop(pool.take(100, "blur"), repo.parent / "labelled-blur")
    with running_service(log_file=repo / "serve.log") as url:
        assert send(url, pool.take(params.monitor.window)) > 0.3
        normal = monitoring_flow(retrain=False)
        send(url, pool.take(params.monitor.window, "blur"))
        once = monitoring_flow(retrain=True, new_data=str(drop))
        send(url, pool.take(params.monitor.window, "blur"))
    assert normal["verdict"]["status"] == "no_drift", normal["verdict"]["reasons"]
    assert normal["retrained"] is None
    assert once["verdict"]["status"] == "drift" and once["retrained"] is None
    assert "drift in 1 of the last 2 checks" in once["decision"]["reason"], "K of N: not yet"

    shifted = monitoring_flow(retrain=True, new_data=str(drop))
    assert shifted["verdict"]["status"] == "drift"
    decision = shifted["decision"]
    assert decision["retrain"] and decision["alarms"] == 2, decision
    retrained = shifted["retrained"]
    assert retrained["model_tag"] != first["model_tag"]
    assert retrained["data_version"] != first["data_version"]
    assert (repo / "data" / "incoming" / "labelled-blur.dvc").is_file(), "drop snapshotted"
    record = json.loads((params.paths.package / "bento_model.json").read_text())
    assert record["tag"] == retrained["model_tag"]
    # The decision's strategy is what trained; a surgical run starts from the champion.
    applied = json.loads((params.paths.profile / "decision.json").read_text())
    if decision["strategy"] == "surgical":
        assert applied["strategy"] == "surgical" and applied["forced"]
        assert applied["trainable_stages"] == ["stem", "block0", "classifier"]
        assert any(o.startswith("model.weights=") for o in decision["overrides"])
    else:
        assert applied["strategy"] != "surgical"
    assert "force: null" in (repo / "params.yaml").read_text(), "overrides were for that run"
    # The retrained candidate faced the gate against the first model.
    verdict = json.loads(Path(retrained["gate"]["report"]).read_text())
    assert verdict["champion"] == first["model_tag"] and verdict["n"] > 0
    expected = retrained["model_tag"] if verdict["promote"] else first["model_tag"]
    assert retrained["champion"] == expected

    # The same shifted window checked again: drift, but inside the cooldown.
    again = monitoring_flow(retrain=True)
    assert again["verdict"]["status"] == "drift" and again["retrained"] is None
    assert "cooldown" in again["decision"]["reason"]

    # The first model's data version can be checked out again with DVC.
    restored = checkout_version(first["data_version"], Path("restored"))
    assert len(read_manifest(restored)) == 260, "the first dataset: 100 + 40 + 120 images"


def test_override_runs_a_dvc_experiment(
    repo: Path, prefect_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.training import training_flow

    monkeypatch.chdir(repo)
    before = json.loads((repo / "artifacts/package/bento_model.json").read_text())["tag"]
    outcome = training_flow(overrides=["train.probe_epochs=7"])
    assert "probe_epochs: 7\n" not in (repo / "params.yaml").read_text(), "for that run only"
    assert "probe_epochs: 7\n" in (repo / "dvc.lock").read_text(), "dvc exp run -S applied it"
    assert outcome["model_tag"] != before
    assert outcome["gate"]["reasons"], "the experiment's model faced the gate too"
