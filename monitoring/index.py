"""``transferops report``: one static HTML page for reviewers.

It gathers what the loop wrote and links to it, relative to the page, so the
reports folder can be copied or served as it is:

- ``#drift``: the latest check (verdict, reasons, its Evidently report,
  pictures) and the recent checks;
- ``#bias``: the latest check's per-group gaps, and what it could not judge;
- ``#decisions``: every retrain decision and why;
- ``#models``: the champion now and every change: who, how, why, the gate's verdict;
- ``#validation``: the latest pipeline validation and every dataset version added;
- ``#runs``: recent flow runs and what triggered them.

No JavaScript and no network: it opens from disk in any browser.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from monitoring.decision import DECISIONS
from monitoring.drift import HISTORY
from monitoring.pages import relative_link, render, shorten, when
from monitoring.summary import gap_cells
from transferops.config import Params
from transferops.files import write_atomic
from transferops.logs.jsonl import read_jsonl
from transferops.logs.runs import read_records
from transferops.registry import champion

INDEX = "index.html"
RECENT = 15  # rows per table


def build_index(params: Params, out: Path | None = None) -> Path:
    """Write the index page; return its path. Missing inputs make empty, explained sections."""
    reports = Path(params.paths.reports)
    out = Path(out) if out else reports / INDEX
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = out.parent
    checks = read_jsonl(reports / "drift" / HISTORY)
    holder = champion.current(params.paths.models)
    text = render(
        "index.html.j2",
        champion=holder.tag if holder else None,
        built=datetime.now(UTC).isoformat(timespec="seconds"),
        drift=drift_section(checks, params, folder),
        bias=bias_section(checks[-1] if checks else None, folder),
        decisions=decisions_section(read_jsonl(reports / "drift" / DECISIONS)),
        models=models_section(params.paths.models, folder),
        validation=validation_section(params, folder),
        runs=runs_section(read_records(reports), folder),
    )
    write_atomic(out, text)  # a failed build leaves the last good page
    return out


def drift_section(checks: list[dict], params: Params, folder: Path) -> dict | None:
    if not checks:
        return None
    latest = checks[-1]
    report_dir = Path(latest["report_dir"]) if latest.get("report_dir") else None
    pictures = []
    if report_dir:
        for name, alt in (("drift_history.png", "drift history"), ("stage_shift.png", "stages")):
            if (report_dir / name).is_file():
                pictures.append(relative_link(report_dir / name, folder, alt))
    return {
        "latest": {
            "checked": when(latest.get("checked_at")),
            "status": latest["status"],
            "model": latest.get("model_tag"),
            "window": latest.get("window_size"),
            "reference": latest.get("reference_size"),
            "location": latest.get("shift_location"),
            "report": relative_link(report_dir and report_dir / "report.html", folder),
            "reasons": latest.get("reasons", []),
            "pictures": pictures,
        },
        "checks": [
            {
                "checked": when(c.get("checked_at")),
                "status": c["status"],
                "model": c.get("model_tag"),
                "why": shorten("; ".join(c.get("reasons", [])), 300),
                "report": relative_link(
                    c.get("report_dir") and Path(c["report_dir"]) / "report.html", folder, "report"
                ),
            }
            for c in reversed(checks[-RECENT:])
        ],
        "workspace": str(Path(params.paths.reports) / "drift" / "workspace"),
    }


def bias_section(latest: dict | None, folder: Path) -> dict | None:
    if latest is None:
        return None
    bias = latest.get("bias") or {}
    picture = None
    if latest.get("report_dir"):
        picture = relative_link(Path(latest["report_dir"]) / "group_gaps.png", folder, "gaps")
    return {
        "alarms": bias.get("alarms", []),
        "gaps": [{"cells": gap_cells(g), "alarm": g.get("alarm")} for g in bias.get("gaps", [])],
        "skipped": bias.get("skipped", []),
        "picture": picture,
    }


def decisions_section(decisions: list[dict]) -> list[dict]:
    return [
        {
            "decided": when(d.get("decided_at")),
            "retrain": d.get("retrain"),
            "strategy": d.get("strategy") or "-",
            "reason": d.get("reason", ""),
        }
        for d in reversed(decisions[-RECENT:])
    ]


def models_section(models_dir: Path, folder: Path) -> dict:
    holder = champion.current(models_dir)
    changes = [
        {
            "when": when(change.time),
            "action": change.action,
            "previous": change.previous or "-",
            "tag": change.tag,
            "via": change.via,
            "actor": change.actor,
            "reason": change.reason,
            "gate": relative_link((change.gate or {}).get("report"), folder, "gate verdict"),
        }
        for change in reversed(champion.history(models_dir)[-RECENT:])
    ]
    return {
        "holder": {"tag": holder.tag, "since": when(holder.time)} if holder else None,
        "changes": changes,
    }


def validation_section(params: Params, folder: Path) -> dict:
    validation = Path(params.paths.validation)
    latest = None
    if (validation / "result.json").is_file():
        result = json.loads((validation / "result.json").read_text())
        checks = result.get("checks", [])
        latest = {
            "success": result.get("success"),
            "images": result.get("images"),
            "classes": result.get("classes"),
            "problems": len(result.get("problems", [])),
            "quarantined": len(result.get("quarantined", [])),
            "met": sum(1 for c in checks if c.get("success")),
            "checks": len(checks),
            "docs": relative_link(
                validation / "docs" / "index.html", folder, "Great Expectations Data Docs"
            ),
            "problems_file": relative_link(validation / "problems.txt", folder),
        }
    versions = [
        {
            "added": when(v.get("added_at")),
            "name": v.get("name"),
            "version": (v.get("version") or "-")[:12],
            "images": v.get("images"),
            "status": v.get("status"),
            "problems": v.get("problems"),
            "report": relative_link(v.get("report"), folder, "problems"),
        }
        for v in reversed(read_jsonl(Path(params.paths.registry))[-RECENT:])
    ]
    return {"latest": latest, "versions": versions}


def runs_section(records: list[dict], folder: Path) -> list[dict]:
    rows = []
    for record in reversed(records[-RECENT:]):
        result, trigger = record.get("result") or {}, record.get("trigger") or {}
        rows.append(
            {
                "started": when(record.get("started_at")),
                "flow": record.get("flow"),
                "trigger": trigger.get("kind", "-"),
                "trigger_reason": shorten(trigger["reason"]) if trigger.get("reason") else "",
                "status": record.get("status"),
                "outcome": run_outcome(result) or [record.get("error", "")],
                "record": relative_link(record.get("record"), folder, "record"),
            }
        )
    return rows


def run_outcome(result: dict) -> list[str]:
    """What a run came to, one line each."""
    lines = []
    if result.get("model_tag") and "gate" in result:
        promoted = (result["gate"] or {}).get("promoted")
        lines.append(
            f"trained {result['model_tag']} (data {str(result.get('data_version', ''))[:12]}): "
            + ("promoted" if promoted else "champion kept")
        )
    if isinstance(result.get("verdict"), dict):
        lines.append(f"verdict {result['verdict'].get('status')}")
    if isinstance(result.get("decision"), dict):
        lines.append(shorten(result["decision"].get("reason", "")))
    if result.get("requested"):
        lines.append(f"retrain requested (event {str(result['requested'].get('id', ''))[:8]})")
    return lines
