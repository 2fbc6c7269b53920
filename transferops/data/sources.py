"""Listing a labelled image source: an ImageFolder or a CSV/Parquet manifest.

A listing has one row per image: ``path`` (as written, relative to the root),
``file`` (resolved, or None when refused), ``label``, ``split``, ``group``
(None when not given) and ``problem`` (why the row was refused: a path that
escapes the root, an absolute path, a missing file, a label, split or group
that ``transferops.names`` refuses). ``empty_classes`` lists
class folders of an ImageFolder that hold no image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from transferops.data.datasets import IMAGE_SUFFIXES, DataSourceError
from transferops.names import name_problem, split_problem, text_problem

LISTING_COLUMNS = ["path", "file", "label", "split", "group", "problem"]
MANIFEST_SUFFIXES = {".csv", ".parquet"}


@dataclass
class Listing:
    root: Path
    rows: pd.DataFrame
    empty_classes: list[str] = field(default_factory=list)


def list_source(source: Path) -> Listing:
    """A listing of an ImageFolder (a folder) or a manifest (a .csv/.parquet file)."""
    source = Path(source)
    if source.is_dir():
        return list_image_folder(source)
    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        return list_manifest(source)
    raise DataSourceError(
        f"{source}: expected an ImageFolder directory or a .csv/.parquet manifest"
    )


def contained(root: Path, path: Path) -> str | None:
    """Why ``path`` may not be used under ``root`` (None when it may)."""
    if not path.exists():
        return "file not found"
    if not path.resolve().is_relative_to(root.resolve()):
        return f"path escapes the dataset root (resolves to {path.resolve()})"
    return None


def list_image_folder(root: Path) -> Listing:
    """``ROOT/<label>/.../<image>``: the top-level folder names the label.

    Symlinks are followed, but anything that resolves outside the root is
    refused. Only symlinks are resolved: a plain entry inside a contained
    folder is contained, which keeps a 70,000-file listing fast.
    """
    real_root = Path(root).resolve()
    class_dirs = sorted(
        p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    if not class_dirs:
        raise DataSourceError(f"{root}: no class folders (expected ROOT/<label>/<image>)")
    rows = []
    for class_dir in class_dirs:
        rows += _walk_class(Path(root), real_root, class_dir)
    listing = pd.DataFrame(rows, columns=LISTING_COLUMNS)
    empty = sorted(set(d.name for d in class_dirs) - set(listing["label"]))
    return Listing(Path(root), listing, empty)


def _walk_class(root: Path, real_root: Path, class_dir: Path) -> list[dict]:
    rows = []
    escaped: dict[str, str] = {}  # folder -> where it resolves, for folders outside the root
    label_problem = name_problem("label (class folder name)", class_dir.name)
    for folder, dirs, files in os.walk(class_dir, followlinks=True):
        dirs.sort()
        parent = escaped.get(os.path.dirname(folder))
        if parent is None and os.path.islink(folder):
            target = os.path.realpath(folder)
            if not Path(target).is_relative_to(real_root):
                parent = target
        if parent is not None:
            escaped[folder] = parent
        for name in sorted(files):
            if os.path.splitext(name)[1].lower() not in IMAGE_SUFFIXES:
                continue
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, root)
            problem = _escape_problem(path, real_root, parent) or label_problem
            rows.append(
                {
                    "path": Path(relative).as_posix(),
                    "file": None if problem else os.path.join(real_root, relative),
                    "label": class_dir.name,
                    "split": None,
                    "group": None,
                    "problem": problem,
                }
            )
    return rows


def _escape_problem(path: str, real_root: Path, escaped_folder: str | None) -> str | None:
    if escaped_folder is not None:
        return f"path escapes the dataset root (folder resolves to {escaped_folder})"
    if os.path.islink(path):
        return contained(real_root, Path(path))
    return None


def list_manifest(manifest: Path) -> Listing:
    """A table with ``path`` and ``label`` (optional ``split``, ``group``).

    Paths are relative to the manifest's folder; absolute ones and ones that
    escape the folder are refused (listed with a problem, never read).
    """
    manifest = Path(manifest)
    try:
        table = (
            pd.read_parquet(manifest)
            if manifest.suffix.lower() == ".parquet"
            else pd.read_csv(manifest, dtype=str, keep_default_na=False)
        )
    except (OSError, ValueError) as err:
        raise DataSourceError(f"{manifest}: cannot read manifest: {err}") from err
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataSourceError(
            f"{manifest}: missing column(s) {missing}; found {list(table.columns)}"
        )
    root = manifest.parent
    rows = []
    for record in table.to_dict(orient="records"):
        written = str(record["path"])
        path = Path(written)
        label, split, group = (
            str(record["label"]),
            _optional(record.get("split")),
            _optional(record.get("group")),
        )
        problem = (
            "absolute path refused: paths must be relative to the manifest's folder"
            if path.is_absolute()
            else contained(root, root / path)
        ) or _text_problem(label, split, group)
        rows.append(
            {
                "path": written,
                "file": None if problem else str((root / path).resolve()),
                "label": label,
                "split": split,
                "group": group,
                "problem": problem,
            }
        )
    return Listing(root, pd.DataFrame(rows, columns=LISTING_COLUMNS))


def _text_problem(label: str, split: str | None, group: str | None) -> str | None:
    """Labels and splits become folder names and groups are stored: refuse what may not."""
    return (
        name_problem("label", label)
        or (split_problem(split) if split is not None else None)
        or (text_problem("group", group) if group is not None else None)
    )


def _optional(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)) or value == "":
        return None
    return str(value)
