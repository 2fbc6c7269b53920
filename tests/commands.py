"""``transferops ...`` and the DVC stages, run in the test's own process.

The same ``main`` the console script and ``python -m pipelines.STAGE`` call,
without a new interpreter importing torch, timm and BentoML again (5 s a
command on 2 cores). The commands that must be a process of their own (killed,
timed, served) still run as subprocesses in their tests; tests/test_cli.py runs
the console script.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import subprocess
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest


@contextlib.contextmanager
def as_a_command(cwd: Path | None, env: dict[str, str]) -> Iterator[io.StringIO]:
    """Where a command runs: ``cwd``, ``env`` set, stderr captured (yielded).

    A command sets torch's threads from its params; the test worker keeps its own.
    """
    import torch

    threads = torch.get_num_threads()
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stderr(err):
        if cwd is not None:
            patch.chdir(cwd)
        for key, value in env.items():
            patch.setenv(key, value)
        try:
            yield err
        finally:
            torch.set_num_threads(threads)


def transferops(*args: str, cwd: Path | None = None, columns: int = 200):
    """Exit code, stdout and stderr of ``transferops ARGS`` (rich tables ``columns`` wide)."""
    from flows.cli import main

    out = io.StringIO()
    with as_a_command(cwd, {"COLUMNS": str(columns)}) as err, redirect_stdout(out):
        try:
            code = main(list(args))
        except SystemExit as exited:
            code = exited.code
    return subprocess.CompletedProcess(["transferops", *args], code, out.getvalue(), err.getvalue())


def run_stage(stage: str, params: Path, env: dict[str, str] | None = None) -> None:
    """``python -m pipelines.STAGE --params PARAMS`` in this process, from the params' folder.

    Fails the test with the stage's error output when it exits non-zero.
    """
    main = importlib.import_module(f"pipelines.{stage}").main
    with as_a_command(params.parent, env or {}) as err:
        code = main(["--params", str(params)])
    assert code == 0, f"stage {stage}: {err.getvalue()[-3000:]}"
