"""The way past one machine, on one machine: a work pool and a worker; runs on old data.

``transferops deploy --work-pool`` registers the deployments on a Prefect
process work pool (a Docker or Kubernetes pool takes the same command plus
``--image``), and ``prefect worker start`` runs what the pool is given: here
a training run, started through the API as an automation would, and the drift
check on its cron schedule, which only a real server's scheduler starts.

The training run is the one a team starts after the workspace has moved on:
``dvc repro prepare`` recorded a first dataset, a labelled drop joined the
data and ``prepare`` ran again. Given the first version, a forced strategy,
an override and another params file, the run trains on that version alone
and leaves params.yaml as it was. (One workspace and one training for both
stories: a training run costs a minute and a half of the suite on 2 cores.)
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.data import add_dataset, checkout_version
from flows.deploy import MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT
from flows.dvc import run_dvc
from flows.prefect_server import (
    api_post,
    deployment,
    prefect_command,
    server_env,
    wait_for_run,
)
from flows.serving import stop_server
from flows.workspace import create_workspace
from tests.conftest import ROOT, TINY, own_prefect_server, write_params
from transferops.config import RUN_PARAMS, load_params
from transferops.data.datasets import read_manifest
from transferops.data.shifts import HeldOutPool, write_labelled_drop
from transferops.logs.runs import read_records
from transferops.registry.lineage import data_version

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POOL = "transferops-local"


def dvc(repo: Path, *args: str) -> str:
    """``dvc ARGS`` as the flows run it (stage commands find this interpreter)."""
    return run_dvc(list(args), repo, logging.getLogger("dvc"))


def moved_on(repo: Path) -> str:
    """A first dataset recorded, then a labelled drop of 200 added: the first's DVC hash.

    Run from ``repo``: DVC's hashes are found by the path dvc.lock names.
    """
    prepared = Path("data") / "prepared"
    dvc(repo, "repro", "prepare")
    first = data_version(prepared)
    assert first.endswith(".dir"), "DVC's hash of the prepared dataset"
    params = load_params(repo / "params.yaml")
    pool = HeldOutPool(params.data.source, params.paths.prepared, params.seed)
    drop = write_labelled_drop(pool.take(200, "blur"), repo.parent / "labelled-blur")
    added = add_dataset(drop, params)
    assert added.status == "passed", added.report
    dvc(repo, "repro", "prepare")
    assert len(read_manifest(prepared)) == 460, "the first 260 images and the drop's 200"
    assert data_version(prepared) != first
    return first


def test_a_worker_trains_on_a_recorded_data_version_and_runs_the_cron_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, empty_prefect_db: Path
) -> None:
    repo = create_workspace(ROOT, tmp_path / "project")
    every_minute = {"orchestrate.monitor_cron": "* * * * *"}
    write_params(repo / "params.yaml", TINY | every_minute, base=repo / "params.yaml")
    monkeypatch.chdir(repo)  # the params' paths are relative to the workspace
    first = moved_on(repo)
    restored = checkout_version(first, Path("restored"))
    assert len(read_manifest(restored)) == 260, "the first dataset: 100 + 40 + 120 images"
    params_before = (repo / "params.yaml").read_bytes()
    other = write_params(repo / "other.yaml", {"train.probe_epochs": 7}, base=repo / "params.yaml")

    home = tmp_path / "prefect-home"
    scheduler = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}  # default: 60
    picks = {"PREFECT_WORKER_QUERY_SECONDS": "2"}  # the worker looks for runs; default: 10
    server = own_prefect_server(
        home, empty_prefect_db, log_file=tmp_path / "server.log", settings=scheduler
    )
    with server as api:
        env = {**os.environ, **server_env(home, api), **picks}

        def run(*command: str) -> str:
            done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        run(*prefect_command("work-pool", "create", POOL, "--type", "process"))
        transferops = str(Path(sys.executable).parent / "transferops")
        printed = run(transferops, "deploy", "--work-pool", POOL)
        assert f"prefect worker start --pool {POOL}" in printed
        training = deployment(api, TRAINING_DEPLOYMENT)
        monitoring = deployment(api, MONITORING_DEPLOYMENT)
        assert training["work_pool_name"] == POOL and monitoring["work_pool_name"] == POOL
        assert training["entrypoint"] == "flows.training.training_flow"
        assert training["job_variables"]["working_dir"] == str(repo.resolve())
        assert training["global_concurrency_limit"]["limit"] == 1

        trigger = {"kind": "test", "by": "test_work_pool"}
        asked = {
            "trigger": trigger,
            "data_version": first,
            "strategy": "linear_probe",
            "overrides": ["train.lr=0.004"],
            "params_file": str(other),
        }
        api_post(api, f"deployments/{training['id']}/create_flow_run", {"parameters": asked})
        with open(tmp_path / "worker.log", "wb") as log:
            worker = subprocess.Popen(
                prefect_command("worker", "start", "--pool", POOL, "--limit", "1"),
                cwd=tmp_path,  # the job's working_dir, not the worker's, is where it runs
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            finished = wait_for_run(api, training["id"], known=set(), timeout=500)
            # The scheduler made runs of the cron deployment while the worker was busy;
            # the concurrency limit (1, cancel new) may cancel some of them, so wait for
            # one that the worker ran to completion.
            scheduled = wait_for_run(
                api, monitoring["id"], known=set(), timeout=240, states=frozenset({"COMPLETED"})
            )
        finally:
            # Killed, not asked: after SIGTERM the worker still ran the checks the cron had
            # piled up during the training, one by one (20 s and two flow-run processes
            # more). Nothing it would still run is asserted on.
            stop_server(worker, kill=True)
    assert finished["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
    assert scheduled["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
    records = {r["run"]["id"]: r for r in read_records(repo / "reports")}
    record = records[finished["id"]]
    assert record["trigger"] == trigger and record["deployment"] == "retrain"
    outcome = record["result"]
    assert outcome["gate"]["promoted"], "the first model becomes the champion"
    assert (repo / "models" / "champion.json").is_file()
    check = records[scheduled["id"]]
    assert check["deployment"] == "check"
    assert check["trigger"] == {"kind": "schedule", "setting": "orchestrate.monitor_cron"}
    assert check["result"]["verdict"]["status"] == "insufficient_data", "no traffic yet"

    # What the run trained on and with: that version alone, the forced strategy, the
    # other params file and the override; params.yaml untouched.
    now = read_manifest(repo / "data" / "prepared")
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
