"""Append-only JSON Lines logs, and the file lock that serialises their writers.

Used by the champion history, the drift-check history and the retrain
decisions. A writer killed mid-line leaves a torn last line: readers skip it,
and the next append starts on a fresh line, so neither it nor the new record
is glued to the torn one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path


def read_lines(path: Path) -> list[str]:
    """The file's complete lines (none when it does not exist)."""
    path = Path(path)
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def read_jsonl(path: Path) -> list[dict]:
    """Every record, oldest first; a torn line is skipped."""
    rows = []
    for line in read_lines(path):
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def append_line(path: Path, line: str) -> None:
    """Append one line and fsync it, holding the file's lock; after a torn line, start anew.

    The lock (``flock`` on the file itself) keeps two writers' lines whole and
    apart: the torn-line check and the write happen as one step.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.seek(0, os.SEEK_END)
            prefix = b""
            if handle.tell():
                handle.seek(-1, os.SEEK_END)
                prefix = b"" if handle.read(1) == b"\n" else b"\n"
            handle.seek(0, os.SEEK_END)
            handle.write(prefix + line.encode("utf-8") + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def append_jsonl(path: Path, row: dict) -> None:
    append_line(path, json.dumps(row))
