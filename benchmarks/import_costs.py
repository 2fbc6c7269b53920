"""What each entry point costs before it does anything: a fresh interpreter importing it.

Every DVC stage, flow run, ``transferops`` command and ``bentoml serve``
process pays its imports again; a DVC training starts eight stage
processes, and ``bentoml serve`` imports the service in its parent process
and again in each worker. Each module is imported in a new interpreter,
``--repeats`` times, first as any importer does (Python's cyclic collector
on), then with the collector paused as a stage process and a service worker
start (``transferops.runtime.pause_garbage_collector``); the table gives the
median wall time, the CPU time, how much of it the collector took, and
whether torch came along. Run it on an idle machine:

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
PROBE = """
import gc, sys, time
spent, started = [0.0], [0.0]

def collector(phase, info):
    if phase == "start":
        started[0] = time.process_time()
    else:
        spent[0] += time.process_time() - started[0]

gc.callbacks.append(collector)
if {paused}:
    gc.disable()
wall, cpu = time.perf_counter(), time.process_time()
import {module}
print(time.perf_counter() - wall, time.process_time() - cpu, spent[0], "torch" in sys.modules)
"""


def import_once(module: str, paused: bool) -> tuple[float, float, float, bool]:
    """Importing ``module`` in a new interpreter: wall seconds, CPU seconds, CPU seconds
    in the cyclic collector, and whether it imported torch."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module, paused=paused)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    wall, cpu, collector, torch = done.stdout.split()
    return float(wall), float(cpu), float(collector), torch == "True"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="imports per module (median)")
    args = parser.parse_args(argv)
    table = Table(title=f"import costs ({platform.node()}, {os.cpu_count()} cores)")
    columns = ("module", "who pays it", "median s", "CPU s", "of it GC", "CPU s, GC paused")
    for column in (*columns, "torch"):
        table.add_column(column, justify="left" if column in ("module", "who pays it") else "right")
    for module, who in ENTRY_POINTS:
        runs = [import_once(module, paused=False) for _ in range(args.repeats)]
        paused = [import_once(module, paused=True) for _ in range(args.repeats)]
        table.add_row(
            module,
            who,
            f"{statistics.median(r[0] for r in runs):.2f}",
            f"{statistics.median(r[1] for r in runs):.2f}",
            f"{statistics.median(r[2] for r in runs):.2f}",
            f"{statistics.median(r[1] for r in paused):.2f}",
            "yes" if runs[0][3] else "no",
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
