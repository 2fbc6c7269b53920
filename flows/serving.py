"""Starting and stopping a real ``bentoml serve`` of the prediction service."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

SERVICE = "services.service:Classifier"


@functools.cache
def http_client() -> httpx.Client:
    """This process's one HTTP client for the servers it polls (health, Prefect's API,
    the service's metadata).

    ``httpx.get`` builds a client, and with it an SSL context loading the CA
    bundle, on every call: about 60 ms of CPU (2-3 ms through a kept client),
    paid twice a second by each loop that waits on a server.
    """
    return httpx.Client(timeout=10)


def bentoml_command(
    port: int, target: str = SERVICE, host: str = "127.0.0.1", python: Path | None = None
) -> list[str]:
    """``bentoml serve TARGET`` (localhost by default); TARGET is the service or a Bento tag.

    ``python``: serve with another environment's interpreter (``python -m bentoml``).

    Beyond localhost the service itself refuses to start without an API key
    (in the variable ``serve.api_key_env`` names) unless ``serve.allow_unauthenticated``.
    """
    serve = ["serve", target, "--host", host, "--port", str(port)]
    if python is not None:
        return [str(python), "-m", "bentoml", *serve]
    return [str(Path(sys.executable).parent / "bentoml"), *serve]


def free_port(preferred: int | None = None) -> int:
    """``preferred`` when it is free on localhost, else any free port."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred or 0))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(
    command: list[str],
    *,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start a server process in a session of its own, its output appended to ``log_file``.

    ``env`` is added to this process's environment. Stop it with :func:`stop_server`.
    """
    log = open(log_file, "ab") if log_file else contextlib.nullcontext(subprocess.DEVNULL)  # noqa: SIM115
    with log as out:  # the server keeps its own copy of the handle
        return subprocess.Popen(
            command,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )


def wait_ready(
    url: str, process: subprocess.Popen | None, timeout: float = 120, name: str = "bentoml serve"
) -> None:
    """Poll ``url`` (a readiness or health endpoint) until it answers 200.

    Raises RuntimeError when ``process`` (None: one started elsewhere) exits first,
    TimeoutError after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{name} exited with code {process.returncode}")
        try:
            if http_client().get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name} not ready at {url} after {timeout:.0f} s")


def start_server(
    *,
    port: int | None = None,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    target: str = SERVICE,
    host: str = "127.0.0.1",
    python: Path | None = None,
) -> tuple[subprocess.Popen, str]:
    """Start ``bentoml serve TARGET`` on localhost, wait until it is ready; (process, URL).

    Stop it with :func:`stop_server`. ``env`` is added to this process's environment.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = bentoml_command(port, target, host, python)
    process = spawn(command, log_file=log_file, env=env, cwd=cwd)
    try:
        wait_ready(f"{url}/readyz", process)
    except BaseException:
        stop_server(process)
        raise
    return process, url


@contextmanager
def running_service(
    port: int | None = None,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    target: str = SERVICE,
    host: str = "127.0.0.1",
    python: Path | None = None,
) -> Iterator[str]:
    """Run the service (or a Bento) for the duration of the block; yield its localhost URL."""
    process, url = start_server(
        port=port, log_file=log_file, env=env, cwd=cwd, target=target, host=host, python=python
    )
    try:
        yield url
    finally:
        stop_server(process)


def stop_server(process: subprocess.Popen, kill: bool = False) -> None:
    """Stop ``bentoml serve`` and every worker it started.

    BentoML's arbiter starts each worker in a session of its own, so signalling
    the process group is not enough: a SIGKILLed arbiter would leave its
    workers serving. ``kill=True`` SIGKILLs everything at once (a crash).
    """
    import psutil

    try:
        workers = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        workers = []
    if kill:
        for victim in [process, *workers]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim.pid, signal.SIGKILL)
    elif process.poll() is None:
        process.send_signal(signal.SIGTERM)  # the arbiter stops its workers
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()
    for worker in workers:  # whatever outlived the arbiter
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    psutil.wait_procs([w for w in workers if w.is_running()], timeout=10)
