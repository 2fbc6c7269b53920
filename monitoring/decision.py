"""The retrain decision: drift alone does not retrain; persistent drift outside a cooldown does.

Guards, in order (``monitor.retrain`` in params.yaml):

1. the latest check has a verdict (its window reached ``monitor.min_window``)
   and found drift;
2. persistence: at least ``alarms`` (K) of the last ``checks`` (N) checks of
   the same model with a verdict found drift, so one unlucky window (the
   calibrated false-alarm rate is not zero) does not start a retrain;
   **unless** the accuracy estimated without labels (``monitoring/accuracy.py``)
   fell at least ``urgent_drop`` below the reference's on the drifted window:
   a shift that costs that much accuracy is not left for K of N checks. The
   estimate counts only when it was fitted on at least ``MIN_FITTED_ROWS``
   reference images (a tiny reference's estimate is noise), and only beside a
   drift verdict: it never starts a retrain on its own, and known traffic
   (a regime the model was trained on, ``drift.known_regime``) is no drift,
   so a model retrained on a shift is not retrained again for it;
3. cooldown: no retrain started in the last ``cooldown_hours``;
4. new labelled data: the drifted traffic's kept images with feedback labels
   become a harvested drop (``flows/data.py``) with at least
   ``min_labels_per_class`` per class; until then the decision is **waiting
   for labels** (have/need per class, and the label queue to work from), and
   a retrain never starts on unchanged data. The harvest runs under the
   decision's lock, and only a retrain that has its drop starts the cooldown.

A retrain gets a strategy: when the domain shift is input-level (located in
the early stages, and an image statistic moved: ``shift.input_level``) and
``surgical`` is on, the champion's own
weights are fine-tuned in their first stages only (surgical fine-tuning, Lee
et al., ICLR 2023): ``strategy.force=surgical`` and
``model.weights=<champion weights>``. Otherwise the default strategy
decides. Every decision, yes or no, is appended to ``decisions.jsonl`` with
its reason; a retrain that starts is also appended to ``retrains.jsonl``,
which the cooldown reads. Deciding and recording happen under one file
lock, so two monitoring runs at once cannot both start a retrain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from monitoring.shift import input_level
from transferops.config import RetrainParams
from transferops.files import locked
from transferops.logs.jsonl import append_jsonl, read_jsonl

DECISIONS, RETRAINS, LOCK = "decisions.jsonl", "retrains.jsonl", ".decision.lock"
# Reference test rows behind the accuracy estimate before it may count: at 200 the ATC
# threshold's own sampling error is about 2.5 points; the test suite's 120 rows gave 0.62
# where the served accuracy was 0.3.
MIN_FITTED_ROWS = 200


def estimated_drop(check: dict) -> float | None:
    """How far a check's estimated accuracy fell below the reference's (None: no usable
    estimate: none recorded, or fitted on too few reference images)."""
    accuracy = check.get("accuracy") or {}
    if accuracy.get("estimated") is None or accuracy.get("fitted_rows", 0) < MIN_FITTED_ROWS:
        return None
    return float(accuracy["reference"] - accuracy["estimated"])


@dataclass
class RetrainDecision:
    retrain: bool
    reason: str
    strategy: str | None = None  # "surgical" | "default" when retraining
    overrides: list[str] = field(default_factory=list)
    alarms: int = 0  # drift verdicts among the checks considered
    estimated_drop: float | None = None  # reference minus estimated accuracy, latest check
    considered: int = 0  # checks with a verdict considered (at most N)
    model_tag: str | None = None
    check: str | None = None  # the report folder of the deciding check
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    waiting: dict[str, list[int]] | None = None  # class -> [labels there, labels needed]
    harvest: str | None = None  # the drop of the drifted traffic the retrain trains on
    labels_since: str | None = None  # the drifted traffic's start: what the harvest took


@dataclass
class LabelsFound:
    """What a harvest of the drifted traffic came to (``flows/monitoring.py`` makes it)."""

    drop: str | None = None  # the harvested drop, when it passed its checks
    counts: dict[str, int] = field(default_factory=dict)  # labels per class
    short: dict[str, tuple[int, int]] = field(default_factory=dict)  # class -> (have, need)
    problem: str | None = None  # why nothing was harvested, other than too few labels
    queue: str | None = None  # the label queue to work from while waiting


def decide(
    history: list[dict],
    retrains: list[dict],
    cfg: RetrainParams,
    now: datetime,
    surgical_overrides: list[str] | None = None,
) -> RetrainDecision:
    """Pure: the decision from the check history (oldest first) and past retrains.

    ``surgical_overrides`` are the params overrides of a surgical retrain
    (None when there is no champion to start from).
    """
    if not history:
        return RetrainDecision(False, "no drift check has run yet")
    latest = history[-1]
    tag = latest.get("model_tag")
    base = {"model_tag": tag, "check": latest.get("report_dir")}
    if latest["status"] == "insufficient_data":
        return RetrainDecision(False, f"no verdict: {'; '.join(latest['reasons'])}", **base)
    judged = [
        h for h in history if h.get("model_tag") == tag and h["status"] != "insufficient_data"
    ]
    recent = judged[-cfg.checks :]
    alarms = sum(h["status"] == "drift" for h in recent)
    drop = estimated_drop(latest)
    counts = {"alarms": alarms, "considered": len(recent), "estimated_drop": drop}
    if latest["status"] != "drift":
        return RetrainDecision(False, "the latest check found no drift", **base, **counts)
    urgent = drop is not None and drop >= cfg.urgent_drop
    if alarms < cfg.alarms and not urgent:
        return RetrainDecision(
            False,
            f"drift in {alarms} of the last {len(recent)} checks; retraining needs "
            f"{cfg.alarms} of {cfg.checks} (monitor.retrain.alarms/checks)",
            **base,
            **counts,
        )
    if retrains:
        started = datetime.fromisoformat(retrains[-1]["decided_at"])
        until = started + timedelta(hours=cfg.cooldown_hours)
        if now < until:
            return RetrainDecision(
                False,
                f"cooldown: a retrain started at {started.isoformat(timespec='seconds')}; "
                f"the next may start after {until.isoformat(timespec='seconds')} "
                f"(monitor.retrain.cooldown_hours = {cfg.cooldown_hours:g})",
                **base,
                **counts,
            )
    why = f"drift in {alarms} of the last {len(recent)} checks: " + "; ".join(latest["reasons"])
    if urgent and alarms < cfg.alarms:
        why = (
            f"drift, and the accuracy estimated without labels fell {100 * drop:.1f} points "
            f"below the reference's (>= monitor.retrain.urgent_drop = {cfg.urgent_drop:g}): "
            "not waiting for more checks; " + "; ".join(latest["reasons"])
        )
    fired = [test for test, result in latest.get("tests", {}).items() if result["fired"]]
    early = input_level(latest.get("shift_location"), fired)
    if cfg.surgical and early and surgical_overrides:
        return RetrainDecision(
            True,
            why + ". The shift is input-level (early stages, and image statistics moved): "
            "surgical fine-tuning of the champion's first stages",
            "surgical",
            list(surgical_overrides),
            **base,
            **counts,
        )
    return RetrainDecision(True, why + ". Default strategy", "default", **base, **counts)


def drift_onset(history: list[dict]) -> datetime | None:
    """Where the drifted traffic starts: just after the window of the latest model's last
    check that found no drift, before its trailing run of drift verdicts (checks without a
    verdict are skipped); when no such check came first, the window of the run's first
    check. Every later check of the same shift keeps the same start, so labels given
    meanwhile keep counting, and the traffic sent before the first alarm is in it."""
    if not history:
        return None
    tag = history[-1].get("model_tag")
    judged = [
        h for h in history if h.get("model_tag") == tag and h["status"] != "insufficient_data"
    ]
    start = None
    for check in reversed(judged):
        if check["status"] != "drift":
            if check.get("window_end") and start is not None:
                return datetime.fromisoformat(check["window_end"]) + timedelta(microseconds=1)
            break
        start = check.get("window_start") or start
    return datetime.fromisoformat(start) if start else None


def with_labels(
    decision: RetrainDecision, found: LabelsFound, since: datetime | None
) -> RetrainDecision:
    """Pure: a retrain the guards allowed, given what the harvest of its traffic found."""
    if not decision.retrain:
        return decision
    since_text = since.isoformat() if since else None
    if found.drop:
        labelled = sum(found.counts.values())
        return replace(
            decision,
            reason=f"{decision.reason}; trains on harvest {found.drop!r} ({labelled} labelled "
            "production images)",
            harvest=found.drop,
            labels_since=since_text,
        )
    if found.short:
        listed = ", ".join(f"{c} {have}/{need}" for c, (have, need) in found.short.items())
        queue = f"; label queue: {found.queue}" if found.queue else ""
        return replace(
            decision,
            retrain=False,
            reason=f"waiting for labels: {len(found.short)} class(es) have too few labels from "
            f"the drifted traffic (have/need, monitor.retrain.min_labels_per_class): "
            f"{listed}{queue}",
            waiting={c: [have, need] for c, (have, need) in found.short.items()},
            labels_since=since_text,
        )
    return replace(
        decision,
        retrain=False,
        reason=f"no retrain without new labelled data: {found.problem or 'nothing harvested'}",
        labels_since=since_text,
    )


def decide_and_record(
    drift_dir: Path,
    history: list[dict],
    cfg: RetrainParams,
    surgical_overrides: list[str] | None = None,
    now: datetime | None = None,
    harvest: Callable[[datetime | None], LabelsFound] | None = None,
) -> RetrainDecision:
    """Decide under the lock; record the decision (and the retrain it starts).

    ``harvest(since)`` turns the drifted traffic's labels into a drop; called
    only when every other guard allows a retrain (None: not asked, as in the
    guards' own tests; the monitoring flow always passes it).
    """
    drift_dir, now = Path(drift_dir), now or datetime.now(UTC)
    with locked(drift_dir / LOCK):
        decision = decide(history, read_jsonl(drift_dir / RETRAINS), cfg, now, surgical_overrides)
        if decision.retrain and harvest is not None:
            since = drift_onset(history)
            decision = with_labels(decision, harvest(since), since)
        decision.decided_at = now.isoformat()
        row = asdict(decision)
        append_jsonl(drift_dir / DECISIONS, row)
        if decision.retrain:
            append_jsonl(drift_dir / RETRAINS, row)
    return decision


def read_decisions(drift_dir: Path) -> list[dict]:
    return read_jsonl(Path(drift_dir) / DECISIONS)
