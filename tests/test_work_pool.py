"""The way past one machine, on one machine: a work pool and a worker.

``transferops deploy --work-pool`` registers the deployments on a Prefect
process work pool (a Docker or Kubernetes pool takes the same command plus
``--image``), and ``prefect worker start`` runs what the pool is given: here
a training run, started through the API as an automation would, and the drift
check on its cron schedule, which only a real server's scheduler starts.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.deploy import MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT
from flows.prefect_server import (
    api_post,
    deployment,
    prefect_command,
    running_prefect_server,
    server_env,
    wait_for_run,
)
from flows.serving import stop_server
from flows.workspace import create_workspace
from tests.conftest import ROOT, TINY, write_params
from transferops.logs.runs import read_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POOL = "transferops-local"


def test_process_work_pool_worker_runs_the_training_flow(tmp_path: Path) -> None:
    repo = create_workspace(ROOT, tmp_path / "project")
    every_minute = {"orchestrate.monitor_cron": "* * * * *"}
    write_params(repo / "params.yaml", TINY | every_minute, base=repo / "params.yaml")
    home = tmp_path / "prefect-home"
    scheduler = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5"}  # default: 60
    picks = {"PREFECT_WORKER_QUERY_SECONDS": "2"}  # the worker looks for runs; default: 10
    with running_prefect_server(home, log_file=tmp_path / "server.log", settings=scheduler) as api:
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
        api_post(
            api,
            f"deployments/{training['id']}/create_flow_run",
            {"parameters": {"trigger": trigger}},
        )
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
            stop_server(worker)
    assert finished["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
    assert scheduled["state_type"] == "COMPLETED", (tmp_path / "worker.log").read_text()[-3000:]
    records = {r["run"]["id"]: r for r in read_records(repo / "reports")}
    record = records[finished["id"]]
    assert record["trigger"] == trigger and record["deployment"] == "retrain"
    assert record["result"]["gate"]["promoted"], "the first model becomes the champion"
    assert (repo / "models" / "champion.json").is_file()
    check = records[scheduled["id"]]
    assert check["deployment"] == "check"
    assert check["trigger"] == {"kind": "schedule", "setting": "orchestrate.monitor_cron"}
    assert check["result"]["verdict"]["status"] == "insufficient_data", "no traffic yet"
