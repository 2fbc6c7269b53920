"""``transferops ...`` run in the test's own process.

The same ``flows.cli.main`` the console script calls, without a new interpreter
importing torch, timm and BentoML again (5 s a command on 2 cores). The
commands that must be a process of their own (killed, timed, served) still run
as subprocesses in their tests; tests/test_cli.py runs the console script.
"""

from __future__ import annotations

import io
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest


def transferops(*args: str, cwd: Path | None = None, columns: int = 200):
    """Exit code, stdout and stderr of ``transferops ARGS`` (rich tables ``columns`` wide)."""
    import torch

    from flows.cli import main

    threads = torch.get_num_threads()  # a command sets params' threads; the worker keeps its own
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), redirect_stderr(err):
        patch.setenv("COLUMNS", str(columns))
        if cwd is not None:
            patch.chdir(cwd)
        try:
            code = main(list(args))
        except SystemExit as exited:
            code = exited.code
        finally:
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["transferops", *args], code, out.getvalue(), err.getvalue())


def run_stage(stage: str, params: Path, env: dict[str, str] | None = None) -> None:
    """``python -m pipelines.STAGE --params PARAMS`` in this process, from the params' folder.

    Fails the test with the stage's error output when it exits non-zero.
    """
    import importlib

    import torch

    main = importlib.import_module(f"pipelines.{stage}").main
    threads = torch.get_num_threads()
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stderr(err):
        patch.chdir(params.parent)
        for key, value in (env or {}).items():
            patch.setenv(key, value)
        try:
            code = main(["--params", str(params)])
        finally:
            torch.set_num_threads(threads)
    assert code == 0, f"stage {stage}: {err.getvalue()[-3000:]}"
