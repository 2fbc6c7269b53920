"""How a process starts: a stage imports its libraries with Python's cyclic collector
paused and runs with it on (transferops/runtime.py); CPU threads are what params say,
the BLAS under numpy and SciPy included."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

# Loaded by the stage process through PYTHONPATH: the collector's state when it exits.
EXIT_PROBE = """
import atexit, gc, json, os

def _record():
    state = {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}
    with open(os.environ["STARTUP_PROBE"], "w") as handle:
        json.dump(state, handle)

atexit.register(_record)
"""


def python(*args: str, **env: str) -> str:
    """``python ARGS`` in the project, without the test workers' one-thread settings
    (tests/conftest.py), ``env`` added; its stdout."""
    base = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    }
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=base | env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_stage_process_freezes_its_start_up_and_runs_with_the_collector_on(
    tmp_path: Path,
) -> None:
    (tmp_path / "sitecustomize.py").write_text(EXIT_PROBE)
    probe = tmp_path / "state.json"
    # --help: the stage module and its libraries are imported, run_stage starts, argparse exits.
    python(
        "-m",
        "pipelines.strategy",
        "--help",
        PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}",
        STARTUP_PROBE=str(probe),
    )
    state = json.loads(probe.read_text())
    assert state["enabled"], "the collector runs again once the stage starts"
    assert state["frozen"] > 50_000, "what start-up made (pandas, the core) is frozen"


def test_a_process_that_imports_a_stage_module_keeps_its_collector() -> None:
    script = "import gc, pipelines.strategy\nprint(gc.isenabled(), gc.get_freeze_count())"
    assert python("-c", script).split() == ["True", "0"], "a flow or a test imports stages too"


def test_threads_fix_torch_and_the_blas_pools() -> None:
    """3 threads: neither the default on the 2-core CI machine nor the test workers' 1."""
    script = (
        "import json, numpy, scipy.linalg\n"
        "from threadpoolctl import threadpool_info\n"
        "from transferops.runtime import set_threads\n"
        "set_threads(3)\n"
        "import torch\n"
        "pools = {i['filepath'].rsplit('/', 1)[-1]: i['num_threads'] for i in threadpool_info()}\n"
        "print(json.dumps({'torch': torch.get_num_threads(), 'pools': pools}))\n"
    )
    seen = json.loads(python("-c", script).splitlines()[-1])
    assert seen["torch"] == 3
    blas = [name for name in seen["pools"] if "openblas" in name]
    assert len(blas) >= 2, f"numpy's and SciPy's OpenBLAS are loaded: {seen['pools']}"
    assert set(seen["pools"].values()) == {3}, seen["pools"]
