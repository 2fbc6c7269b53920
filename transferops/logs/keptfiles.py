"""Kept production images on disk: where they live, how they are written, read and aged out.

Each image is a file named by its content, ``<paths.prediction_log>/kept/ab/<sha256>.<ext>``
(folders ``0700``, files ``0600``: the service's user alone reads them), linked
from its prediction row (``image``); the same image sent twice is one file.
:func:`read_kept` reads the kept images back with their feedback labels (for
harvests and the label queue); :func:`prune_store` is the retention
(``serve.retention_days``). The keeper that writes them is
``transferops/logs/kept.py``.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from transferops.files import PRIVATE
from transferops.logs.predictions import PredictionLog, query, read_feedback

KEPT_DIR = "kept"


def kept_root(prediction_log: Path) -> Path:
    return Path(prediction_log) / KEPT_DIR


def write_private(path: Path, body: bytes) -> None:
    """Write ``body`` to ``path`` whole (a temporary file renamed), readable by its owner only."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(body)
    os.replace(temporary, path)


def prune_store(store: PredictionLog, cutoff: datetime) -> tuple[int, int]:
    """Delete this host's predictions older than ``cutoff``, their feedback, and the kept
    images no remaining prediction links to. Returns (rows deleted, images deleted)."""
    before = cutoff.astimezone(UTC).isoformat(timespec="microseconds")
    with store.transaction() as db:
        old = db.execute(
            "SELECT DISTINCT image FROM predictions WHERE time < ? AND image IS NOT NULL",
            (before,),
        ).fetchall()
        db.execute(
            "DELETE FROM feedback WHERE request_id IN "
            "(SELECT request_id FROM predictions WHERE time < ?)",
            (before,),
        )
        rows = db.execute("DELETE FROM predictions WHERE time < ?", (before,)).rowcount
        still = {
            r[0]
            for r in db.execute(
                "SELECT DISTINCT image FROM predictions WHERE image IS NOT NULL"
            ).fetchall()
        }
    root, removed = kept_root(store.directory), 0
    for (relative,) in old:
        if relative not in still:
            (root / relative).unlink(missing_ok=True)
            removed += 1
    return rows, removed


KEPT_COLUMNS = ["request_id", "time", "model_tag", "predicted", "confidence", "group", "image"]


def read_kept(
    directory: Path,
    since: datetime | None = None,
    until: datetime | None = None,
    model: str | None = None,
) -> pd.DataFrame:
    """Every kept image's row, oldest first, with its feedback label (``label``, NaN when
    none came back) and its file (``file``; rows whose file is gone are left out)."""
    where, args = ["image IS NOT NULL"], []
    for condition, value in (("time >= ?", since), ("time < ?", until)):
        if value is not None:
            where.append(condition)
            args.append(value.astimezone(UTC).isoformat(timespec="microseconds"))
    if model is not None:
        where.append("model_tag = ?")
        args.append(model)
    sql = (
        'SELECT request_id, time, model_tag, label, confidence, "group", image '
        f"FROM predictions WHERE {' AND '.join(where)}"
    )
    frame = pd.DataFrame(query(directory, sql, tuple(args)), columns=KEPT_COLUMNS)
    if frame.empty:
        return frame.assign(label=pd.Series(dtype=object), file=pd.Series(dtype=object))
    root = kept_root(directory)
    frame["file"] = [str(root / relative) for relative in frame["image"]]
    frame = frame[[Path(f).is_file() for f in frame["file"]]]
    labels = read_feedback(directory).set_index("request_id")["label"]
    frame = frame.assign(label=frame["request_id"].map(labels))
    frame["time"] = pd.to_datetime(frame["time"], utc=True, format="ISO8601")
    return frame.sort_values("time", kind="stable").reset_index(drop=True)
