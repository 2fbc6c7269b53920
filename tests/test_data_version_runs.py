"""Training on a recorded data version after the workspace has moved on.

A real git + DVC workspace: ``dvc repro prepare`` records a first dataset,
then a labelled drop joins the data and ``prepare`` runs again. The training
flow, given the first version, a forced strategy, an override and another
params file, trains on that version alone and leaves params.yaml as it was.
It has a workspace of its own, so it runs beside the loop in
tests/test_integration.py instead of after it.
"""

import json
import logging
from pathlib import Path

import pytest
import yaml

from flows.data import add_dataset, checkout_version
from flows.dvc import run_dvc
from flows.workspace import create_workspace
from tests.conftest import ROOT, TINY, write_params
from transferops.config import RUN_PARAMS, load_params
from transferops.data.datasets import read_manifest
from transferops.data.shifts import HeldOutPool, write_labelled_drop
from transferops.registry.lineage import data_version

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def dvc(repo: Path, *args: str) -> str:
    """``dvc ARGS`` as the flows run it (stage commands find this interpreter)."""
    return run_dvc(list(args), repo, logging.getLogger("dvc"))


def test_train_on_a_recorded_data_version_with_a_forced_strategy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.training import training_flow

    repo = create_workspace(ROOT, tmp_path / "project")
    write_params(repo / "params.yaml", TINY, base=repo / "params.yaml")
    monkeypatch.chdir(repo)
    prepared = repo / "data" / "prepared"
    dvc(repo, "repro", "prepare")
    first = data_version(Path("data/prepared"))
    assert first.endswith(".dir"), "DVC's hash of the prepared dataset"
    # The workspace moves on: a labelled drop joins the data.
    params = load_params(repo / "params.yaml")
    pool = HeldOutPool(params.data.source, params.paths.prepared, params.seed)
    drop = write_labelled_drop(pool.take(200, "blur"), tmp_path / "labelled-blur")
    added = add_dataset(drop, params)
    assert added.status == "passed", added.report
    dvc(repo, "repro", "prepare")
    assert len(read_manifest(prepared)) == 460, "the first 260 images and the drop's 200"
    assert data_version(Path("data/prepared")) != first

    restored = checkout_version(first, Path("restored"))
    assert len(read_manifest(restored)) == 260, "the first dataset: 100 + 40 + 120 images"

    params_before = (repo / "params.yaml").read_bytes()
    other = write_params(repo / "other.yaml", {"train.probe_epochs": 7}, base=repo / "params.yaml")
    outcome = training_flow(
        data_version=first,
        strategy="linear_probe",
        overrides=["train.lr=0.004"],
        params_file=str(other),
    )
    now = read_manifest(prepared)
    assert len(now) == 260, "that version alone, without the drop added since"
    assert now["split"].value_counts().to_dict() == {"test": 120, "train": 100, "val": 40}
    applied = json.loads((repo / "artifacts/profile/decision.json").read_text())
    assert applied["strategy"] == "linear_probe" and applied["forced"]
    assert (repo / "params.yaml").read_bytes() == params_before, "params.yaml never rewritten"
    ran = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["strategy"]["params"]
    changes = ran[str(RUN_PARAMS)]  # what ran is in dvc.lock: other.yaml's value, the override
    assert changes["train.probe_epochs"] == {"value": 7} and changes["train.lr"] == {"value": 0.004}
    assert changes["strategy"]["force"] == {"value": "linear_probe"}
    assert ran["params.yaml"]["train.probe_epochs"] != 7
    emptied = yaml.safe_load((repo / RUN_PARAMS).read_text())
    assert "value" not in json.dumps(emptied), "the run's changes are gone when it ends"
    assert outcome["experiment"] in dvc(repo, "exp", "list", "--name-only")
    assert outcome["gate"]["reasons"], "the experiment's model faced the gate too"
