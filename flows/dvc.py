"""DVC from Prefect tasks: one subprocess at a time, its output in the run's logs.

Every DVC repo operation takes a lock, so calls are serialised through one
process-wide lock; shelling out to ``dvc`` is DVC's stable interface (its
Python ``Repo`` class is internal).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

_DVC_LOCK = threading.Lock()


class DvcError(RuntimeError):
    """A DVC command exited non-zero; the message holds its last output lines."""


def run_dvc(args: list[str], repo: Path, logger: logging.Logger | logging.LoggerAdapter) -> str:
    """Run ``dvc ARGS`` in ``repo``, streaming its output to ``logger``."""
    command = [sys.executable, "-m", "dvc", *args]
    # Stage commands say `python -m pipelines...`: make that our interpreter,
    # even when the virtual environment is not activated.
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    lines: list[str] = []
    with _DVC_LOCK:
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
        raise DvcError(f"`dvc {' '.join(args)}` failed in {repo} (exit {code}):\n{tail}")
    return "\n".join(lines)
