"""Throwaway copies of the project: a git + DVC workspace for demos and tests.

Runs leave state behind (``dvc.lock``, drops' ``.dvc`` files, models) that
belongs to a workspace, not to the source tree: the demo runs in a copy so the
checkout stays clean and every demo starts from the bundled default.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

# What a workspace needs when the source is not a git checkout.
PROJECT_FILES = (
    "flows",
    "pipelines",
    "services",
    "monitoring",
    "transferops",
    "params.yaml",
    ".transferops/run-params.yaml",
    "dvc.yaml",
    ".dvc/config",
    ".dvc/.gitignore",
    "data/incoming/README.md",
    "pyproject.toml",
)


def project_files(root: Path) -> list[str]:
    """Files git tracks or would track (not ignored) under ``root``; else :data:`PROJECT_FILES`.

    Untracked, not-ignored files count: a developer's uncommitted work runs too.
    """
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = []
    if listed:
        return listed
    names = []
    for entry in PROJECT_FILES:
        path = root / entry
        names += (
            [str(p.relative_to(root)) for p in path.rglob("*.py")] if path.is_dir() else [entry]
        )
    return names


def create_workspace(root: Path, dest: Path) -> Path:
    """A fresh copy of the project at ``dest`` as its own git repository."""
    if dest.exists():
        shutil.rmtree(dest)
    for name in project_files(root):
        if (root / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dest / name)
    git = ["git", "-c", "user.name=transferops", "-c", "user.email=transferops@localhost"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "workspace copy of the project"], cwd=dest, check=True)
    return dest
