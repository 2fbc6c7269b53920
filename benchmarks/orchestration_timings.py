"""Where the demo's minutes go, from its run records: the orchestration's own costs.

Reads what `make demo` left in ``demo-workspace/`` (``reports/demo/summary.json``
and the run records ``reports/runs/runs.jsonl``), or runs the demo first with
``--run``, and prints one row per flow run plus the hand-offs between them:
the retrain event -> the triggered run's start (the automation plus the
serving process's poll), and the promotion -> the service serving it.

    .venv/bin/python benchmarks/orchestration_timings.py [--run] [--workspace demo-workspace]

Target (issue 9): the whole demo within 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from transferops.logs.runs import read_records

ROOT = Path(__file__).resolve().parents[1]
TARGET_MINUTES = 15


def seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run `transferops demo` first")
    parser.add_argument("--workspace", type=Path, default=ROOT / "demo-workspace")
    args = parser.parse_args(argv)
    if args.run:
        subprocess.run(
            [str(Path(sys.executable).parent / "transferops"), "demo"], cwd=ROOT, check=True
        )
    summary = json.loads((args.workspace / "reports/demo/summary.json").read_text())
    records = read_records(args.workspace / "reports")
    table = Table(title="make demo: flow runs and hand-offs (seconds)")
    for column in ("step", "trigger", "seconds"):
        table.add_column(column)
    request_sent = None
    for record in records:
        result = record.get("result") or {}
        what = record["flow"]
        if record["flow"] == "monitoring":
            what += f": {(result.get('verdict') or {}).get('status')}"
            if result.get("requested"):
                request_sent = record["finished_at"]
        else:
            stages = result.get("stages") or {}
            ran = [s for s, state in stages.items() if state == "ran"]
            what += f": {len(ran)} of {len(stages)} stages ran"
        if record["trigger"].get("kind") == "drift event" and request_sent:
            table.add_row(
                "  hand-off: event -> triggered run starts",
                "automation",
                f"{seconds(request_sent, record['started_at']):.0f}",
            )
        table.add_row(
            what,
            record["trigger"].get("kind", "-"),
            f"{seconds(record['started_at'], record['finished_at']):.0f}",
        )
    service = (summary.get("retrained") or {}).get("service") or {}
    if service.get("after_s") is not None:
        table.add_row(
            "  hand-off: promotion -> service serves it", "champion.json", str(service["after_s"])
        )
    minutes = summary["minutes"]
    verdict = "within" if minutes <= TARGET_MINUTES else "OVER"
    table.add_row(
        f"whole demo ({verdict} the {TARGET_MINUTES}-minute target)",
        "make demo",
        f"{60 * minutes:.0f}",
    )
    Console().print(table)
    return 0 if minutes <= TARGET_MINUTES else 1


if __name__ == "__main__":
    sys.exit(main())
