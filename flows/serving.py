"""Starting and stopping a real ``bentoml serve`` of the prediction service."""

from __future__ import annotations

import contextlib
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


def bentoml_command(port: int, target: str = SERVICE) -> list[str]:
    """``bentoml serve TARGET`` on localhost; TARGET is the service or a Bento tag."""
    bentoml = Path(sys.executable).parent / "bentoml"
    return [str(bentoml), "serve", target, "--host", "127.0.0.1", "--port", str(port)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    """Poll BentoML's readiness endpoint until it answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"bentoml serve exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"bentoml serve not ready at {url} after {timeout:.0f} s")


def start_server(
    *,
    port: int | None = None,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    target: str = SERVICE,
) -> tuple[subprocess.Popen, str]:
    """Start ``bentoml serve TARGET`` on localhost, wait until it is ready; (process, URL).

    Stop it with :func:`stop_server`. ``env`` is added to this process's environment.
    """
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(log_file, "ab") if log_file else contextlib.nullcontext(subprocess.DEVNULL)  # noqa: SIM115
    with log as out:  # the server keeps its own copy of the handle
        process = subprocess.Popen(
            bentoml_command(port, target),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    try:
        wait_ready(url, process)
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
) -> Iterator[str]:
    """Run the service (or a Bento) on localhost for the duration of the block; yield its URL."""
    process, url = start_server(port=port, log_file=log_file, env=env, cwd=cwd, target=target)
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
