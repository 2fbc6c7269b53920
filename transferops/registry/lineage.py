"""Where a model came from: the DVC data version and the git revision."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import yaml

UNVERSIONED = "unversioned"


def data_version(prepared: Path, lock_file: Path = Path("dvc.lock")) -> str:
    """DVC's hash of the prepared dataset, as recorded in ``dvc.lock``.

    Outside a DVC run (no lock entry yet) this falls back to the sha256 of
    the manifest, prefixed ``manifest-``, so a version is never blank.
    """
    prepared = Path(prepared)
    if lock_file.is_file():
        stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
        for out in stages.get("prepare", {}).get("outs", []):
            if Path(out.get("path", "")) == prepared and "md5" in out:
                return out["md5"]
    manifest = prepared / "manifest.csv"
    if manifest.is_file():
        return "manifest-" + hashlib.sha256(manifest.read_bytes()).hexdigest()[:32]
    return UNVERSIONED


def git_revision(cwd: Path = Path()) -> str:
    """``HEAD``'s commit, with ``-dirty`` when tracked files have changes."""
    try:
        head = _git(cwd, "rev-parse", "HEAD")
        dirty = _git(cwd, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()
