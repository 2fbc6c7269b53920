"""Fashion-MNIST's IDX files, and the prepared dataset's manifests.

The prepared dataset is a folder of images plus ``manifest.csv`` (path, label,
split, group, sha256, width, height, source); validation writes the rows that
passed as ``accepted.csv``. ImageFolders and CSV/Parquet sources are listed by
``transferops/data/sources.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from transferops.data.pictures import DEFAULT_PICTURE, PictureSettings, open_rgb, to_rgb

MANIFEST = "manifest.csv"
CLASSES = "classes.json"
REFUSED = "refused.csv"  # rows prepare would not read (escaping paths, missing files)
ACCEPTED = "accepted.csv"  # the manifest rows that passed validation: what trains
MANIFEST_COLUMNS = ["path", "label", "split", "group", "sha256", "width", "height", "source"]
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}

if TYPE_CHECKING:
    import torch

FASHION_MNIST_CLASSES = [
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
]
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_HELP = (
    "Fashion-MNIST is read from Debian's package: `apt-get install dataset-fashion-mnist` "
    "(files in /usr/share/datasets/fashion-mnist), or point data.source at a folder "
    "holding the four *-ubyte.gz files."
)


class DataSourceError(ValueError):
    """A data source that cannot be read; the message names the path."""


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into an array (LeCun's format)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataSourceError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataSourceError(f"{path}: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def load_fashion_mnist(source: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of the ``train`` or ``t10k`` part."""
    images_name, labels_name = FASHION_MNIST_FILES[part]
    paths = [Path(source) / images_name, Path(source) / labels_name]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataSourceError(f"data.source: missing {', '.join(missing)}. {FASHION_MNIST_HELP}")
    images, labels = (read_idx(p) for p in paths)
    if len(images) != len(labels):
        raise DataSourceError(f"{source}: {len(images)} images but {len(labels)} labels")
    return images, labels


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(prepared: Path, name: str = MANIFEST) -> pd.DataFrame:
    """A manifest (``manifest.csv`` of a prepared dataset by default), schema checked."""
    path = Path(prepared) / name
    if not path.is_file():
        raise DataSourceError(f"{path}: manifest not found; run the pipeline stage first")
    frame = pd.read_csv(path, dtype={"label": str, "split": str, "group": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise DataSourceError(f"{path}: missing column(s) {missing}")
    return frame


def read_accepted(validation: Path) -> pd.DataFrame:
    """The rows of the prepared manifest that passed validation (what trains)."""
    return read_manifest(validation, ACCEPTED)


def read_classes(prepared: Path) -> list[str]:
    return json.loads((Path(prepared) / CLASSES).read_text())


def load_rgb(
    path: Path, picture: PictureSettings = DEFAULT_PICTURE, side: int | None = None
) -> Image.Image:
    """The picture the model sees (transferops/data/pictures.py); ``side`` lets JPEGs decode
    small."""
    return open_rgb(path, picture, side)


class ManifestImages:
    """Images of one split of a prepared dataset, transformed, with label indices.

    A map-style dataset for ``torch.utils.data.DataLoader`` (``__len__`` and
    ``__getitem__``); it does not import torch, so commands that only read
    manifests stay quick to start.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        root: Path,
        classes: list[str],
        transform: Callable,
        picture: PictureSettings = DEFAULT_PICTURE,
    ) -> None:
        self.paths = [Path(root) / p for p in frame["path"]]
        index = {name: i for i, name in enumerate(classes)}
        self.targets = [index[label] for label in frame["label"]]
        self.transform = transform
        self.picture = picture
        self.side = _input_side(transform)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, item: int) -> Image.Image:
        return load_rgb(self.paths[item], self.picture, self.side)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load(item)), self.targets[item]


def _input_side(transform: Callable) -> int | None:
    """The side a timm transform resizes to, when it says (JPEGs can then decode small)."""
    for step in getattr(transform, "transforms", []):
        size = getattr(step, "size", None)
        if size is not None:
            return int(size if isinstance(size, int) else max(size))
    return None


class ArrayImages:
    """In-memory images with label indices, transformed.

    ``images``: uint8 arrays (N, H, W) or (N, H, W, 3), or a list of PIL
    images of any size and mode. The same contract as :class:`ManifestImages`,
    for data that never touches disk: benchmark suites and tests.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray | Image.Image],
        targets: Sequence[int],
        transform: Callable,
        picture: PictureSettings = DEFAULT_PICTURE,
    ) -> None:
        self.images = images
        self.targets = [int(t) for t in targets]
        self.transform = transform
        self.picture = picture

    def __len__(self) -> int:
        return len(self.images)

    def load(self, item: int) -> Image.Image:
        image = self.images[item]
        image = image if isinstance(image, Image.Image) else Image.fromarray(image)
        return to_rgb(image, self.picture)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load(item)), self.targets[item]
