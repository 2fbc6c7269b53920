"""The prediction store: what the service saw and said, and the labels that came later.

One small interface (:class:`PredictionLog` to write; :func:`read_predictions`,
:func:`read_feedback`, :func:`has_request` to read) over an embedded SQLite
database per host, ``predictions-<host>.sqlite`` under ``paths.prediction_log``,
in WAL mode:

- ``predictions``: one row per prediction: request id (unique and indexed,
  so feedback finds its request by index, not by reading the log), UTC time,
  model tag, label, confidence, class probabilities and the penultimate
  embedding (little-endian float32 blobs, no JSON floats), image statistics
  (``transferops/data/imagestats.py``), per-stage BatchNorm distances
  (``transferops/models/bnshift.py``), the optional group and a 64-px PNG
  thumbnail for the drift report's gallery (``serve.log_thumbnails``; not read
  with the rest: :func:`read_thumbnails` fetches the few a report shows), and
  ``image``, the kept image's file under ``kept/`` when the keeping policy kept it
  (``transferops/logs/kept.py``, ``keptfiles.py``). Indexed by time
  and by (model, time): time windows and per-model windows read only their rows.
- ``feedback``: a true label for an earlier request id (labels arrive late).
  The first label of a request id stays: a later one is not recorded
  (:meth:`PredictionLog.append_feedback`), so a label cannot be flipped after
  the fact (docs/security.md).

Durability: :meth:`PredictionLog.append` returns after its transaction
commits. In WAL mode with ``synchronous=NORMAL`` a commit is a ``write(2)``
to the write-ahead log: a record the service acknowledged survives the server
being killed (SIGKILL), and a background thread checkpoints (fsync) every
``fsync_interval`` seconds against power loss. Workers of one host share the
file (SQLite serialises their writers); each host writes its own file, and
readers take the union. SQLite's WAL needs one host's shared memory, so
replicas on several nodes need a server database instead (docs/scaling.md).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from transferops.data.imagestats import STAT_NAMES
from transferops.files import SHARED

log = logging.getLogger(__name__)

COLUMNS = [
    "request_id",
    "time",
    "model_tag",
    "label",
    "confidence",
    "probabilities",
    "embedding",
    "group",
    "bn",
    *STAT_NAMES,
]
BLOBS = ("probabilities", "embedding", "bn")  # float32 arrays, stored as raw bytes
FILE_GLOB = "predictions-*.sqlite"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT NOT NULL UNIQUE,
    time TEXT NOT NULL,
    model_tag TEXT NOT NULL,
    label TEXT NOT NULL,
    confidence REAL NOT NULL,
    probabilities BLOB NOT NULL,
    embedding BLOB NOT NULL,
    "group" TEXT,
    bn BLOB,
    {", ".join(f"{name} REAL" for name in STAT_NAMES)},
    thumbnail BLOB,
    image TEXT
);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
CREATE INDEX IF NOT EXISTS predictions_model_time ON predictions (model_tag, time);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    request_id TEXT NOT NULL,
    label TEXT NOT NULL,
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);
"""
STORED = [*COLUMNS, "thumbnail"]  # "group" is a keyword: every name quoted
ADDED_LATER = {"thumbnail": "BLOB", "image": "TEXT"}  # columns a store of an older release lacks
_NAMES = ", ".join(f'"{c}"' for c in STORED)
INSERT = f"INSERT INTO predictions ({_NAMES}) VALUES ({', '.join('?' * len(STORED))})"


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    time: str
    model_tag: str
    label: str
    confidence: float
    probabilities: list[float] | np.ndarray
    embedding: np.ndarray
    stats: dict[str, float] | None = None  # STAT_NAMES of the image as received
    group: str | None = None
    bn: list[float] | np.ndarray | None = None  # per-stage BatchNorm distances
    thumbnail: bytes | None = None  # PNG (pictures.thumbnail_png), for the report's gallery

    def row(self) -> tuple:
        stats = self.stats or {}
        return (
            self.request_id,
            self.time,
            self.model_tag,
            self.label,
            float(self.confidence),
            _blob(self.probabilities),
            _blob(self.embedding),
            self.group,
            None if self.bn is None else _blob(self.bn),
            *(None if stats.get(n) is None else float(stats[n]) for n in STAT_NAMES),
            self.thumbnail,
        )


def _blob(values) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def utc_now() -> str:
    """UTC time as ISO text of fixed width: text order is time order."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _connect(path: Path, timeout: float = 30.0) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=timeout, check_same_thread=False)
    # Switching a new store to WAL takes an exclusive lock, and SQLite answers "database is
    # locked" at once, without its busy timeout, when another process holds one (serving
    # workers that start together): retry until the timeout.
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                connection.close()
                raise
            time.sleep(0.02)
    connection.execute("PRAGMA synchronous=NORMAL")  # commit = write(2); fsync at checkpoints
    return connection


class PredictionLog:
    """Writes this host's store; safe across threads and across the host's processes."""

    def __init__(self, directory: Path, fsync_interval: float = 1.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"predictions-{socket.gethostname()}.sqlite"
        self._lock = threading.Lock()
        self._db = _connect(self.path)
        with suppress(PermissionError):  # another user's store keeps its mode
            os.chmod(self.path, SHARED)  # callers' data: the group reads, others nothing
        with self._lock, self._db:
            self._db.executescript(SCHEMA)
            known = {row[1] for row in self._db.execute("PRAGMA table_info(predictions)")}
            for column, kind in ADDED_LATER.items():
                if column not in known:
                    self._db.execute(f"ALTER TABLE predictions ADD COLUMN {column} {kind}")
        # Commits never checkpoint (that fsyncs, on the caller's time: the service's event
        # loop); the syncer thread does, on a connection of its own, without this lock.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(f"PRAGMA journal_size_limit={64 << 20}")
        self._checkpointer = _connect(self.path)
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self.sync_failures = 0  # checkpoints that failed in a row (the syncer keeps going)
        self._syncer = threading.Thread(
            target=self._sync_loop, args=(fsync_interval,), name="predlog-fsync", daemon=True
        )
        self._syncer.start()

    def append(self, records: list[PredictionRecord]) -> None:
        """Commit prediction records; on return they survive a killed process."""
        with self._lock, self._db:
            self._db.executemany(INSERT, [r.row() for r in records])
        self._dirty.set()

    def append_feedback(self, request_id: str, label: str) -> tuple[str, bool]:
        """Record the true label of ``request_id`` unless it has one.

        Returns (the label the request keeps, whether this call recorded it).

        The first label stays (checked and written in one transaction): a caller
        who sends another later cannot overwrite it (docs/security.md).
        """
        with self._lock, self._db:
            first = self._db.execute(
                "SELECT label FROM feedback WHERE request_id = ? ORDER BY id LIMIT 1",
                (request_id,),
            ).fetchone()
            if first is not None:
                return first[0], False
            self._db.execute(
                "INSERT INTO feedback (request_id, label, time) VALUES (?, ?, ?)",
                (request_id, label, utc_now()),
            )
        self._dirty.set()
        return label, True

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The writing connection, in one transaction, for this host's other writers
        (kept images' links, retention: ``transferops/logs/kept.py``)."""
        with self._lock, self._db:
            yield self._db
        self._dirty.set()

    def _sync_loop(self, interval: float) -> None:
        """Checkpoint when something was written; a failed checkpoint (a full disk, an I/O
        error) is logged and tried again at the next tick, so the thread never dies and
        the write-ahead log does not grow without bound once the fault is gone."""
        while not self._closed.wait(interval):
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            try:
                self.sync()
            except (sqlite3.Error, OSError) as err:
                self._dirty.set()
                self.sync_failures += 1
                if self.sync_failures == 1 or self.sync_failures % 60 == 0:
                    log.warning(
                        "prediction store %s: checkpoint failed (%d in a row): %s; "
                        "answers still commit; trying again",
                        self.path,
                        self.sync_failures,
                        err,
                    )
            else:
                self.sync_failures = 0

    def sync(self) -> None:
        """Checkpoint the write-ahead log into the database, fsyncing both.

        Writers go on meanwhile (WAL): a checkpoint copies what is committed.
        """
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._closed.set()
        self._syncer.join()
        self.sync()
        self._checkpointer.close()
        with self._lock:
            self._db.close()


def stores(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob(FILE_GLOB))


def query(directory: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows of ``sql`` from every host's store, read-only."""
    rows: list[tuple] = []
    for path in stores(directory):
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            rows.extend(db.execute(sql, args).fetchall())
    return rows


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def read_predictions(
    directory: Path,
    last: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
) -> pd.DataFrame:
    """Logged predictions, oldest first: those in [since, until) of ``model``, or the ``last`` N.

    Columns: :data:`COLUMNS` (time as UTC timestamps, probabilities and
    embeddings as float32 arrays, image statistics as floats, NaN when absent).
    """
    where, args = [], []
    if since is not None:
        where.append("time >= ?")
        args.append(_iso(since))
    if until is not None:
        where.append("time < ?")
        args.append(_iso(until))
    if model is not None:
        where.append("model_tag = ?")
        args.append(model)
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    sql = f"SELECT {columns} FROM predictions"
    sql += f" WHERE {' AND '.join(where)}" if where else ""
    sql += " ORDER BY time DESC" + (f" LIMIT {int(last)}" if last is not None else "")
    rows = query(directory, sql, tuple(args))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    if frame.empty:
        return frame
    for column in BLOBS:
        frame[column] = [
            None if b is None else np.frombuffer(b, dtype="<f4") for b in frame[column]
        ]
    frame["probabilities"] = [p.tolist() for p in frame["probabilities"]]
    frame["bn"] = [None if b is None else b.tolist() for b in frame["bn"]]
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    frame[list(STAT_NAMES)] = frame[list(STAT_NAMES)].astype(float)
    frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
    return frame if last is None else frame.tail(last).reset_index(drop=True)


def read_thumbnails(directory: Path, request_ids: list[str]) -> dict[str, bytes]:
    """The logged PNG thumbnails of these requests (those that have one), by request id."""
    found: dict[str, bytes] = {}
    for path in stores(directory):
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=30)) as db:
            if "thumbnail" not in {row[1] for row in db.execute("PRAGMA table_info(predictions)")}:
                continue  # written before thumbnails were kept
            for start in range(0, len(request_ids), 500):  # SQLite's bound-variable limit
                chunk = list(request_ids[start : start + 500])
                marks = ", ".join("?" * len(chunk))
                sql = (
                    "SELECT request_id, thumbnail FROM predictions "
                    f"WHERE thumbnail IS NOT NULL AND request_id IN ({marks})"
                )
                found |= dict(db.execute(sql, chunk).fetchall())
    return found


def latest_model(directory: Path) -> str | None:
    """The model tag of the newest logged prediction (None when nothing is logged)."""
    rows = query(directory, "SELECT time, model_tag FROM predictions ORDER BY time DESC LIMIT 1")
    return max(rows)[1] if rows else None


def read_feedback(directory: Path) -> pd.DataFrame:
    """Every feedback label (request_id, label, time); the first per request id stays."""
    rows = query(directory, "SELECT request_id, label, time FROM feedback")
    frame = pd.DataFrame(rows, columns=["request_id", "label", "time"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame.sort_values("time", kind="stable").drop_duplicates("request_id", keep="first")


def has_request(directory: Path, request_id: str) -> bool:
    """Whether any host logged a prediction with this request id (an index lookup per store)."""
    sql = "SELECT 1 FROM predictions WHERE request_id = ? LIMIT 1"
    return bool(query(directory, sql, (request_id,)))
