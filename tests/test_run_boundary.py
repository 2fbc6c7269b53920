"""A retrain event is untrusted input: what it may ask of a training run is allow-listed.

Real Prefect server, the real ``transferops deploy`` process and its automation: an
event that asks the run to send the service's API key (here: the name of a variable
that holds a secret) to another host, to move a path, and to add a folder from
elsewhere on the worker's disk is refused by name before anything runs.
"""

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from flows.deploy import MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT
from flows.prefect_server import (
    AUTH_ENV,
    flow_runs,
    running_deployments,
    server_auth,
    wait_for_run,
)
from flows.workspace import create_workspace
from tests.conftest import ROOT, TINY, own_prefect_server, write_params
from transferops.config import RUN_PARAMS
from transferops.logs.runs import read_records


class Elsewhere:
    """A TCP listener on another loopback address that counts who connects."""

    def __init__(self, host: str = "127.0.0.2") -> None:
        self.socket = socket.create_server((host, 0))
        self.socket.settimeout(0.2)
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.connections, self.stopped = 0, threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.socket.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.socket.close()


def hostile_event(elsewhere: str, outside: Path) -> None:
    """A retrain request asking for the service's key to go elsewhere, a path to move and a
    folder from outside ``paths.incoming``."""
    from prefect.events.worker import EventsWorker

    from flows.events import request_retrain

    request_retrain(
        model_tag="transferops-classifier:any",
        overrides=[
            "serve.api_key_env=HOME",
            f"orchestrate.service_url={elsewhere}",
            "paths.registry=/tmp/appended-to",
        ],
        new_data=str(outside),
        why={"reason": "an attacker's event"},
    )
    EventsWorker.drain_all(timeout=10)


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def files_of(repo: Path) -> list[str]:
    """The workspace's files, but git's and the bytecode a process compiles on import."""
    skipped = {".git", "__pycache__"}
    return sorted(
        p.relative_to(repo).as_posix() for p in repo.rglob("*") if not skipped & set(p.parts)
    )


@pytest.mark.integration
def test_a_hostile_retrain_event_is_refused_by_name_and_nothing_runs(
    tmp_path: Path, empty_prefect_db: Path
) -> None:
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repo = create_workspace(ROOT, tmp_path / "project")
    quiet = {"orchestrate.monitor_cron": "0 0 1 1 *"}  # registered, not due during the test
    write_params(repo / "params.yaml", TINY | quiet, base=repo / "params.yaml")
    outside = tmp_path / "elsewhere-on-disk"
    (outside / "cat").mkdir(parents=True)
    before = files_of(repo)
    run_params = (repo / RUN_PARAMS).read_text()
    elsewhere = Elsewhere()
    home = tmp_path / "prefect-home"
    names = [MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT]
    try:
        with (
            own_prefect_server(home, empty_prefect_db, log_file=tmp_path / "server.log") as api,
            running_deployments(repo, api, home, names, log_file=tmp_path / "deploy.log") as found,
        ):
            anonymous = httpx.post(f"{api}/deployments/filter", json={}, timeout=10)
            assert anonymous.status_code == 401, "the project's server answers only its string"
            training = found[1]["id"]
            EventsWorker.drain_all(timeout=10)  # no events client of another server lingers
            with temporary_settings(updates={PREFECT_API_URL: api}):
                # The server loads a new automation on its own schedule: an event sent the
                # moment the deployment is ready can find none. Sent again until a run
                # starts; the trigger fires once per window, so at most one run does.
                for _ in range(30):
                    hostile_event(elsewhere.url, outside)
                    if wait_until(lambda: flow_runs(api, training), seconds=4):
                        break
            run = wait_for_run(api, training, known=set(), timeout=180)
    finally:
        elsewhere.close()
    assert run["state_type"] == "FAILED", run["state_type"]
    (record,) = [r for r in read_records(repo / "reports") if r["flow"] == "training"]
    error = record["error"]
    assert record["status"] == "failed" and error.startswith("RunRefused"), error
    assert "serve.api_key_env (to 'HOME')" in error
    assert f"orchestrate.service_url (to '{elsewhere.url}')" in error
    assert "paths.registry (to '/tmp/appended-to')" in error
    assert f"new_data {str(outside)!r} is not a drop under" in error
    assert elsewhere.connections == 0, "a request left for another host"
    assert not Path("/tmp/appended-to").exists()
    # Nothing trained or written: the run's record, Prefect's files and the training lock
    # (held while the run checked what it was asked) are all that is new.
    allowed = ("reports", ".prefect", ".dvc/tmp")
    new = [p for p in files_of(repo) if p not in before and not p.startswith(allowed)]
    assert new == [], new
    assert (repo / RUN_PARAMS).read_text() == run_params


def test_a_server_of_the_project_gets_an_auth_string_only_its_user_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(AUTH_ENV, raising=False)
    made = server_auth(tmp_path / "home")
    assert made.startswith("transferops:") and len(made) > 30
    assert (tmp_path / "home" / "transferops-api-auth").stat().st_mode & 0o777 == 0o600
    assert server_auth(tmp_path / "home") == made, "kept: the UI and later runs use the same"
    monkeypatch.setenv(AUTH_ENV, "team:from-the-environment")
    assert server_auth(tmp_path / "home") == "team:from-the-environment"


def test_the_service_key_goes_only_to_params_yaml_s_own_service_url() -> None:
    from flows.training import same_origin
    from transferops.config import load_params

    own = load_params(ROOT / "params.yaml", ["orchestrate.service_url=http://127.0.0.1:3000"])
    assert same_origin("http://127.0.0.1:3000", own)
    for elsewhere in ("http://127.0.0.2:3000", "https://127.0.0.1:3000", "http://127.0.0.1:3001",
                      "http://127.0.0.1:3000@evil.example"):  # fmt: skip
        assert not same_origin(elsewhere, own), elsewhere
    assert not same_origin("http://127.0.0.1:3000", load_params(ROOT / "params.yaml")), "none set"
