"""Stage ``prepare``: a source of labelled images -> images on disk + manifest.

Sources: the built-in Fashion-MNIST (a seeded, stratified subset) or an
ImageFolder; every labelled drop under ``paths.incoming`` (one ImageFolder
per drop, e.g. labelled production images) is merged in. Source files
are only read, never modified; the output is written to a temporary folder
and swapped in at the end, so a failed run leaves the last dataset intact.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from pipelines.config import Params
from pipelines.datasets import (
    CLASSES,
    FASHION_MNIST_CLASSES,
    MANIFEST,
    MANIFEST_COLUMNS,
    DataSourceError,
    load_fashion_mnist,
    scan_image_folder,
    sha256_bytes,
)
from pipelines.stage import run_stage

log = logging.getLogger(__name__)


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
                    "source": f"fashion_mnist:{part}:{i}",
                    "pixels": imgs[i],
                }
            )
    return items


def split_image_folder(root: Path, fractions: tuple[float, float, float], seed: int) -> list[dict]:
    """A seeded split of an ImageFolder, stratified by label."""
    files = scan_image_folder(root)
    train_frac, val_frac, _ = fractions
    assigned = pd.Series("test", index=files.index)
    stratify = files["label"] if files["label"].value_counts().min() >= 3 else None
    train, rest = train_test_split(
        files.index, train_size=train_frac, stratify=stratify, random_state=seed
    )
    assigned[train] = "train"
    rest_stratify = files.loc[rest, "label"] if stratify is not None else None
    val, _ = train_test_split(
        rest, train_size=val_frac / (1 - train_frac), stratify=rest_stratify, random_state=seed
    )
    assigned[val] = "val"
    return [
        {"split": assigned[i], "label": row.label, "source": str(row.file), "file": row.file}
        for i, row in files.iterrows()
    ]


def encode(item: dict) -> tuple[bytes, str, int, int]:
    """The image's bytes, file suffix and size; arrays become PNG, files are copied."""
    if "pixels" in item:
        buffer = io.BytesIO()
        Image.fromarray(item["pixels"]).save(buffer, format="PNG")
        data, suffix = buffer.getvalue(), ".png"
    else:
        data, suffix = Path(item["file"]).read_bytes(), Path(item["file"]).suffix.lower()
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as err:
        raise DataSourceError(f"{item['source']}: cannot read as an image ({err})") from err
    return data, suffix, width, height


def write_dataset(items: list[dict], out_dir: Path) -> pd.DataFrame:
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
                "sha256": digest,
                "width": width,
                "height": height,
                "source": item["source"],
            }
        )
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest.to_csv(staging / MANIFEST, index=False)
    classes = sorted(manifest["label"].unique())
    (staging / CLASSES).write_text(json.dumps(classes, indent=1))
    backup = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(backup, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(backup)
    staging.rename(out_dir)
    shutil.rmtree(backup, ignore_errors=True)
    return manifest


def incoming_drops(incoming: Path) -> list[Path]:
    """The drop folders under ``incoming``, oldest name first."""
    incoming = Path(incoming)
    if not incoming.is_dir():
        return []
    return sorted(p for p in incoming.iterdir() if p.is_dir() and not p.name.startswith("."))


def prepare(params: Params) -> pd.DataFrame:
    """Collect every source's items and write the prepared dataset."""
    data = params.data
    if data.format == "fashion_mnist":
        items = split_fashion_mnist(
            data.source,
            train_size=data.train_size,
            val_size=data.val_size,
            test_size=data.test_size,
            seed=params.seed,
        )
    else:
        items = split_image_folder(data.source, data.holdout_fraction, params.seed)
    for drop in incoming_drops(params.paths.incoming):
        items += split_image_folder(drop, data.holdout_fraction, params.seed)
    manifest = write_dataset(items, params.paths.prepared)
    log.info(
        "prepared %d images in %s: %s",
        len(manifest),
        params.paths.prepared,
        manifest["split"].value_counts().to_dict(),
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
