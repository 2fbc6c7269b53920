"""Time the DVC pipeline as a user runs it, and print a table.

In a fresh temporary copy of the project (git + DVC), with the default
params: a full `dvc repro` (each stage timed from DVC's own output), then a
second `dvc repro` with nothing changed. Usage:

    .venv/bin/python benchmarks/pipeline_timings.py [-S key=value ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from flows.workspace import create_workspace
from transferops.commands import add_override_option
from transferops.config import apply_override
from transferops.runtime import TELEMETRY_OFF

ROOT = Path(__file__).resolve().parents[1]

STAGE_START = re.compile(r"^Running stage '([a-z_]+)'")


def timed_repro(repo: Path, env: dict[str, str]) -> tuple[float, dict[str, float], str]:
    """Run `dvc repro`; return total seconds, seconds per stage, and the output."""
    command = [sys.executable, "-m", "dvc", "repro"]
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    stages: dict[str, float] = {}
    current, mark, lines = None, started, []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        match = STAGE_START.match(line)
        if match:
            now = time.perf_counter()
            if current:
                stages[current] = now - mark
            current, mark = match[1], now
    if process.wait() != 0:
        raise SystemExit("dvc repro failed:\n" + "".join(lines[-20:]))
    end = time.perf_counter()
    if current:
        stages[current] = end - mark
    return end - started, stages, "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_override_option(parser)
    args = parser.parse_args()
    env = {
        **os.environ,
        **TELEMETRY_OFF,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    with tempfile.TemporaryDirectory(prefix="transferops-bench-") as tmp:
        repo = create_workspace(ROOT, Path(tmp) / "project")
        env["BENTOML_HOME"] = str(repo / ".bentoml")
        if args.overrides:
            raw = yaml.safe_load((repo / "params.yaml").read_text())
            for override in args.overrides:
                apply_override(raw, override, source=repo / "params.yaml")
            (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        total, stages, _ = timed_repro(repo, env)
        again, _, output = timed_repro(repo, env)
    table = Table(
        title=f"dvc repro, default params ({platform.node()}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')})"
    )
    table.add_column("step")
    table.add_column("seconds", justify="right")
    for stage, seconds in stages.items():
        table.add_row(f"stage {stage}", f"{seconds:.1f}")
    table.add_row("full dvc repro", f"{total:.1f}")
    up_to_date = "up to date" in output
    table.add_row(f"second dvc repro (up to date: {up_to_date})", f"{again:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
