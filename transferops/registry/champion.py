"""Which packaged model is the champion (the one that serves), and every change to it.

``<paths.models>/champion.json`` names the champion. It changes only by an
atomic rename of a fully written, fsynced file, so at every instant exactly
one champion is defined and a crash mid-promotion leaves the old one. Each
change is one record (tag, action, previous champion, who, through what, why,
the gate's verdict), appended to ``history.jsonl`` after the rename. A crash
between the two is repaired by the next change, and :func:`history` shows the
record either way: ``champion.json`` is the commit point.

Changes are serialised with an exclusive lock on ``<paths.models>/.lock``.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from transferops.files import locked, write_atomic
from transferops.logs.jsonl import append_line, read_lines

CHAMPION, HISTORY, LOCK = "champion.json", "history.jsonl", ".lock"


class ChampionError(RuntimeError):
    """A promotion or rollback that cannot happen; the message says why."""


def actor() -> str:
    """Who is acting: ``TRANSFEROPS_ACTOR`` (e.g. a flow run), else user@host."""
    return os.environ.get("TRANSFEROPS_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class ChampionRecord:
    tag: str
    action: str  # promote | rollback
    previous: str | None  # the champion this one replaced
    reason: str
    via: str  # what made the change: the gate, `transferops promote`, ...
    actor: str = field(default_factory=actor)
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    gate: dict | None = None  # the gate's verdict, when the gate promoted
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ChampionRecord:
        return cls(**json.loads(text))


def current(models_dir: Path) -> ChampionRecord | None:
    """The champion's record, or None before the first promotion."""
    path = Path(models_dir) / CHAMPION
    try:
        return ChampionRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as err:
        raise ChampionError(f"{path}: unreadable champion record ({err})") from err


def history(models_dir: Path) -> list[ChampionRecord]:
    """Every champion change, oldest first, including one whose log line a crash lost."""
    records = _logged(Path(models_dir))
    missing = _unlogged(Path(models_dir), records)
    return [*records, missing] if missing else records


def _anything(tag: str) -> None:
    pass


UNCHECKED = object()  # ``promote(expected=...)``: any current champion will do


def promote(
    models_dir: Path,
    tag: str,
    *,
    reason: str,
    via: str,
    gate: dict | None = None,
    require: Callable[[str], None] = _anything,
    who: str | None = None,
    expected: str | object | None = UNCHECKED,
) -> ChampionRecord:
    """Make ``tag`` the champion; return the new record.

    ``require(tag)`` runs under the lock and raises when the tag must not
    serve (e.g. it is not in the model store); ``who`` defaults to :func:`actor`.
    ``expected`` is the champion the caller compared against (None: none):
    when another change came first, nothing happens and ChampionError says so.
    """
    with _locked(Path(models_dir)):
        old = current(models_dir)
        if expected is not UNCHECKED and (old.tag if old else None) != expected:
            raise ChampionError(
                f"the champion changed to {old.tag if old else None} while {tag} was compared "
                f"with {expected}; run the gate again"
            )
        if old and old.tag == tag:
            raise ChampionError(f"{tag} is already the champion (since {old.time})")
        require(tag)
        record = ChampionRecord(
            tag=tag,
            action="promote",
            previous=old.tag if old else None,
            reason=reason,
            via=via,
            gate=gate,
            actor=who or actor(),
        )
        _commit(Path(models_dir), record)
        return record


def rollback(
    models_dir: Path, *, reason: str, via: str, require: Callable[[str], None] = _anything
) -> ChampionRecord:
    """Bring back the model the current champion replaced when it was promoted."""
    with _locked(Path(models_dir)):
        old = current(models_dir)
        if old is None:
            raise ChampionError(f"{Path(models_dir) / CHAMPION}: no champion to roll back")
        promoted = [r for r in history(models_dir) if r.tag == old.tag and r.action == "promote"]
        target = promoted[-1].previous if promoted else None
        if target is None:
            raise ChampionError(f"{old.tag} was the first champion: nothing to roll back to")
        require(target)
        record = ChampionRecord(
            tag=target, action="rollback", previous=old.tag, reason=reason, via=via
        )
        _commit(Path(models_dir), record)
        return record


def _commit(models_dir: Path, record: ChampionRecord) -> None:
    """Log a record a crash left out, rename the new champion in, then log it."""
    _repair_history(models_dir)
    for stale in models_dir.glob(f".{CHAMPION}.*.tmp"):  # left by a crashed change
        stale.unlink()
    write_atomic(models_dir / CHAMPION, record.to_json())  # the commit point
    _append(models_dir, record)


def _repair_history(models_dir: Path) -> None:
    missing = _unlogged(models_dir, _logged(models_dir))
    if missing:
        _append(models_dir, missing)


def _unlogged(models_dir: Path, logged: list[ChampionRecord]) -> ChampionRecord | None:
    """The champion's record when a crash after the commit kept it out of the log."""
    champion = current(models_dir)
    return champion if champion and champion.id not in {r.id for r in logged} else None


def _logged(models_dir: Path) -> list[ChampionRecord]:
    records = []
    for line in read_lines(models_dir / HISTORY):
        with contextlib.suppress(ValueError, TypeError):  # a torn last line
            records.append(ChampionRecord.from_json(line))
    return records


def _append(models_dir: Path, record: ChampionRecord) -> None:
    append_line(models_dir / HISTORY, record.to_json())


def _locked(models_dir: Path):
    return locked(models_dir / LOCK)
