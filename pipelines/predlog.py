"""The prediction log: what the service saw and said, for monitoring to read.

Append-only JSON Lines, one file per writing process (so several workers never
interleave partial lines), each record flushed as it is written. A record
holds the request id, time, model tag, predicted label and confidence, the
class probabilities and the penultimate embedding (float32, base64).
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


@dataclass(frozen=True)
class PredictionRecord:
    request_id: str
    time: str
    model_tag: str
    label: str
    confidence: float
    probabilities: list[float]
    embedding: np.ndarray

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
            }
        )


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class PredictionLog:
    """Appends records to ``<dir>/<host>-<pid>.jsonl``; safe across threads."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._handle = None

    def append(self, records: list[PredictionRecord]) -> None:
        lines = "".join(record.to_json() + "\n" for record in records)
        with self._lock:
            if self._handle is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                name = f"{socket.gethostname()}-{os.getpid()}.jsonl"
                self._handle = open(self.directory / name, "a", encoding="utf-8")  # noqa: SIM115
            self._handle.write(lines)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


def read_predictions(directory: Path, last: int | None = None) -> pd.DataFrame:
    """All logged predictions (oldest first), or the ``last`` N of them.

    Columns: request_id, time (UTC timestamps), model_tag, label, confidence,
    probabilities (lists), embedding (float32 arrays). A torn final line (the
    writer killed mid-write) is skipped, never fatal.
    """
    rows = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    columns = [
        "request_id",
        "time",
        "model_tag",
        "label",
        "confidence",
        "probabilities",
        "embedding",
    ]
    if not rows:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(rows)
    frame["embedding"] = [
        np.frombuffer(base64.b64decode(e), dtype="<f4") for e in frame.pop("embedding_f32")
    ]
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    frame = frame.sort_values("time", kind="stable").reset_index(drop=True)
    return frame[columns] if last is None else frame[columns].tail(last).reset_index(drop=True)
