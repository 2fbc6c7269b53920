"""The prediction log: append-only, readable by window, robust to a torn last line."""

from pathlib import Path

import numpy as np

from pipelines.predlog import PredictionLog, PredictionRecord, read_predictions, utc_now


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
    (path,) = tmp_path.glob("*.jsonl")
    with open(path, "a") as handle:
        handle.write('{"request_id": "r2", "ti')  # writer killed mid-line
    assert read_predictions(tmp_path)["request_id"].tolist() == ["r0", "r1"]


def test_empty_log_reads_as_empty_frame(tmp_path: Path) -> None:
    assert read_predictions(tmp_path / "none").empty
