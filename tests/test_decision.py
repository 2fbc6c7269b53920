"""The guarded retrain decision: minimum window, K of N, cooldown, a reason, a strategy."""

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from monitoring.decision import (
    RETRAINS,
    LabelsFound,
    decide,
    decide_and_record,
    drift_onset,
    read_decisions,
)
from transferops.config import RetrainParams

CFG = RetrainParams(alarms=2, checks=3, cooldown_hours=24, surgical=True)
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
SURGICAL = ["strategy.force=surgical", "model.weights=/models/champion/model.safetensors"]


def check(status: str, location: str | None = "late", tag: str = "m:1") -> dict:
    reasons = {"drift": ["embeddings moved"], "insufficient_data": ["12 predictions < 50"]}
    return {
        "status": status,
        "model_tag": tag,
        "reasons": reasons.get(status, []),
        "shift": status == "drift",
        "shift_location": location,
        "tests": {"embedding": {"fired": status == "drift"}, "stat:sharpness": {"fired": True}},
        "report_dir": f"reports/drift/{status}",
        "window_start": None,
    }


def test_a_window_under_the_minimum_never_retrains() -> None:
    history = [check("drift"), check("drift"), check("insufficient_data")]
    decision = decide(history, [], CFG, NOW)
    assert not decision.retrain and "12 predictions < 50" in decision.reason


def test_one_alarm_is_not_enough_two_of_three_are() -> None:
    first = decide([check("no_drift"), check("drift")], [], CFG, NOW)
    assert not first.retrain
    assert "drift in 1 of the last 2 checks" in first.reason and "2 of 3" in first.reason
    second = decide([check("no_drift"), check("drift"), check("drift")], [], CFG, NOW)
    assert second.retrain and second.alarms == 2 and second.considered == 3
    assert "embeddings moved" in second.reason and second.strategy == "default"


def test_old_alarms_and_other_models_do_not_count() -> None:
    stale = [check("drift"), check("no_drift"), check("no_drift"), check("drift")]
    assert not decide(stale, [], CFG, NOW).retrain, "only the last 3 checks count"
    other = [check("drift", tag="m:0"), check("drift")]
    assert not decide(other, [], CFG, NOW).retrain, "the previous model's alarms do not count"
    waiting = [check("drift"), check("drift"), check("insufficient_data"), check("drift")]
    assert decide(waiting, [], CFG, NOW).retrain, "checks without a verdict are not counted"


def test_input_level_shift_retrains_surgically_from_the_champion() -> None:
    history = [check("drift", "early"), check("drift", "early")]
    decision = decide(history, [], CFG, NOW, SURGICAL)
    assert decision.retrain and decision.strategy == "surgical"
    assert decision.overrides == SURGICAL and "surgical" in decision.reason
    assert decide(history, [], CFG, NOW, None).strategy == "default", "no champion to start from"
    off = RetrainParams(alarms=2, checks=3, cooldown_hours=24, surgical=False)
    assert decide(history, [], off, NOW, SURGICAL).strategy == "default"
    semantic = [*history[:-1], check("drift", "early") | {"tests": {"prediction": {"fired": True}}}]
    assert decide(semantic, [], CFG, NOW, SURGICAL).strategy == "default", "no pixel evidence"


def estimated(status: str, estimate: float, reference: float = 0.86, rows: int = 500) -> dict:
    accuracy = {"estimated": estimate, "reference": reference, "fitted_rows": rows}
    return check(status) | {"accuracy": accuracy}


def test_a_large_estimated_accuracy_drop_retrains_on_the_first_alarm() -> None:
    urgent = decide([check("no_drift"), estimated("drift", 0.70)], [], CFG, NOW)
    assert urgent.retrain and urgent.alarms == 1
    assert urgent.estimated_drop == pytest.approx(0.16)
    assert "16.0 points below the reference" in urgent.reason and "urgent_drop" in urgent.reason
    small = decide([check("no_drift"), estimated("drift", 0.80)], [], CFG, NOW)
    assert not small.retrain and "1 of 3" not in small.reason and "2 of 3" in small.reason


def test_the_estimate_alone_never_retrains_and_a_tiny_reference_s_does_not_count() -> None:
    quiet = decide([estimated("no_drift", 0.30)], [], CFG, NOW)
    assert not quiet.retrain, "no drift verdict (e.g. known traffic): the estimate waits"
    tiny = decide([estimated("drift", 0.30, rows=40)], [], CFG, NOW)
    assert not tiny.retrain and tiny.estimated_drop is None
    cooling = decide([estimated("drift", 0.30)], [{"decided_at": NOW.isoformat()}], CFG, NOW)
    assert not cooling.retrain and "cooldown" in cooling.reason, "the cooldown still holds"


def test_a_second_alarm_inside_the_cooldown_does_not_retrain(tmp_path: Path) -> None:
    history = [check("drift"), check("drift")]
    first = decide_and_record(tmp_path, history, CFG, now=NOW)
    assert first.retrain
    later = NOW + timedelta(hours=5)
    second = decide_and_record(tmp_path, [*history, check("drift")], CFG, now=later)
    assert not second.retrain and "cooldown" in second.reason
    assert "2026-11-26T12:00:00" in second.reason, "says when the next may start"
    after = decide_and_record(
        tmp_path, [*history, check("drift")], CFG, now=NOW + timedelta(hours=25)
    )
    assert after.retrain
    assert [d["retrain"] for d in read_decisions(tmp_path)] == [True, False, True]
    assert len((tmp_path / RETRAINS).read_text().splitlines()) == 2


def test_concurrent_decisions_start_one_retrain(tmp_path: Path) -> None:
    history = [check("drift"), check("drift")]
    results = []

    def run() -> None:
        results.append(decide_and_record(tmp_path, history, CFG, now=NOW).retrain)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_without_enough_labels_it_waits_and_the_cooldown_does_not_start(tmp_path: Path) -> None:
    history = [check("no_drift"), check("drift"), check("drift")]
    history[0]["window_start"] = "2026-11-25T08:00:00+00:00"  # no drift there: not the onset
    history[1]["window_start"] = "2026-11-25T10:00:00+00:00"
    history[2]["window_start"] = "2026-11-25T11:00:00+00:00"
    asked = []

    def short(since):
        asked.append(since)
        return LabelsFound(short={"coat": (4, 20), "bag": (0, 20)}, queue="q/queue.html")

    waiting = decide_and_record(tmp_path, history, CFG, now=NOW, harvest=short)
    assert asked == [datetime(2026, 11, 25, 10, tzinfo=UTC)], "harvest from the drift's onset"
    assert not waiting.retrain and waiting.reason.startswith("waiting for labels")
    assert "coat 4/20, bag 0/20" in waiting.reason and "q/queue.html" in waiting.reason
    assert waiting.waiting == {"coat": [4, 20], "bag": [0, 20]}
    assert not (tmp_path / RETRAINS).exists(), "waiting started the cooldown"

    def harvested(since):
        return LabelsFound(drop="harvest-1", counts={"coat": 20, "bag": 21})

    later = NOW + timedelta(minutes=30)
    ready = decide_and_record(tmp_path, [*history, check("drift")], CFG, now=later,
                              harvest=harvested)  # fmt: skip
    assert ready.retrain and ready.harvest == "harvest-1" and "41 labelled" in ready.reason
    assert len((tmp_path / RETRAINS).read_text().splitlines()) == 1


def test_no_retrain_on_unchanged_data_and_no_harvest_without_a_retrain(tmp_path: Path) -> None:
    def failed(since):
        return LabelsFound(problem="the harvest failed its data checks")

    refused = decide_and_record(tmp_path, [check("drift")] * 2, CFG, now=NOW, harvest=failed)
    assert not refused.retrain and refused.harvest is None
    assert (
        refused.reason == "no retrain without new labelled data: the harvest failed its data checks"
    )

    def never(since):
        raise AssertionError("harvested although no retrain was due")

    quiet = decide_and_record(tmp_path, [check("no_drift")], CFG, now=NOW, harvest=never)
    assert not quiet.retrain
    assert drift_onset([]) is None and drift_onset([check("no_drift")]) is None


def test_the_drifted_traffic_starts_after_the_last_window_without_drift() -> None:
    """However many checks see the shift, the harvest's start stays put; the traffic
    between the last quiet window and the first alarm's window counts too."""
    starts = ["08:00", "09:00", "10:00", "11:00", "12:00", "13:00"]
    statuses = ["drift", "no_drift", "drift", "insufficient_data", "drift", "drift"]
    history = [check(status) for status in statuses]
    for row, start in zip(history, starts, strict=True):
        row["window_start"] = f"2026-11-25T{start}:00+00:00"
    history[1]["window_end"] = "2026-11-25T09:30:00+00:00"
    onset = datetime(2026, 11, 25, 9, 30, 0, 1, tzinfo=UTC)
    for more in range(4):  # further checks of the same shift
        assert drift_onset(history + [check("drift")] * more) == onset
    # No quiet check before the run (the first check drifted): the run's first window.
    assert drift_onset(history[2:]) == datetime(2026, 11, 25, 10, tzinfo=UTC)
    assert drift_onset(history[:2]) is None, "the latest check found no drift"
