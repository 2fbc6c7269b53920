"""Writing state files so that a reader sees the old file or the new one, never half of one.

Champion records, run records, drift calibrations, the reports index and the
run's params all go through :func:`write_atomic`: the bytes go to a temporary
file in the same folder, are flushed to disk, renamed over the target (the
commit point), and the folder itself is flushed so the rename survives a
power cut. Appends to JSON Lines logs go through ``transferops.logs.jsonl``.

File modes, on purpose rather than by umask: state files are ``SHARED`` (0640:
the owner writes, the owner's group reads, others nothing), so a service that
runs as another user of the project's group can follow the champion and read
the params; secrets are ``PRIVATE`` (0600). docs/security.md, "File modes".

The two file locks live here too, both ``flock`` (the kernel lets go when a
holder dies): :func:`locked` waits its turn (the champion, the retrain
decision, DVC in one repo), :func:`exclusive` refuses at once and names the
holder (one training run per project).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

SHARED = 0o640  # state files: the owner and its group (docs/security.md)
PRIVATE = 0o600  # secrets (an auth string) and callers' images


def write_atomic(path: Path, data: str | bytes, mode: int = SHARED) -> Path:
    """Replace ``path`` with ``data`` in one step (its folder is created when missing),
    with file mode ``mode`` whatever the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)
    return path


def fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_file`` (created with its folder) for the block."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Held(RuntimeError):
    """An exclusive lock is held by someone else; ``holder`` says who (as they wrote it)."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


@contextlib.contextmanager
def exclusive(lock_file: Path, holder: str) -> Iterator[None]:
    """Hold ``lock_file`` for the block, or raise :class:`Held` at once when another has it.

    The lock is an ``flock``: the kernel lets go when the holder dies, so a
    killed run never leaves a stale lock. The holder's description is
    written into the file for the next caller's message.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise Held(handle.read().strip() or "unknown holder") from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(holder)
            handle.flush()
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
