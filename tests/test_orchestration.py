"""DVC under Prefect: transient failures are retried, others are not; DVC calls queue."""

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow, task

from flows.dvc import LOCK_FILE, DvcError, run_dvc
from flows.training import transient_failure

log = logging.getLogger(__name__)


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_dvc_busy_with_another_process_is_a_transient_failure(dvc_repo: Path) -> None:
    import zc.lockfile  # DVC's own repo lock

    held = zc.lockfile.LockFile(str(dvc_repo / ".dvc" / "tmp" / "lock"))
    try:
        with pytest.raises(DvcError) as caught:
            run_dvc(["status"], dvc_repo, log)
    finally:
        held.close()
    assert caught.value.transient, str(caught.value)
    run_dvc(["status"], dvc_repo, log)  # the lock is free again: no error


def test_a_broken_pipeline_is_not_transient(dvc_repo: Path) -> None:
    (dvc_repo / "dvc.yaml").write_text("stages:\n  broken:\n    cmd: exit 3\n")
    with pytest.raises(DvcError) as caught:
        run_dvc(["repro", "broken"], dvc_repo, log)
    assert not caught.value.transient and "exit 3" in str(caught.value)


# A flow run: Prefect starts its temporary server (13 s of CPU on 2 cores); not in make check.
@pytest.mark.integration
@pytest.mark.parametrize(("transient", "expected_calls"), [(True, 2), (False, 1)])
def test_only_transient_failures_are_retried(transient: bool, expected_calls: int) -> None:
    calls: list[int] = []

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=transient_failure)
    def stage() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise DvcError("`dvc repro x` failed", transient=transient)
        return "ran"

    @flow
    def pipeline() -> str:
        return stage()

    if transient:
        assert pipeline() == "ran"
    else:
        with pytest.raises(DvcError):
            pipeline()
    assert len(calls) == expected_calls


def test_dvc_calls_wait_for_each_other_across_processes(dvc_repo: Path, tmp_path: Path) -> None:
    released = tmp_path / "released"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from transferops.files import locked\n"
            f"with locked(pathlib.Path({str(dvc_repo / LOCK_FILE)!r})):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(2)\n"
            f"    pathlib.Path({str(released)!r}).write_text(str(time.time()))\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert holder.stdout.readline().strip() == "held"
    run_dvc(["status"], dvc_repo, log)
    returned = time.time()
    holder.wait(timeout=30)
    assert released.is_file(), "our DVC call ran only after the other process let go"
    assert float(released.read_text()) <= returned


def test_scheduled_retraining_is_off_by_default_and_on_with_a_cron() -> None:
    from flows.deploy import build_deployments
    from tests.conftest import ROOT
    from transferops.config import load_params

    monitoring, training = build_deployments(load_params(ROOT / "params.yaml"))
    assert [s.schedule.cron for s in monitoring.schedules] == ["*/30 * * * *"]
    assert training.schedules == [] and len(training.triggers) == 1

    weekly = load_params(ROOT / "params.yaml", ["orchestrate.retrain_cron=0 3 * * 0"])
    _, training = build_deployments(weekly)
    (schedule,) = training.schedules
    assert schedule.schedule.cron == "0 3 * * 0" and schedule.schedule.timezone == "UTC"
    assert schedule.parameters == {
        "trigger": {"kind": "schedule", "setting": "orchestrate.retrain_cron"}
    }
    trigger = training.triggers[0]
    assert trigger.threshold == 1 and trigger.within.total_seconds() == 24 * 3600
    assert trigger.parameters["overrides"] == "{{ event.payload.overrides }}"


# A flow run on a real DVC repo, with Prefect's temporary server; not in make check.
@pytest.mark.integration
def test_a_failed_training_run_leaves_a_record_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.training import training_flow
    from flows.workspace import create_workspace
    from tests.conftest import ROOT
    from transferops.config import ParamsError
    from transferops.data.datasets import DataSourceError
    from transferops.logs.runs import read_records

    repo = create_workspace(ROOT, tmp_path / "project")
    monkeypatch.chdir(repo)
    bad = tmp_path / "labelled"
    (bad / "cat").mkdir(parents=True)
    (bad / "cat" / "0.png").write_bytes(b"not a png")
    params_before = (repo / "params.yaml").read_text()

    with pytest.raises(DataSourceError):
        training_flow(dataset=str(bad), strategy="full", trigger={"kind": "test"})
    (record,) = read_records(repo / "reports")
    assert record["status"] == "failed" and record["trigger"] == {"kind": "test"}
    assert record["error"].startswith("DataSourceError") and str(bad) in record["error"]
    assert record["finished_at"] >= record["started_at"]
    assert Path(record["record"]).is_file()
    index = (repo / "reports" / "index.html").read_text()
    assert '<span class="status failed">failed</span>' in index, "the index shows the failure"
    assert not (repo / "data" / "incoming" / "labelled").exists(), "the bad data never landed"
    assert (repo / "params.yaml").read_text() == params_before
    assert not (repo / "models" / "champion.json").exists()

    with pytest.raises(ParamsError):
        training_flow(overrides=["train.lr=fast"], trigger={"kind": "test"})
    bad_override = read_records(repo / "reports")[-1]
    assert bad_override["status"] == "failed" and "train.lr = 'fast'" in bad_override["error"]
