"""The prediction log: append-only, readable by window, robust to a torn last line."""

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from transferops.logs.predictions import (
    PredictionLog,
    PredictionRecord,
    has_request,
    read_feedback,
    read_predictions,
    utc_now,
)


def record(i: int) -> PredictionRecord:
    return PredictionRecord(
        request_id=f"r{i}",
        time=utc_now(),
        model_tag="m:1",
        label="cat",
        confidence=0.9,
        probabilities=[0.9, 0.1],
        embedding=np.full(4, i, dtype=np.float32),
    )


def test_roundtrip_and_last_window(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    log.append([record(i) for i in range(5)])
    log.append([record(5)])
    log.close()
    frame = read_predictions(tmp_path)
    assert frame["request_id"].tolist() == [f"r{i}" for i in range(6)]
    assert np.array_equal(frame["embedding"].iloc[3], np.full(4, 3, dtype=np.float32))
    assert read_predictions(tmp_path, last=2)["request_id"].tolist() == ["r4", "r5"]


def test_torn_final_line_is_skipped(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    log.append([record(0), record(1)])
    log.close()
    (path,) = tmp_path.glob("pred-*.jsonl")
    with open(path, "a") as handle:
        handle.write('{"request_id": "r2", "ti')  # writer killed mid-line
    assert read_predictions(tmp_path)["request_id"].tolist() == ["r0", "r1"]


def test_empty_log_reads_as_empty_frame(tmp_path: Path) -> None:
    assert read_predictions(tmp_path / "none").empty


def test_time_window_and_hourly_files(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    log.append([record(i) for i in range(3)])
    log.close()
    (path,) = tmp_path.glob("pred-*.jsonl")
    # An hour-old file from another worker: outside a window of the last minutes.
    old = tmp_path / path.name.replace(path.stem.rsplit("-", 1)[-1], "20200101T00")
    old.write_text(replace(record(99), time="2020-01-01T00:30:00+00:00").to_json() + "\n")
    everything = read_predictions(tmp_path)
    assert everything["request_id"].tolist() == ["r99", "r0", "r1", "r2"]
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert read_predictions(tmp_path, since=since)["request_id"].tolist() == ["r0", "r1", "r2"]
    until = datetime(2021, 1, 1, tzinfo=UTC)
    assert read_predictions(tmp_path, until=until)["request_id"].tolist() == ["r99"]


def test_feedback_latest_label_wins_and_request_lookup(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    log.append([record(1)])
    log.append_feedback("r1", "dog")
    log.append_feedback("r1", "cat")
    log.close()
    assert read_feedback(tmp_path).set_index("request_id")["label"].to_dict() == {"r1": "cat"}
    assert has_request(tmp_path, "r1") and not has_request(tmp_path, "r2")


WRITER = """
import sys
import numpy as np
from transferops.logs.predictions import PredictionLog, PredictionRecord, utc_now
log = PredictionLog(sys.argv[1])
for i in range(200):
    log.append([PredictionRecord(f"{sys.argv[2]}-{i}", utc_now(), "m:1", "cat", 0.9, [0.9, 0.1],
                                 np.zeros(64, np.float32))])
"""


def test_several_processes_write_at_once(tmp_path: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{n}"]) for n in range(4)
    ]
    assert all(w.wait(timeout=120) == 0 for w in writers)
    frame = read_predictions(tmp_path)
    assert len(frame) == 800 and frame["request_id"].is_unique
    assert len(list(tmp_path.glob("pred-*.jsonl"))) == 4, "one file per process"
