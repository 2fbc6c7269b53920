"""Preparing a dataset: sources -> images on disk + a manifest, swapped in whole.

Splits are kept when given, otherwise drawn seeded and stratified by label
(and group). Files are copied byte for byte, never decoded or modified:
judging them is validation's job. The output is written to a staging folder
and swapped in at the end, so a failure leaves the last dataset intact.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from transferops.data.datasets import (
    CLASSES,
    FASHION_MNIST_CLASSES,
    MANIFEST,
    MANIFEST_COLUMNS,
    REFUSED,
    load_fashion_mnist,
    sha256_bytes,
)
from transferops.data.sources import Listing

log = logging.getLogger(__name__)


def train_test_split(*arrays, **options):
    """scikit-learn's, imported when a split is drawn: the stages and flows that only
    read this module's names (evaluate, the training flow) start a second sooner."""
    from sklearn.model_selection import train_test_split as split

    return split(*arrays, **options)


def stratified_pick(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of a seeded subset of ``size`` with the label mix of the whole."""
    if size >= len(labels):
        return np.arange(len(labels))
    picked, _ = train_test_split(
        np.arange(len(labels)), train_size=size, stratify=labels, random_state=seed
    )
    return np.sort(picked)


def split_fashion_mnist(
    source: Path, *, train_size: int, val_size: int, test_size: int, seed: int
) -> list[dict]:
    """Train and val from the 60k training part, test from the 10k test part."""
    images, labels = load_fashion_mnist(source, "train")
    pool = stratified_pick(labels, train_size + val_size, seed)
    train, val = train_test_split(
        pool, test_size=val_size, stratify=labels[pool], random_state=seed
    )
    test_images, test_labels = load_fashion_mnist(source, "t10k")
    test = stratified_pick(test_labels, test_size, seed)
    items = []
    for split, part, indices, imgs, labs in (
        ("train", "train", sorted(train), images, labels),
        ("val", "train", sorted(val), images, labels),
        ("test", "t10k", test, test_images, test_labels),
    ):
        for i in indices:
            items.append(
                {
                    "split": split,
                    "label": FASHION_MNIST_CLASSES[labs[i]],
                    "group": None,
                    "source": f"fashion_mnist:{part}:{i}",
                    "pixels": imgs[i],
                }
            )
    return items


def assign_splits(
    rows: pd.DataFrame, fractions: tuple[float, float, float], seed: int
) -> pd.Series:
    """Keep given splits; draw the others seeded, stratified by label and group."""
    splits = rows["split"].copy()
    todo = rows[splits.isna()]
    if todo.empty:
        return splits
    strata = todo["label"] + "|" + todo["group"].fillna("")
    if strata.value_counts().min() < 3:  # too few per stratum: label alone, or none
        strata = todo["label"] if todo["label"].value_counts().min() >= 3 else None
    train_frac, val_frac, _ = fractions
    train, rest = train_test_split(
        todo.index, train_size=train_frac, stratify=strata, random_state=seed
    )
    rest_strata = strata.loc[rest] if strata is not None else None
    val, test = train_test_split(
        rest, train_size=val_frac / (1 - train_frac), stratify=rest_strata, random_state=seed
    )
    splits.loc[train], splits.loc[val], splits.loc[test] = "train", "val", "test"
    return splits


def listing_items(
    listing: Listing, fractions: tuple[float, float, float], seed: int
) -> tuple[list[dict], pd.DataFrame]:
    """Items to copy, and the refused rows (never read)."""
    rows = listing.rows
    usable = rows[rows["problem"].isna()].copy()
    usable["split"] = assign_splits(usable, fractions, seed)
    items = [
        {
            "split": r.split,
            "label": r.label,
            "group": r.group,
            "source": str(listing.root / r.path),
            "file": r.file,
        }
        for r in usable.itertuples()
    ]
    return items, rows[rows["problem"].notna()]


def encode(item: dict) -> tuple[bytes, str, int | None, int | None]:
    """The image's bytes, suffix and header size; arrays become PNG, files are copied."""
    if "pixels" in item:
        buffer = io.BytesIO()
        Image.fromarray(item["pixels"]).save(buffer, format="PNG")
        data, suffix = buffer.getvalue(), ".png"
    else:
        data, suffix = Path(item["file"]).read_bytes(), Path(item["file"]).suffix.lower()
    try:  # the header only: pixels are never decoded here
        with Image.open(io.BytesIO(data)) as image:
            return data, suffix, image.width, image.height
    except Exception:
        return data, suffix, None, None


def write_dataset(items: list[dict], refused: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """Write images and the manifest to a fresh folder, then swap it in atomically."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    rows = []
    for item in tqdm(items, desc="prepare", unit="img", disable=None):
        data, suffix, width, height = encode(item)
        digest = sha256_bytes(data)
        relative = Path("images") / item["split"] / item["label"] / f"{digest[:16]}{suffix}"
        (staging / relative).parent.mkdir(parents=True, exist_ok=True)
        (staging / relative).write_bytes(data)
        rows.append(
            {
                "path": relative.as_posix(),
                "label": item["label"],
                "split": item["split"],
                "group": item["group"],
                "sha256": digest,
                "width": width,
                "height": height,
                "source": item["source"],
            }
        )
    staging.mkdir(parents=True, exist_ok=True)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest.to_csv(staging / MANIFEST, index=False)
    refused.to_csv(staging / REFUSED, index=False)
    classes = sorted(manifest["label"].unique())
    (staging / CLASSES).write_text(json.dumps(classes, indent=1))
    backup = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(backup, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(backup)
    staging.rename(out_dir)
    shutil.rmtree(backup, ignore_errors=True)
    return manifest


DROP_MANIFEST = "manifest.csv"  # a drop made from a manifest keeps one (splits, groups)


def incoming_drops(incoming: Path) -> list[Path]:
    """The drop folders under ``incoming``, oldest name first."""
    incoming = Path(incoming)
    if not incoming.is_dir():
        return []
    return sorted(p for p in incoming.iterdir() if p.is_dir() and not p.name.startswith("."))


BASE_REGIME = "base"  # rows from data.source, as against a drop's


def regime_of(source: str, incoming: Path) -> str:
    """Which part of the data a prepared row came from: its drop's name, or ``base``.

    ``source`` is the manifest's ``source`` column (the file a row was copied
    from); a row copied from ``incoming/<drop>/...`` belongs to ``<drop>``.
    """
    parts = Path(os.path.abspath(source)).parts
    root = Path(os.path.abspath(incoming)).parts
    if len(parts) > len(root) + 1 and parts[: len(root)] == root:
        return parts[len(root)]
    return BASE_REGIME


def drop_source(drop: Path) -> Path:
    """What to list for a drop: its manifest when it has one, else the ImageFolder itself."""
    manifest = Path(drop) / DROP_MANIFEST
    return manifest if manifest.is_file() else Path(drop)
