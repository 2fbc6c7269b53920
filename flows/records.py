"""Run records: every flow run says what started it and what came of it.

A record is a JSON file per run under ``reports/runs/`` plus one line in
``reports/runs/runs.jsonl`` (the index page reads it), and a Markdown
artifact on the Prefect run, so the UI shows the same facts. A run that
fails still leaves its record, with the error.

Fields: ``flow``, ``run`` (Prefect's name and id), ``deployment``,
``trigger`` (what started it: a schedule, a drift event with its decision,
a person at the CLI), ``status``, ``started_at``/``finished_at``, and what
the flow put in ``result``: data version, decision, gate outcome, champion,
links to the reports.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from prefect import runtime

from transferops.config import Params
from transferops.logs import runs

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def describe_trigger(trigger: dict | None) -> dict:
    """What started this run: the flow's ``trigger`` parameter, else the deployment or a person."""
    if trigger:
        return dict(trigger)
    deployment = runtime.deployment.name
    if deployment:
        return {
            "kind": "deployment run",
            "deployment": f"{runtime.flow_run.flow_name}/{deployment}",
        }
    return {"kind": "manual", "by": os.environ.get("USER") or "unknown"}


@contextlib.contextmanager
def recorded_run(params: Params, flow: str, trigger: dict | None) -> Iterator[dict]:
    """Yield the ``result`` dict for the flow to fill; write the record as it starts and ends.

    On an exception the record says ``failed`` with the error, and the
    exception goes on. Then the reviewers' index page is rebuilt, so it
    always shows the latest runs.
    """
    record = {
        "flow": flow,
        "run": {"name": runtime.flow_run.name, "id": runtime.flow_run.id},
        "deployment": runtime.deployment.name,
        "trigger": describe_trigger(trigger),
        "status": "running",
        "started_at": _now(),
        "result": {},
    }
    runs.write_record(params.paths.reports, record)  # a killed run leaves "running"
    try:
        yield record["result"]
        record["status"] = "completed"
    except BaseException as err:
        record["status"] = "failed"
        record["error"] = f"{type(err).__name__}: {err}"[:2000]
        raise
    finally:
        record["finished_at"] = _now()
        write_record(params.paths.reports, record)
        refresh_index(params)


def refresh_index(params: Params) -> None:
    """Rebuild ``reports/index.html`` (best effort: a failure never fails the run)."""
    try:
        from monitoring.index import build_index

        build_index(params)
    except Exception as err:
        log.warning("could not rebuild the reviewers' index: %s", err)


def write_record(reports: Path, record: dict) -> Path:
    """The record on disk (transferops/logs/runs.py) and as an artifact on the Prefect run."""
    path = runs.write_record(reports, record)
    _artifact(record)
    return path


def _artifact(record: dict) -> None:
    """The record as a Markdown artifact on the Prefect run (best effort: files are the record)."""
    if not record["run"]["id"]:
        return
    from prefect.artifacts import create_markdown_artifact

    trigger = ", ".join(f"{k}: {v}" for k, v in record["trigger"].items())
    lines = [
        f"### {record['flow']} run: {record['status']}",
        f"- trigger: {trigger}",
        *(f"- {key}: {value}" for key, value in _headline(record["result"]).items()),
        f"- record: `{record['record']}`",
    ]
    if "error" in record:
        lines.append(f"- error: {record['error']}")
    try:
        create_markdown_artifact(
            markdown="\n".join(lines), key=f"transferops-{record['flow']}-run", description=trigger
        )
    except Exception as err:  # the API may be gone while a failed run unwinds
        log.warning("could not attach the run record to Prefect: %s", err)


def _headline(result: dict) -> dict:
    """The record's fields a person scans first (the file has the rest)."""
    picks = {}
    for key in ("model_tag", "data_version", "champion", "report_dir", "requested"):
        if result.get(key):
            picks[key] = result[key]
    if isinstance(result.get("gate"), dict):
        picks["gate"] = "promoted" if result["gate"].get("promoted") else "champion kept"
    if isinstance(result.get("decision"), dict):
        picks["decision"] = result["decision"].get("reason")
    if isinstance(result.get("verdict"), dict):
        picks["verdict"] = result["verdict"].get("status")
    return picks
