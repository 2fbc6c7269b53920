"""Run records on disk: one JSON file per flow run and an index of them all.

The flows write them (flows/records.py adds Prefect's side); the reviewers'
index page reads them. ``reports/runs/<time>-<flow>-<run>.json`` holds one
run whole; ``reports/runs/runs.jsonl`` has every record, oldest first.
"""

from __future__ import annotations

import json
from pathlib import Path

from transferops.files import write_atomic
from transferops.logs.jsonl import append_line, read_jsonl

RUNS_DIR = "runs"
RUNS_LOG = "runs.jsonl"


def runs_dir(reports: Path) -> Path:
    return Path(reports) / RUNS_DIR


def write_record(reports: Path, record: dict) -> Path:
    """Write the run's file (whole, then renamed into place) and append it to the index.

    A run is written when it starts (``running``) and again when it ends; the
    index keeps both lines and readers take the last one per run.
    """
    folder = runs_dir(reports)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = record["started_at"].replace(":", "").replace("+0000", "Z")
    path = folder / f"{stamp}-{record['flow']}-{record['run']['name'] or 'local'}.json"
    record["record"] = str(path)
    write_atomic(path, json.dumps(record, indent=2, default=str))
    append_line(folder / RUNS_LOG, json.dumps(record, default=str))
    return path


def read_records(reports: Path) -> list[dict]:
    """Every run record, oldest first; a run's last line wins (started, then ended)."""
    latest: dict[str, dict] = {}
    for row in read_jsonl(runs_dir(reports) / RUNS_LOG):
        latest[row.get("record", str(len(latest)))] = row
    return list(latest.values())
