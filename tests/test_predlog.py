"""The prediction store: SQLite per host, readable by window and model, indexed by request id."""

import shutil
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from transferops.logs.predictions import (
    PredictionLog,
    PredictionRecord,
    has_request,
    latest_model,
    read_feedback,
    read_predictions,
    read_thumbnails,
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


def test_empty_log_reads_as_empty_frame(tmp_path: Path) -> None:
    assert read_predictions(tmp_path / "none").empty
    assert latest_model(tmp_path / "none") is None and not has_request(tmp_path / "none", "r1")


def test_time_and_model_windows(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    log.append([replace(record(99), time="2020-01-01T00:30:00.000000+00:00")])
    log.append([record(i) for i in range(3)])
    log.append([replace(record(7), model_tag="m:2")])
    log.close()
    everything = read_predictions(tmp_path)
    assert everything["request_id"].tolist() == ["r99", "r0", "r1", "r2", "r7"]
    since = datetime.now(UTC) - timedelta(minutes=5)
    recent = read_predictions(tmp_path, since=since, model="m:1")
    assert recent["request_id"].tolist() == ["r0", "r1", "r2"]
    until = datetime(2021, 1, 1, tzinfo=UTC)
    assert read_predictions(tmp_path, until=until)["request_id"].tolist() == ["r99"]
    assert read_predictions(tmp_path, last=2, model="m:1")["request_id"].tolist() == ["r1", "r2"]
    assert latest_model(tmp_path) == "m:2"


def test_another_hosts_store_is_read_too(tmp_path: Path) -> None:
    """Each host writes its own file; readers take the union."""
    log = PredictionLog(tmp_path)
    log.append([record(1)])
    log.close()
    other = tmp_path / "predictions-otherhost.sqlite"
    shutil.copy(next(tmp_path.glob("predictions-*.sqlite")), other)
    with closing(sqlite3.connect(other)) as db, db:
        db.execute("UPDATE predictions SET request_id = 'elsewhere'")
    assert set(read_predictions(tmp_path)["request_id"]) == {"r1", "elsewhere"}
    assert has_request(tmp_path, "elsewhere")


def test_a_request_is_found_by_index_not_by_reading_the_log(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    log.append([record(1)])
    log.close()
    (store,) = tmp_path.glob("predictions-*.sqlite")
    with closing(sqlite3.connect(store)) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT 1 FROM predictions WHERE request_id = ?", ("r1",)
        ).fetchall()
        windows = db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM predictions WHERE model_tag = ? AND time >= ?",
            ("m:1", "2020"),
        ).fetchall()
    assert "USING COVERING INDEX" in str(plan) and "SCAN" not in str(plan)
    assert "predictions_model_time" in str(windows)


def test_feedback_first_label_stays_and_request_lookup(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path)
    log.append([record(1)])
    assert log.append_feedback("r1", "dog") == ("dog", True)
    assert log.append_feedback("r1", "cat") == ("dog", False), "a later label overwrote the first"
    assert log.append_feedback("r1", "dog") == ("dog", False)
    log.close()
    assert read_feedback(tmp_path).set_index("request_id")["label"].to_dict() == {"r1": "dog"}
    assert has_request(tmp_path, "r1") and not has_request(tmp_path, "r2")


WRITER = """
import sys, time
from pathlib import Path
import numpy as np
from transferops.logs.predictions import PredictionLog, PredictionRecord, utc_now
Path(sys.argv[1], f"ready-{sys.argv[2]}").touch()
while not Path(sys.argv[1], "go").exists():  # every writer opens the new store at once
    time.sleep(0.001)
log = PredictionLog(sys.argv[1])
for i in range(200):
    log.append([PredictionRecord(f"{sys.argv[2]}-{i}", utc_now(), "m:1", "cat", 0.9, [0.9, 0.1],
                                 np.zeros(64, np.float32))])
"""


def test_several_processes_write_at_once(tmp_path: Path) -> None:
    """Serving workers start together: each opens (and the first creates) the store."""
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"w{n}"]) for n in range(8)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(writers):  # every writer imported, waiting
        assert time.monotonic() < deadline, "the writers did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    assert all(w.wait(timeout=120) == 0 for w in writers)
    frame = read_predictions(tmp_path)
    assert len(frame) == 1600 and frame["request_id"].is_unique
    assert len(list(tmp_path.glob("predictions-*.sqlite"))) == 1, "one store per host"


def test_a_relative_store_folder_reads(tmp_path: Path, monkeypatch) -> None:
    """paths.prediction_log is relative in params.yaml: readers take it as it is."""
    monkeypatch.chdir(tmp_path)
    log = PredictionLog(Path("logs"))
    log.append([record(1)])
    log.close()
    assert read_predictions(Path("logs"))["request_id"].tolist() == ["r1"]
    assert has_request(Path("logs"), "r1") and latest_model(Path("logs")) == "m:1"


def test_thumbnails_are_kept_and_fetched_by_request_id(tmp_path: Path) -> None:
    from PIL import Image

    from transferops.data.pictures import THUMBNAIL_SIDE, from_png, thumbnail_png

    wide = Image.new("RGB", (300, 100), (10, 200, 30))
    log = PredictionLog(tmp_path)
    log.append([replace(record(1), thumbnail=thumbnail_png(wide)), record(2)])
    log.close()
    found = read_thumbnails(tmp_path, ["r1", "r2", "unknown"])
    assert set(found) == {"r1"}, "only requests that kept one"
    picture = from_png(found["r1"])
    assert picture.shape == (THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)
    assert tuple(picture[THUMBNAIL_SIDE // 2, 5]) == (10, 200, 30), "the image, shrunk to fit"
    assert tuple(picture[2, 5]) == (255, 255, 255), "centred on white"
    assert "thumbnail" not in read_predictions(tmp_path).columns, "not read with the window"


def test_a_store_written_before_thumbnails_gains_the_column(tmp_path: Path) -> None:
    """A store from an older release: readable as it is, and writable after an upgrade."""
    log = PredictionLog(tmp_path)
    log.append([record(1)])
    log.close()
    (store,) = tmp_path.glob("predictions-*.sqlite")
    with closing(sqlite3.connect(store)) as db, db:
        db.execute("ALTER TABLE predictions DROP COLUMN thumbnail")
    assert read_thumbnails(tmp_path, ["r1"]) == {}
    log = PredictionLog(tmp_path)
    log.append([replace(record(2), thumbnail=b"png")])
    log.close()
    assert read_predictions(tmp_path)["request_id"].tolist() == ["r1", "r2"]
    assert read_thumbnails(tmp_path, ["r1", "r2"]) == {"r2": b"png"}


class FailingCheckpoints:
    """The checkpointer's connection, with its next ``failures`` checkpoints failing as a
    full disk or a bad sector would make them fail."""

    def __init__(self, connection: sqlite3.Connection, failures: int) -> None:
        self.connection, self.failures, self.done = connection, failures, 0

    def execute(self, sql: str):
        if self.failures > 0:
            self.failures -= 1
            raise sqlite3.OperationalError("disk I/O error")
        self.done += 1
        return self.connection.execute(sql)

    def close(self) -> None:
        self.connection.close()


def test_the_checkpoint_thread_survives_io_errors_and_checkpoints_after(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, fsync_interval=0.05)
    failing = FailingCheckpoints(log._checkpointer, failures=3)
    log._checkpointer = failing
    log.append([record(0)])
    deadline = time.monotonic() + 10
    while failing.done == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failing.failures == 0 and failing.done >= 1, "it tried again after each failure"
    assert log._syncer.is_alive() and log.sync_failures == 0
    log.append([record(1)])  # and it keeps checkpointing what comes next
    deadline, before = time.monotonic() + 10, failing.done
    while failing.done == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failing.done > before
    log.close()


def test_the_store_is_readable_by_its_group_and_nobody_else(tmp_path: Path) -> None:
    import os
    import stat

    previous = os.umask(0o022)  # the usual umask: 0644 files unless the code says otherwise
    try:
        log = PredictionLog(tmp_path)
        log.append([record(0)])
        written = [log.path, log.path.with_name(log.path.name + "-wal")]
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in written if p.exists()}
        log.close()
    finally:
        os.umask(previous)
    assert modes and set(modes.values()) == {0o640}, modes
