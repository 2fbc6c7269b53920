"""What a reviewer reads first: the verdict in words, a table of what moved, pictures.

The block opens every drift report (it is put first in Evidently's HTML
page); the same pictures are saved as PNG files beside it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from monitoring.shift import EMBEDDING, PREDICTION, STAT, fires, input_level, relation
from transferops.figures import plt, save_figure

TEST_TITLES = {EMBEDDING: "embeddings (MMD²)", PREDICTION: "predicted classes (chi-square p)"}
COLOURS = {"drift": "#b00020", "no_drift": "#1b7f3b", "insufficient_data": "#666666"}


def test_title(test: str) -> str:
    if test.startswith(STAT):
        return f"image {test[len(STAT) :]} (Wasserstein, ref. SDs)"
    return TEST_TITLES[test]


def margin(test: str, value: float, threshold: float) -> float:
    """How far a test is towards its threshold: 1 at the threshold, above 1 fires."""
    if test == PREDICTION:
        return np.log10(max(value, 1e-300)) / np.log10(threshold)
    return value / threshold if threshold > 0 else float("inf") if value > 0 else 0.0


# --- pictures ---------------------------------------------------------------


def plot_history(history: list[dict], path: Path) -> None:
    """Each test's margin over the checks of the serving model; alarms in red."""
    checks = [h for h in history if h.get("tests")]
    figure, axes = plt.subplots(figsize=(8, 3.6))
    if checks:
        times = np.arange(len(checks))
        for test in checks[-1]["tests"]:
            values = [
                margin(test, h["tests"][test]["value"], h["tests"][test]["threshold"])
                if test in h["tests"]
                else np.nan
                for h in checks
            ]
            axes.plot(times, np.minimum(values, 50), marker="o", ms=3, label=test_title(test))
        for i, h in enumerate(checks):
            if h["status"] == "drift":
                axes.axvspan(i - 0.4, i + 0.4, color="#b00020", alpha=0.12, lw=0)
        labels = [h["checked_at"][5:19].replace("T", " ") for h in checks]
        step = max(1, len(labels) // 8)
        axes.set_xticks(times[::step], labels[::step], rotation=20, fontsize=7)
    axes.axhline(1, color="black", ls="--", lw=1, label="calibrated threshold")
    axes.set_yscale("symlog", linthresh=1)
    axes.set_ylim(bottom=0)
    axes.set(ylabel="score / threshold", title="Drift over time (red: drift verdict)")
    axes.legend(fontsize=6, ncol=2, loc="upper left")
    save_figure(figure, path)


def plot_gaps(gaps: list[dict], path: Path) -> None:
    """Per group and metric: the current gap with its interval, and the reference's."""
    figure, axes = plt.subplots(figsize=(8, 1.6 + 0.42 * max(len(gaps), 1)))
    for i, gap in enumerate(gaps):
        low, high = gap["interval"]
        colour = "#b00020" if gap["alarm"] else "#1f77b4"
        axes.errorbar(
            gap["current"],
            i,
            xerr=[[gap["current"] - low], [high - gap["current"]]],
            fmt="o",
            color=colour,
            capsize=3,
        )
        axes.plot(gap["reference"], i, "k|", ms=14)
    axes.set_yticks(
        range(len(gaps)),
        [f"{g['group']}: {g['metric']} {g['detail']}".strip() for g in gaps],
        fontsize=8,
    )
    axes.axvline(0, color="grey", lw=0.8)
    axes.set(
        xlabel="gap to the other groups (group - rest); | = reference",
        title="Per-group gaps (red: bias alarm)",
    )
    if not gaps:
        axes.text(0.5, 0.5, "no group had enough traffic", ha="center", transform=axes.transAxes)
    save_figure(figure, path)


def plot_stages(effects: dict[str, float], location: str, path: Path) -> None:
    """Per stage, how far the window's BatchNorm distances moved (reference SDs)."""
    figure, axes = plt.subplots(figsize=(8, 3))
    names = list(effects)
    axes.bar(names, [abs(effects[n]) for n in names], color="#1f77b4")
    axes.axvspan(-0.5, len(names) // 2 - 0.5, color="orange", alpha=0.12, lw=0)
    axes.set(
        ylabel="|shift| (reference SDs)",
        title=f"Where the shift sits: {location} (shaded: early stages)",
    )
    axes.tick_params(axis="x", labelsize=8)
    save_figure(figure, path)


# --- the HTML block ---------------------------------------------------------


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _rows(rows: list[list[str]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)


def gap_cells(gap: dict) -> list[str]:
    """A bias gap as table cells (HTML-escaped): group, metric, gap [interval], reference, n."""
    low, high = gap["interval"]
    return [
        html.escape(str(gap["group"])),
        html.escape(f"{gap['metric']} {gap.get('detail', '')}".strip()),
        f"{gap['current']:+.3f} [{low:+.3f}, {high:+.3f}]",
        f"{gap['reference']:+.3f}",
        str(gap["n"]),
    ]


def html_block(verdict: dict, pictures: list[Path]) -> str:
    """The summary that opens the report: verdict, what moved, by how much, sample sizes."""
    esc = html.escape
    status = verdict["status"]
    headline = {
        "drift": "DRIFT: traffic no longer looks like the reference",
        "no_drift": "No drift: traffic looks like the reference",
        "insufficient_data": "No verdict: too few predictions",
    }[status]
    tests = [
        [
            esc(test_title(t)),
            f"{v['value']:.3g}",
            esc(f"{relation(t)} {v['threshold']:.3g}"),
            "<b>moved</b>" if fires(t, v["value"], v["threshold"]) else "-",
            esc(v.get("detail", "")),
        ]
        for t, v in verdict.get("tests", {}).items()
    ]
    gaps = [
        [*gap_cells(g), "<b>ALARM</b>" if g["alarm"] else "-"]
        for g in verdict.get("bias", {}).get("gaps", [])
    ]
    reasons = "".join(f"<li>{esc(r)}</li>" for r in verdict["reasons"]) or "<li>nothing moved</li>"
    skipped = "".join(f"<li>{esc(s)}</li>" for s in verdict.get("bias", {}).get("skipped", []))
    location = verdict.get("shift_location")
    fired = [t for t, v in verdict.get("tests", {}).items() if v["fired"]]
    if input_level(location, fired):
        kind = "with the image statistics, an input-level shift (noise, blur, light, a new camera)"
    elif location == "early":
        kind = "but no image statistic moved, so it is not called input-level"
    else:
        kind = "a semantic shift, or one the early stages absorb (noise and JPEG land here too)"
    where = (
        f"<p>BatchNorm statistics moved most in the <b>{esc(location)}</b> stages: {esc(kind)}.</p>"
        if location and verdict["status"] == "drift"
        else ""
    )
    if not gaps:
        why = (
            "no group had enough traffic to judge"
            if verdict.get("bias", {}).get("skipped")
            else "no request in this window carried a group"
        )
        gaps = [["-", why, "", "", "", ""]]
    untested = "".join(f"<li>{esc(u)}: not tested</li>" for u in verdict.get("untested", []))
    untested = f"<p>Image statistics:</p><ul>{untested}</ul>" if untested else ""
    head = "th{text-align:left;padding:2px 8px}td{padding:2px 8px;border-top:1px solid #ddd}"
    return f"""
<div id="transferops-summary" style="font-family:sans-serif;margin:16px;padding:16px;
border:3px solid {COLOURS[status]};border-radius:8px;background:#fff">
<style>#transferops-summary {head}</style>
<h2 style="color:{COLOURS[status]};margin-top:0">{esc(headline)}</h2>
<p>Model <code>{esc(str(verdict["model_tag"]))}</code>; window of
<b>{verdict["window_size"]}</b> predictions ({esc(str(verdict.get("window_start", "")))} to
{esc(str(verdict.get("window_end", "")))}) against <b>{verdict["reference_size"]}</b> reference
images; thresholds calibrated for a false-alarm rate of {verdict.get("false_alarm_rate", "")}
per check. Checked {esc(verdict["checked_at"])}.</p>
<ul>{reasons}</ul>
{where}
<h3>Domain shift tests</h3>
<table><tr><th>test</th><th>value</th><th>fires when</th><th></th><th>detail</th></tr>
{_rows(tests)}</table>
<h3>Bias: per-group gaps</h3>
<table><tr><th>group</th><th>metric</th><th>gap now [interval]</th><th>reference</th>
<th>n</th><th></th></tr>{_rows(gaps)}</table>
{f"<p>Not judged:</p><ul>{skipped}</ul>" if skipped else ""}
{untested}
{"".join(_image(p) for p in pictures if p.is_file())}
<p style="color:#666">Below: Evidently's report of the same tests, with the same thresholds.</p>
</div>
"""
