"""Runs that are killed, overlap or read a different params file; state files that survive it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.data import list_versions
from flows.workspace import create_workspace
from tests.conftest import ROOT, TINY, write_params
from transferops.config import RUN_PARAMS, load_params
from transferops.files import Held, exclusive, write_atomic
from transferops.logs.runs import read_records

TRAINING_LOCK = Path(".dvc") / "tmp" / "transferops-training.lock"  # flows/training.py's


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    repo = create_workspace(ROOT, tmp_path / "project")
    write_params(repo / "params.yaml", TINY, base=repo / "params.yaml")
    subprocess.run(["git", "commit", "-qam", "tiny"], cwd=repo, check=True)
    return repo


def cli(repo: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the kill reaches DVC's children too
    )


@pytest.mark.integration
def test_a_run_killed_mid_way_leaves_params_yaml_byte_identical(workspace: Path) -> None:
    before = (workspace / "params.yaml").read_bytes()
    run = cli(workspace, "train", "-S", "train.lr=0.01")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.poll() is None:
        changed = (workspace / "params.yaml").read_bytes() != before
        started = "value:" in (workspace / RUN_PARAMS).read_text()
        if (changed or started) and (workspace / "dvc.lock").exists():
            break  # the overrides are in force and a stage has run: the middle of the run
        time.sleep(0.2)
    assert run.poll() is None, f"the run ended before it could be killed: {run.communicate()}"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert (workspace / "params.yaml").read_bytes() == before
    assert subprocess.run(["git", "diff", "--quiet", "params.yaml"], cwd=workspace).returncode == 0
    record = read_records(workspace / "reports")[-1]
    assert record["flow"] == "training" and record["status"] == "running", "killed, and it says"
    with exclusive(workspace / TRAINING_LOCK, "next run"):  # the kernel let go of the lock
        pass


@pytest.mark.integration
def test_a_second_training_run_is_refused_while_one_runs(workspace: Path) -> None:
    before = (workspace / "params.yaml").read_bytes()
    with exclusive(workspace / TRAINING_LOCK, "flow run busy-bee (pid 1)"):
        second = cli(workspace, "train", "-S", "train.lr=0.02")
        _, err = second.communicate(timeout=300)
    assert second.returncode == 3, err
    assert "another training run is in progress (flow run busy-bee (pid 1)" in err
    assert (workspace / "params.yaml").read_bytes() == before
    assert "value:" not in (workspace / RUN_PARAMS).read_text()
    assert not (workspace / "dvc.lock").exists(), "nothing ran"


def test_an_exclusive_lock_names_its_holder_and_refuses_at_once(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    with exclusive(lock, "first"):
        began = time.monotonic()
        with pytest.raises(Held) as held, exclusive(lock, "second"):
            pass
        assert held.value.holder == "first" and time.monotonic() - began < 1
    with exclusive(lock, "second"):
        pass


@pytest.mark.integration
def test_monitoring_reads_the_params_file_it_is_given(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.monitoring import monitoring_flow

    monkeypatch.chdir(workspace)
    other = write_params(
        workspace / "other.yaml", {"paths.reports": "other-reports"}, base=workspace / "params.yaml"
    )
    monitoring_flow(retrain=False, params_file=str(other))  # no champion yet: nothing to check
    records = read_records(workspace / "other-reports")
    assert [(r["flow"], r["status"]) for r in records] == [("monitoring", "completed")]
    assert read_records(load_params(workspace / "params.yaml").paths.reports) == []


def test_a_run_record_is_written_when_the_run_starts(tmp_path: Path) -> None:
    from flows.records import recorded_run

    params = load_params(ROOT / "params.yaml", [f"paths.reports={tmp_path}"])
    with recorded_run(params, "training", {"kind": "test"}) as result:
        assert [r["status"] for r in read_records(tmp_path)] == ["running"]
        result["model_tag"] = "m:1"
    (latest,) = read_records(tmp_path)
    assert latest["status"] == "completed" and latest["result"]["model_tag"] == "m:1"
    assert json.loads(Path(latest["record"]).read_text())["status"] == "completed"


def test_an_atomic_write_that_fails_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = write_atomic(tmp_path / "champion.json", '{"tag": "old"}')

    def power_cut(*_):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, '{"tag": "new"}')
    assert target.read_text() == '{"tag": "old"}'
    assert [p.name for p in tmp_path.iterdir()] == ["champion.json"], "no temporary left"


def test_a_torn_registry_line_never_breaks_data_list(tmp_path: Path) -> None:
    registry = tmp_path / "registry.jsonl"
    whole = {
        "name": "shop",
        "status": "passed",
        "version": "abc.dir",
        "images": 3,
        "classes": 1,
        "bytes": 10,
        "problems": 0,
        "quarantined": 0,
        "report": "r",
        "source": "s",
        "added_at": "2026-11-29T10:00:00+00:00",
    }
    registry.write_text(json.dumps(whole) + "\n" + json.dumps(whole)[:40])  # killed mid-line
    assert [v.name for v in list_versions(registry)] == ["shop"]
    from transferops.logs.jsonl import append_jsonl

    append_jsonl(registry, whole | {"name": "next"})
    assert [v.name for v in list_versions(registry)] == ["shop", "next"]


def test_concurrent_appends_keep_every_line_whole(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    script = (
        "import sys; from transferops.logs.jsonl import append_jsonl\n"
        "for i in range(200):\n"
        "    append_jsonl(sys.argv[1], {'w': sys.argv[2], 'i': i, 'pad': 'x' * 5000})"
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", script, str(log), str(w)], cwd=ROOT)
        for w in range(4)
    ]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 800 and {(r["w"], r["i"]) for r in rows} == {
        (str(w), i) for w in range(4) for i in range(200)
    }


def test_state_files_are_shared_with_the_group_and_secrets_are_not(tmp_path: Path) -> None:
    """write_atomic sets the mode itself (a service of the project's group follows the
    champion whatever the umask); a secret asks for the owner alone."""
    import os
    import stat

    from transferops.files import PRIVATE, write_atomic

    previous = os.umask(0o077)  # a strict umask must not hide the champion from the service
    try:
        shared = write_atomic(tmp_path / "champion.json", "{}")
        private = write_atomic(tmp_path / "auth", "secret", mode=PRIVATE)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
