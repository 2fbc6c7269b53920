"""The prediction log: what the service saw and said, and the labels that came later.

Append-only JSON Lines under one folder. Each writing process has its own
files, so workers never interleave partial lines, and a new file each UTC
hour, so a time window opens only the files it needs:

- ``pred-<host>-<pid>-<YYYYmmddTHH>.jsonl``: one line per prediction:
  request id, UTC time, model tag, label, confidence, class probabilities,
  the penultimate embedding (float32, base64), image statistics
  (``transferops/data/imagestats.py``), per-stage BatchNorm distances
  (``transferops/models/bnshift.py``) and the optional group;
- ``feedback-<host>-<pid>-<YYYYmmddTHH>.jsonl``: a true label for an earlier
  request id (labels arrive late in real life).

Durability: :meth:`PredictionLog.append` returns after ``write(2)``, so a
record the service acknowledged is in the kernel's page cache and survives
the server being killed; a background thread fsyncs every
``fsync_interval`` seconds against power loss. A torn last line (a writer
killed mid-write) is skipped by the readers, never fatal.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from transferops.data.imagestats import STAT_NAMES
from transferops.logs.jsonl import read_jsonl

PREDICTIONS, FEEDBACK = "pred", "feedback"
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


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    time: str
    model_tag: str
    label: str
    confidence: float
    probabilities: list[float]
    embedding: np.ndarray
    stats: dict[str, float] | None = None  # STAT_NAMES of the image as received
    group: str | None = None
    bn: list[float] | None = None  # per-stage BatchNorm distances (transferops/models/bnshift.py)

    def to_json(self) -> str:
        embedding = base64.b64encode(self.embedding.astype("<f4").tobytes()).decode("ascii")
        return json.dumps(
            {
                "request_id": self.request_id,
                "time": self.time,
                "model_tag": self.model_tag,
                "label": self.label,
                "confidence": round(self.confidence, 6),
                "probabilities": [round(p, 6) for p in self.probabilities],
                "embedding_f32": embedding,
                "group": self.group,
                "bn": None if self.bn is None else [round(float(v), 4) for v in self.bn],
                **{k: round(float(v), 4) for k, v in (self.stats or {}).items()},
            }
        )


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class PredictionLog:
    """Appends lines to this process's hourly files; safe across threads."""

    def __init__(self, directory: Path, fsync_interval: float = 1.0) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._handles: dict[str, tuple[str, object]] = {}  # kind -> (file name, handle)
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._syncer = threading.Thread(
            target=self._sync_loop, args=(fsync_interval,), name="predlog-fsync", daemon=True
        )
        self._syncer.start()

    def append(self, records: list[PredictionRecord]) -> None:
        """Write prediction records; on return they survive a killed process."""
        self._write(PREDICTIONS, "".join(r.to_json() + "\n" for r in records))

    def append_feedback(self, request_id: str, label: str) -> None:
        line = json.dumps({"request_id": request_id, "label": label, "time": utc_now()})
        self._write(FEEDBACK, line + "\n")

    def _write(self, kind: str, text: str) -> None:
        hour = datetime.now(UTC).strftime("%Y%m%dT%H")
        name = f"{kind}-{socket.gethostname()}-{os.getpid()}-{hour}.jsonl"
        with self._lock:
            current = self._handles.get(kind)
            if current is None or current[0] != name:
                if current is not None:
                    current[1].close()
                self.directory.mkdir(parents=True, exist_ok=True)
                handle = open(self.directory / name, "a", encoding="utf-8")  # noqa: SIM115
                self._handles[kind] = current = (name, handle)
            current[1].write(text)
            current[1].flush()  # write(2): in the page cache, safe from a killed process
        self._dirty.set()

    def _sync_loop(self, interval: float) -> None:
        while not self._closed.wait(interval):
            if self._dirty.is_set():
                self._dirty.clear()
                self.sync()

    def sync(self) -> None:
        """fsync every open file (power-loss durability)."""
        with self._lock:
            for _, handle in self._handles.values():
                os.fsync(handle.fileno())

    def close(self) -> None:
        self._closed.set()
        self.sync()
        with self._lock:
            for _, handle in self._handles.values():
                handle.close()
            self._handles.clear()


def _files(directory: Path, kind: str, since: datetime | None) -> list[Path]:
    """This kind's files, skipping whole hours before ``since``."""
    files = []
    for path in sorted(Path(directory).glob(f"{kind}-*.jsonl")):
        hour = path.stem.rsplit("-", 1)[-1]
        try:
            start = datetime.strptime(hour, "%Y%m%dT%H").replace(tzinfo=UTC)
        except ValueError:
            start = None
        ended = start is not None and start.timestamp() + 3600 <= (since or start).timestamp()
        if since is not None and ended:  # the whole hour is before the window
            continue
        files.append(path)
    return files


def _lines(paths: list[Path]) -> list[dict]:
    return [row for path in paths for row in read_jsonl(path)]


def read_predictions(
    directory: Path,
    last: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> pd.DataFrame:
    """Logged predictions, oldest first: those in [since, until), or the ``last`` N.

    Columns: :data:`COLUMNS` (time as UTC timestamps, probabilities as lists,
    embedding as float32 arrays, image statistics as floats, NaN when absent).
    """
    rows = _lines(_files(Path(directory), PREDICTIONS, since))
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.DataFrame(rows).reindex(columns=[*COLUMNS, "embedding_f32"])
    frame["embedding"] = [
        np.frombuffer(base64.b64decode(e), dtype="<f4") for e in frame.pop("embedding_f32")
    ]
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    if since is not None:
        frame = frame[frame["time"] >= pd.Timestamp(since)]
    if until is not None:
        frame = frame[frame["time"] < pd.Timestamp(until)]
    frame = frame.sort_values("time", kind="stable").reset_index(drop=True)[COLUMNS]
    return frame if last is None else frame.tail(last).reset_index(drop=True)


def read_feedback(directory: Path) -> pd.DataFrame:
    """Every feedback label (request_id, label, time); the latest per request id wins."""
    rows = _lines(_files(Path(directory), FEEDBACK, None))
    frame = pd.DataFrame(rows, columns=["request_id", "label", "time"])
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame.sort_values("time", kind="stable").drop_duplicates("request_id", keep="last")


def has_request(directory: Path, request_id: str) -> bool:
    """Whether any process logged a prediction with this request id."""
    needle = f'"request_id": "{request_id}"'.encode()
    for path in _files(Path(directory), PREDICTIONS, None):
        with open(path, "rb") as handle:
            if needle in handle.read():
                return True
    return False
