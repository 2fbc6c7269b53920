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

import html
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from monitoring.decision import DECISIONS
from monitoring.drift import HISTORY
from monitoring.summary import gap_cells
from transferops.config import Params
from transferops.logs.jsonl import read_jsonl
from transferops.logs.runs import read_records
from transferops.registry import champion

INDEX = "index.html"
RECENT = 15  # rows per table

STYLE = """
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#1f3b57;color:#fff;padding:16px 24px}
header a{color:#cfe3ff}
nav a{margin-right:14px}
section{background:#fff;margin:16px 24px;padding:8px 20px 16px;border-radius:8px;
box-shadow:0 1px 3px rgba(0,0,0,.12)}
table{border-collapse:collapse;width:100%;font-size:14px}
th{text-align:left;background:#eef1f5;padding:4px 8px}
td{padding:4px 8px;border-top:1px solid #e3e6ea;vertical-align:top}
.status{font-weight:bold;padding:1px 8px;border-radius:10px;color:#fff}
.drift,.failed,.alarm,.refused{background:#c0392b}
.no_drift,.passed,.completed,.promoted,.promote{background:#27ae60}
.insufficient_data,.running,.kept,.rollback{background:#7f8c8d}
.retrain{background:#e67e22}
img{max-width:48%;margin:6px 1% 0 0;border:1px solid #e3e6ea}
.empty{color:#777;font-style:italic}
"""


def build_index(params: Params, out: Path | None = None) -> Path:
    """Write the index page; return its path. Missing inputs make empty, explained sections."""
    reports = Path(params.paths.reports)
    out = Path(out) if out else reports / INDEX
    out.parent.mkdir(parents=True, exist_ok=True)
    page = Page(out.parent)
    drift_dir = reports / "drift"
    checks = read_jsonl(drift_dir / HISTORY)
    sections = [
        page.drift_section(checks, params),
        page.bias_section(checks[-1] if checks else None),
        page.decisions_section(read_jsonl(drift_dir / DECISIONS)),
        page.models_section(params.paths.models),
        page.validation_section(params),
        page.runs_section(read_records(reports)),
    ]
    holder = champion.current(params.paths.models)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    body = "\n".join(sections)
    nav = " ".join(
        f'<a href="#{key}">{key}</a>'
        for key in ("drift", "bias", "decisions", "models", "validation", "runs")
    )
    text = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>transferops: review</title>
<style>{STYLE}</style></head><body>
<header><h1 style="margin:0 0 6px">transferops: review</h1>
<div id="champion">Champion: <code>{esc(holder.tag if holder else "none yet")}</code>
&middot; built {esc(now)}</div><nav>{nav}</nav></header>
{body}
</body></html>
"""
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(out)  # a failed build leaves the last good page
    return out


def esc(value: object) -> str:
    return html.escape(str(value))


def when(stamp: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC, as recorded)."""
    return esc(str(stamp or "")[:19].replace("T", " "))


def badge(word: str | None) -> str:
    word = word or "-"
    return f'<span class="status {esc(word)}">{esc(word.replace("_", " "))}</span>'


def table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    """Cells are HTML already (escape what comes from data)."""
    if not rows:
        return f'<p class="empty">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class Page:
    """Sections of the index; links are made relative to the page's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def link(self, target: str | Path | None, text: str | None = None) -> str:
        if not target:
            return "-"
        path = Path(target)
        if not path.exists():
            return f"{esc(text or path.name)} (missing)"
        href = os.path.relpath(path.resolve(), self.folder.resolve())
        return f'<a href="{esc(href)}">{esc(text or path.name)}</a>'

    def image(self, path: Path, alt: str) -> str:
        if not path.is_file():
            return ""
        href = os.path.relpath(path.resolve(), self.folder.resolve())
        return f'<img src="{esc(href)}" alt="{esc(alt)}">'

    def drift_section(self, checks: list[dict], params: Params) -> str:
        if not checks:
            return section(
                "drift",
                "Domain shift",
                '<p class="empty">No drift check yet: run '
                "<code>transferops monitor</code> (or let the scheduled check run).</p>",
            )
        latest = checks[-1]
        report_dir = Path(latest["report_dir"]) if latest.get("report_dir") else None
        reasons = "".join(f"<li>{esc(r)}</li>" for r in latest.get("reasons", []))
        pictures = ""
        if report_dir:
            pictures = self.image(report_dir / "drift_history.png", "drift history")
            pictures += self.image(report_dir / "stage_shift.png", "where the shift sits")
        latest_html = (
            f'<p id="latest-verdict">Latest check {when(latest.get("checked_at"))}: '
            f"{badge(latest['status'])} model <code>{esc(latest.get('model_tag'))}</code>, "
            f"window {latest.get('window_size')} vs reference {latest.get('reference_size')}; "
            f"shift located <b>{esc(latest.get('shift_location') or 'nowhere')}</b>. "
            f"Report: {self.link(report_dir and report_dir / 'report.html', 'report.html')}"
            f"</p><ul>{reasons}</ul>{pictures}"
        )
        rows = [
            [
                when(c.get("checked_at", "")),
                badge(c["status"]),
                f"<code>{esc(c.get('model_tag'))}</code>",
                esc("; ".join(c.get("reasons", []))[:300]),
                self.link(c.get("report_dir") and Path(c["report_dir"]) / "report.html", "report"),
            ]
            for c in reversed(checks[-RECENT:])
        ]
        workspace = Path(params.paths.reports) / "drift" / "workspace"
        return section(
            "drift",
            "Domain shift",
            latest_html
            + "<h3>Recent checks</h3>"
            + table(["checked", "verdict", "model", "why", "report"], rows, "no checks")
            + f"<p>All runs in Evidently's UI: <code>evidently ui --workspace {esc(workspace)}"
            "</code></p>",
        )

    def bias_section(self, latest: dict | None) -> str:
        if latest is None:
            return section("bias", "Bias", '<p class="empty">No check yet.</p>')
        bias = latest.get("bias") or {}
        rows = [
            [*gap_cells(g), badge("alarm") if g.get("alarm") else "-"] for g in bias.get("gaps", [])
        ]
        alarms = "".join(f"<li>{esc(a)}</li>" for a in bias.get("alarms", []))
        skipped = "".join(f"<li>{esc(s)}</li>" for s in bias.get("skipped", []))
        picture = ""
        if latest.get("report_dir"):
            picture = self.image(Path(latest["report_dir"]) / "group_gaps.png", "group gaps")
        return section(
            "bias",
            "Bias: per-group gaps (latest check)",
            (f"<ul>{alarms}</ul>" if alarms else "<p>No bias alarm.</p>")
            + table(
                ["group", "metric", "gap now [interval]", "reference", "n", ""],
                rows,
                "No group had enough traffic to judge, or no request carried a group.",
            )
            + (f"<p>Not judged:</p><ul>{skipped}</ul>" if skipped else "")
            + picture,
        )

    def decisions_section(self, decisions: list[dict]) -> str:
        rows = [
            [
                when(d.get("decided_at", "")),
                badge("retrain" if d.get("retrain") else "kept"),
                esc(d.get("strategy") or "-"),
                esc(d.get("reason", "")),
            ]
            for d in reversed(decisions[-RECENT:])
        ]
        return section(
            "decisions",
            "Retrain decisions",
            table(["decided", "retrain", "strategy", "why"], rows, "No decision yet."),
        )

    def models_section(self, models_dir: Path) -> str:
        holder = champion.current(models_dir)
        rows = []
        for change in reversed(champion.history(models_dir)[-RECENT:]):
            gate = change.gate or {}
            rows.append(
                [
                    when(change.time),
                    badge(change.action),
                    f"<code>{esc(change.previous or '-')}</code> &rarr; "
                    f"<code>{esc(change.tag)}</code>",
                    esc(change.via),
                    esc(change.actor),
                    esc(change.reason),
                    self.link(gate.get("report"), "gate verdict") if gate else "-",
                ]
            )
        now = (
            f"<p>Serving: <code>{esc(holder.tag)}</code> since {when(holder.time)}.</p>"
            if holder
            else '<p class="empty">No champion yet.</p>'
        )
        return section(
            "models",
            "Model history",
            now
            + table(
                ["when", "action", "champion change", "via", "who", "why", "gate"],
                rows,
                "No champion change yet.",
            ),
        )

    def validation_section(self, params: Params) -> str:
        validation = Path(params.paths.validation)
        result_file = validation / "result.json"
        if result_file.is_file():
            result = json.loads(result_file.read_text())
            failed = [c for c in result.get("checks", []) if not c.get("success")]
            latest = (
                f'<p id="latest-validation">Latest pipeline validation: '
                f"{badge('passed' if result.get('success') else 'failed')} "
                f"{result.get('images')} images, {result.get('classes')} classes, "
                f"{len(result.get('problems', []))} problem(s), "
                f"{len(result.get('quarantined', []))} quarantined; "
                f"{len(result.get('checks', [])) - len(failed)} of "
                f"{len(result.get('checks', []))} expectations met. "
                f"{self.link(validation / 'docs' / 'index.html', 'Great Expectations Data Docs')}"
                f", {self.link(validation / 'problems.txt', 'problems.txt')}</p>"
            )
        else:
            latest = '<p class="empty">No pipeline validation yet (run the training flow).</p>'
        registry = read_jsonl(Path(params.paths.registry))
        rows = [
            [
                when(v.get("added_at", "")),
                esc(v.get("name")),
                f"<code>{esc((v.get('version') or '-')[:12])}</code>",
                esc(v.get("images")),
                badge(v.get("status")),
                esc(v.get("problems")),
                self.link(v.get("report"), "problems"),
            ]
            for v in reversed(registry[-RECENT:])
        ]
        return section(
            "validation",
            "Data validation",
            latest
            + "<h3>Dataset versions added</h3>"
            + table(
                ["added", "name", "version", "images", "status", "problems", "report"],
                rows,
                "No dataset added with `transferops data add` yet.",
            ),
        )

    def runs_section(self, records: list[dict]) -> str:
        rows = []
        for record in reversed(records[-RECENT:]):
            result, trigger = record.get("result") or {}, record.get("trigger") or {}
            what = _run_summary(result) or esc(record.get("error", ""))
            rows.append(
                [
                    when(record.get("started_at", "")),
                    esc(record.get("flow")),
                    esc(trigger.get("kind", "-"))
                    + (f"<br>{esc(_short(trigger['reason']))}" if trigger.get("reason") else ""),
                    badge(record.get("status")),
                    what,
                    self.link(record.get("record"), "record"),
                ]
            )
        return section(
            "runs",
            "Flow runs",
            table(["started", "flow", "trigger", "status", "outcome", ""], rows, "No run yet."),
        )


def _run_summary(result: dict) -> str:
    parts = []
    if result.get("model_tag") and "gate" in result:
        gate = result["gate"] or {}
        parts.append(
            f"trained <code>{esc(result['model_tag'])}</code> "
            f"(data <code>{esc(str(result.get('data_version', ''))[:12])}</code>): "
            + ("promoted" if gate.get("promoted") else "champion kept")
        )
    if isinstance(result.get("verdict"), dict):
        parts.append(f"verdict {esc(result['verdict'].get('status'))}")
    if isinstance(result.get("decision"), dict):
        parts.append(esc(_short(result["decision"].get("reason", ""))))
    if result.get("requested"):
        parts.append(f"retrain requested (event {esc(result['requested'].get('id', ''))[:8]})")
    return "<br>".join(parts)


def _short(text: str, limit: int = 160) -> str:
    """The start of a long reason (the record and the decisions table have all of it)."""
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{esc(title)}</h2>{body}</section>'
