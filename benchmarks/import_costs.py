"""What each entry point costs before it does anything: a fresh interpreter importing it.

Every DVC stage, flow run, ``transferops`` command and ``bentoml serve``
process pays its imports again; a DVC training starts eight stage
processes, and ``bentoml serve`` imports the service in its parent process
and again in each worker. Each module is imported in a new interpreter,
``--repeats`` times; the table gives the median wall time and whether torch
came along. Run it on an idle machine:

    .venv/bin/python benchmarks/import_costs.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = (
    ("services.service", "bentoml serve's parent process (and each worker, before the model)"),
    ("flows.training", "a training flow run, before its first task"),
    ("flows.monitoring", "a monitoring flow run"),
    ("flows.deploy", "`transferops deploy`"),
    ("pipelines.prepare", "stage prepare"),
    ("pipelines.validate", "stage validate"),
    ("pipelines.features", "stage features"),
    ("pipelines.profile", "stage profile"),
    ("pipelines.strategy", "stage strategy"),
    ("pipelines.train", "stage train"),
    ("pipelines.evaluate", "stage evaluate"),
    ("pipelines.package", "stage package"),
)
PROBE = (
    "import sys, time; t = time.perf_counter(); import {module}; "
    "print(time.perf_counter() - t, 'torch' in sys.modules)"
)


def import_once(module: str) -> tuple[float, bool]:
    """Seconds to import ``module`` in a new interpreter, and whether it imported torch."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seconds, torch = done.stdout.split()
    return float(seconds), torch == "True"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="imports per module (median)")
    args = parser.parse_args(argv)
    table = Table(title=f"import costs ({platform.node()}, {os.cpu_count()} cores)")
    for column in ("module", "who pays it", "median s", "torch"):
        table.add_column(column, justify="right" if column == "median s" else "left")
    for module, who in ENTRY_POINTS:
        runs = [import_once(module) for _ in range(args.repeats)]
        seconds = statistics.median(s for s, _ in runs)
        table.add_row(module, who, f"{seconds:.2f}", "yes" if runs[0][1] else "no")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
