"""What a reviewer reads first: the verdict in words, a table of what moved, pictures.

The block opens every drift report (it is put first in Evidently's HTML
page); the same pictures are saved as PNG files beside it.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from monitoring.pages import render
from monitoring.shift import (
    CLASSIFIER,
    EMBEDDING,
    PREDICTION,
    STAT,
    fires,
    input_level,
    relation,
)
from transferops.figures import new_figure, save_figure

TEST_TITLES = {
    EMBEDDING: "embeddings (MMD²)",
    CLASSIFIER: "embeddings told apart (classifier ROC AUC)",
    PREDICTION: "predicted classes (chi-square p)",
}
COLOURS = {"drift": "#b00020", "no_drift": "#1b7f3b", "insufficient_data": "#666666"}


def test_title(test: str) -> str:
    if test.startswith(STAT):
        return f"image {test[len(STAT) :]} (Wasserstein, ref. SDs)"
    return TEST_TITLES[test]


def margin(test: str, value: float, threshold: float) -> float:
    """How far a test is towards its threshold: 1 at the threshold, above 1 fires."""
    if test == PREDICTION:
        return np.log10(max(value, 1e-300)) / np.log10(threshold)
    if test == CLASSIFIER:  # chance is 0.5, not 0
        return (value - 0.5) / (threshold - 0.5) if threshold > 0.5 else float(value > 0.5)
    return value / threshold if threshold > 0 else float("inf") if value > 0 else 0.0


# --- pictures ---------------------------------------------------------------


def plot_history(history: list[dict], path: Path) -> None:
    """Each test's margin over the checks of the serving model; alarms in red."""
    checks = [h for h in history if h.get("tests")]
    figure, axes = new_figure(figsize=(8, 3.6))
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


def plot_accuracy(history: list[dict], path: Path) -> None:
    """Estimated accuracy per check (no labels), beside what feedback measured where it did."""
    checks = [h for h in history if h.get("accuracy")]
    figure, axes = new_figure(figsize=(8, 3.0))
    times = np.arange(len(checks))
    estimated = [h["accuracy"]["estimated"] for h in checks]
    confidence = [h["accuracy"]["mean_confidence"] for h in checks]
    feedback = [
        h["accuracy"]["feedback"] if h["accuracy"]["feedback_labels"] else np.nan for h in checks
    ]
    axes.plot(times, estimated, marker="o", ms=4, label="estimated (ATC, no labels)")
    axes.plot(times, confidence, ls=":", marker=".", label="mean calibrated confidence")
    axes.plot(times, feedback, ls="none", marker="s", ms=6, label="measured from feedback")
    if checks:
        axes.axhline(checks[-1]["accuracy"]["reference"], color="black", ls="--", lw=1,
                     label="reference (test split)")  # fmt: skip
        labels = [h["checked_at"][5:19].replace("T", " ") for h in checks]
        step = max(1, len(labels) // 8)
        axes.set_xticks(times[::step], labels[::step], rotation=20, fontsize=7)
    axes.set_ylim(0, 1.02)
    axes.set(ylabel="accuracy", title="Accuracy on the traffic, per check")
    axes.legend(fontsize=6, loc="lower left")
    save_figure(figure, path)


def plot_gaps(gaps: list[dict], path: Path) -> None:
    """Per group and metric: the current gap with its interval, and the reference's."""
    figure, axes = new_figure(figsize=(8, 1.6 + 0.42 * max(len(gaps), 1)))
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
    figure, axes = new_figure(figsize=(8, 3))
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


def gap_cells(gap: dict) -> list[str]:
    """A bias gap as plain table cells: group, metric, gap [interval], reference, n."""
    low, high = gap["interval"]
    return [
        str(gap["group"]),
        f"{gap['metric']} {gap.get('detail', '')}".strip(),
        f"{gap['current']:+.3f} [{low:+.3f}, {high:+.3f}]",
        f"{gap['reference']:+.3f}",
        str(gap["n"]),
    ]


HEADLINES = {
    "drift": "DRIFT: traffic no longer looks like the reference",
    "no_drift": "No drift: traffic looks like the reference",
    "insufficient_data": "No verdict: too few predictions",
}


def shift_kind(location: str | None, fired: list[str]) -> str:
    """What a shift located in ``location`` is, in words."""
    if input_level(location, fired):
        return "with the image statistics, an input-level shift (noise, blur, light, a new camera)"
    if location == "early":
        return "but no image statistic moved, so it is not called input-level"
    return "a semantic shift, or one the early stages absorb (noise and JPEG land here too)"


def html_block(verdict: dict, pictures: list[Path], galleries: list[Path] = ()) -> str:
    """The summary that opens the report: verdict, what moved, by how much, sample sizes,
    the pictures, then the galleries (``monitoring/gallery.py``)."""
    status, bias = verdict["status"], verdict.get("bias", {})
    location = verdict.get("shift_location")
    fired = [t for t, v in verdict.get("tests", {}).items() if v["fired"]]
    return render(
        "summary.html.j2",
        colour=COLOURS[status],
        headline=(
            f"Known traffic: unlike the reference as a whole, like its "
            f"'{verdict['regime']}' part, which the model was trained on"
            if verdict.get("regime")
            else HEADLINES[status]
        ),
        model=str(verdict["model_tag"]),
        window=verdict["window_size"],
        window_start=str(verdict.get("window_start", "")),
        window_end=str(verdict.get("window_end", "")),
        reference=verdict["reference_size"],
        false_alarm_rate=verdict.get("false_alarm_rate", ""),
        checked=verdict["checked_at"],
        reasons=verdict["reasons"],
        accuracy=verdict.get("accuracy") or None,
        where={"location": location, "kind": shift_kind(location, fired)}
        if location and status == "drift"
        else None,
        tests=[
            {
                "title": test_title(t),
                "value": f"{v['value']:.3g}",
                "when": f"{relation(t)} {v['threshold']:.3g}",
                "moved": fires(t, v["value"], v["threshold"]),
                "detail": v.get("detail", ""),
            }
            for t, v in verdict.get("tests", {}).items()
        ],
        gaps=[{"cells": gap_cells(g), "alarm": g["alarm"]} for g in bias.get("gaps", [])],
        no_gaps="no group had enough traffic to judge"
        if bias.get("skipped")
        else "no request in this window carried a group",
        skipped=bias.get("skipped", []),
        untested=verdict.get("untested", []),
        pictures=[_inline(p) for p in pictures if p.is_file()],
        galleries=[
            {"title": g["title"], "picture": _inline(path)}
            for g, path in zip(verdict.get("gallery", []), galleries, strict=True)
        ],
    )


def _inline(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
