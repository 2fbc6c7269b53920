"""A real ``prefect server start`` on localhost, and waiting on what it runs.

The demo and the tests start one so that schedules, event triggers and the
UI behave as they do for a team (the temporary server a lone flow run
starts has no scheduler and vanishes with the run). Its database lives in
``PREFECT_HOME``, so the runs can be browsed later by starting a server on
the same home.

A server started here never answers without its **auth string** (Prefect's
``PREFECT_SERVER_API_AUTH_STRING``; its clients send ``PREFECT_API_AUTH_STRING``):
``TRANSFEROPS_PREFECT_AUTH`` when the environment sets it, else the string kept
in ``<PREFECT_HOME>/transferops-api-auth`` (0600, made at the first start). So
another local user, or a web page the browser opens, cannot start a run
through it (docs/orchestration.md, docs/security.md).
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from flows.serving import free_port, http_client, spawn, stop_server, wait_ready
from transferops.files import PRIVATE, write_atomic

TERMINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED"})
AUTH_ENV = "TRANSFEROPS_PREFECT_AUTH"
AUTH_FILE = "transferops-api-auth"


def server_auth(home: Path) -> str:
    """The auth string of the server under ``home``: ``$TRANSFEROPS_PREFECT_AUTH``, else the
    one kept in ``home`` (readable by this user only), made on first use."""
    if given := os.environ.get(AUTH_ENV):
        return given
    path = Path(home) / AUTH_FILE
    if not path.is_file():
        write_atomic(path, f"transferops:{secrets.token_urlsafe(24)}\n", mode=PRIVATE)
    return path.read_text().strip()


def auth_header() -> dict[str, str]:
    """The Authorization header for this process's Prefect API (none when it has no auth
    string): what Prefect's own client sends, for the calls made here with httpx."""
    from prefect.settings import get_current_settings

    secret = get_current_settings().api.auth_string
    if secret is None:
        return {}
    token = base64.b64encode(secret.get_secret_value().encode()).decode()
    return {"Authorization": f"Basic {token}"}


def prefect_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "prefect"), *args]


def server_env(home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for processes that serve or use this server: its auth string on both
    sides, telemetry off."""
    auth = server_auth(home)
    env = {
        "PREFECT_HOME": str(Path(home).resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_API_AUTH_STRING": auth,
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def start_prefect_server(
    home: Path,
    port: int | None = None,
    log_file: Path | None = None,
    settings: dict[str, str] | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``prefect server start`` with its database under ``home``, without waiting
    for it; (the process, its API URL). Stop it with ``flows.serving.stop_server``.

    ``settings``: more ``PREFECT_*`` variables for the server.
    """
    port = port or free_port()
    Path(home).mkdir(parents=True, exist_ok=True)
    process = spawn(
        prefect_command("server", "start", "--host", "127.0.0.1", "--port", str(port)),
        log_file=log_file,
        env={**server_env(home), **(settings or {})},
    )
    return process, f"http://127.0.0.1:{port}/api"


@contextlib.contextmanager
def running_prefect_server(
    home: Path,
    port: int | None = None,
    log_file: Path | None = None,
    timeout: float = 120,
    settings: dict[str, str] | None = None,
) -> Iterator[str]:
    """Start ``prefect server start`` with its database under ``home``; yield the API URL
    once it answers.

    The first start on a new home creates the database (about 10 s here).
    ``settings``: more ``PREFECT_*`` variables for the server.
    """
    process, api = start_prefect_server(home, port, log_file, settings)
    try:
        wait_ready(f"{api}/health", process, timeout, name="prefect server")
        yield api
    finally:
        stop_server(process)


def api_get(api: str, path: str) -> dict | list:
    response = http_client().get(f"{api}/{path}", headers=auth_header())
    response.raise_for_status()
    return response.json()


def api_post(api: str, path: str, body: dict, attempts: int = 5) -> dict | list:
    """POST to the Prefect API; a 503 (the server busy, e.g. its SQLite database
    locked while a worker writes) is asked again after 1, 2, 4, 8 s."""
    for attempt in range(attempts):
        response = http_client().post(f"{api}/{path}", json=body, headers=auth_header())
        if response.status_code != 503 or attempt == attempts - 1:
            break
        time.sleep(2**attempt)
    response.raise_for_status()
    return response.json()


def deployment(api: str, name: str) -> dict | None:
    """A deployment by ``flow/deployment`` name, or None while it is not registered."""
    flow, _, short = name.partition("/")
    response = http_client().get(f"{api}/deployments/name/{flow}/{short}", headers=auth_header())
    return response.json() if response.status_code == 200 else None


def wait_for_deployments(api: str, names: list[str], process: subprocess.Popen, timeout: float):
    """Block until every deployment is registered and its serving process polls for runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`transferops deploy` exited with code {process.returncode}")
        found = [deployment(api, name) for name in names]
        if all(d and d.get("status") == "READY" for d in found):
            return found
        time.sleep(1)
    raise TimeoutError(f"deployments {names} not ready on {api} after {timeout:.0f} s")


def flow_runs(api: str, deployment_id: str) -> list[dict]:
    """Every flow run of a deployment, newest first."""
    body = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_DESC"}
    return list(api_post(api, "flow_runs/filter", body))


def wait_for_run(
    api: str,
    deployment_id: str,
    *,
    known: set[str],
    timeout: float,
    poll: float = 2,
    states: frozenset[str] = TERMINAL,
) -> dict:
    """Wait for a run of the deployment not in ``known`` to reach one of ``states``; return it.

    ``states`` defaults to any end; pass ``{"COMPLETED"}`` where the deployment's
    concurrency limit may cancel some runs on purpose (a cron that piled up runs
    while the worker was busy). Raises TimeoutError naming the states seen.
    """
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        new = [r for r in flow_runs(api, deployment_id) if r["id"] not in known]
        seen = [r.get("state_type") or "?" for r in new]
        done = [r for r in new if (r.get("state_type") or "") in states]
        if done:
            return done[-1]
        time.sleep(poll)
    raise TimeoutError(
        f"no run of deployment {deployment_id} reached {sorted(states)} within "
        f"{timeout:.0f} s; runs seen: {seen}"
    )


@contextlib.contextmanager
def running_deployments(
    cwd: Path,
    api: str,
    home: Path,
    names: list[str],
    log_file: Path | None = None,
    poll_s: int = 2,
) -> Iterator[list[dict]]:
    """``transferops deploy`` in ``cwd`` against ``api``; yield the registered deployments.

    Its runner looks for new runs every ``poll_s`` seconds (Prefect's default is 10): a
    run the retrain event starts begins within 2 s, not 10.
    """
    process = spawn(
        [str(Path(sys.executable).parent / "transferops"), "deploy"],
        log_file=log_file,
        env=server_env(home, api) | {"PREFECT_RUNNER_POLL_FREQUENCY": str(poll_s)},
        cwd=cwd,
    )
    try:
        yield wait_for_deployments(api, names, process, timeout=120)
    finally:
        stop_server(process)
