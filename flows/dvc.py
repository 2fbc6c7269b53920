"""DVC from Prefect tasks: one subprocess at a time, its output in the run's logs.

Every DVC repo operation takes a repo lock that it waits on for only a few
seconds, and the flows of one project may run in several processes at once
(a scheduled check, a retraining run, ``transferops data add``). So calls are
serialised through a file lock in ``.dvc/tmp``, across processes. Shelling out
to ``dvc`` is DVC's stable interface (its Python ``Repo`` class is internal).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from transferops.files import locked

LOCK_FILE = Path(".dvc") / "tmp" / "transferops-dvc.lock"

# Output that marks a failure worth retrying: another process held the repo,
# or the remote (object storage, a network share) did not answer.
TRANSIENT_MARKERS = (
    "unable to acquire lock",
    "is busy",
    "timed out",
    "timeout",
    "connection reset",
    "connection refused",
    "temporarily unavailable",
    "temporary failure",
)


class DvcError(RuntimeError):
    """A DVC command exited non-zero; the message holds its last output lines."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def is_transient(output: str) -> bool:
    """Whether DVC's output says the failure may pass on a retry (lock, network)."""
    text = output.lower()
    return any(marker in text for marker in TRANSIENT_MARKERS)


def run_dvc(args: list[str], repo: Path, logger: logging.Logger | logging.LoggerAdapter) -> str:
    """Run ``dvc ARGS`` in ``repo``, streaming its output to ``logger``.

    Raises:
        DvcError: on a non-zero exit; ``transient`` says whether a retry may help.
    """
    command = [sys.executable, "-m", "dvc", *args]
    # Stage commands say `python -m pipelines...`: make that our interpreter,
    # even when the virtual environment is not activated.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    lines: list[str] = []
    with locked(Path(repo) / LOCK_FILE):
        process = subprocess.Popen(
            command, cwd=repo, stdout=subprocess.PIPE, env=env, stderr=subprocess.STDOUT, text=True
        )
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            lines.append(line)
            if line:
                logger.info("%s", line)
        code = process.wait()
    if code != 0:
        tail = "\n".join(lines[-15:])
        raise DvcError(
            f"`dvc {' '.join(args)}` failed in {repo} (exit {code}):\n{tail}",
            transient=is_transient(tail),
        )
    return "\n".join(lines)


def pipeline_stages(repo: Path) -> list[str]:
    """The stage names of ``dvc.yaml``, in the file's order (upstream first)."""
    path = Path(repo) / "dvc.yaml"
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    if not stages:
        raise DvcError(f"{path}: no stages")
    return list(stages)
