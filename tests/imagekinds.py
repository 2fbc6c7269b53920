"""Image files of every kind a team might have, each with a known picture inside.

Every maker draws a dark square on a light field (or its look-alike in the
file's own format) so a test can check what the model will see: upright,
flattened on the background, 8-bit, RGB.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def _square(size: tuple[int, int], mode: str, field, ink, at: float = 0.25) -> Image.Image:
    """A ``field`` image with an ``ink`` square a quarter of its size, its corner at ``at``."""
    image = Image.new(mode, size, field)
    w, h = size
    left, top = int(at * w), int(at * h)
    image.paste(ink, (left, top, left + w // 4, top + h // 4))
    return image


def rgba_png(path: Path, size=(40, 30), at: float = 0.25) -> Path:
    """Transparent everywhere but a square: the field's hidden RGB is black."""
    _square(size, "RGBA", (0, 0, 0, 0), (20, 40, 200, 255), at).save(path)
    return path


def palette_png(path: Path, size=(32, 32), at: float = 0.25) -> Path:
    image = _square(size, "P", 0, 1, at)
    image.putpalette([0, 0, 0, 30, 160, 30] + [0] * 762)
    image.save(path, transparency=0)
    return path


def grey16_png(path: Path, size=(36, 36), at: float = 0.25) -> Path:
    """16-bit grey: a light field at 60,000 of 65,535 and a dark square."""
    field = np.full((size[1], size[0]), 60_000, np.uint16)
    top, left = int(at * size[1]), int(at * size[0])
    field[top : top + size[1] // 4, left : left + size[0] // 4] = 5_000
    Image.fromarray(field).save(path)
    return path


def cmyk_jpeg(path: Path, size=(48, 32), at: float = 0.25) -> Path:
    _square(size, "CMYK", (0, 0, 0, 0), (0, 255, 255, 0), at).save(path, quality=95)
    return path


def rotated_jpeg(path: Path, size=(60, 30), at: float = 0.25) -> Path:
    """Stored 60 x 30 with EXIF orientation 6: the photo is 30 x 60 upright."""
    image = _square(size, "RGB", (230, 230, 230), (10, 10, 10), at)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = 6
    image.save(path, quality=95, exif=exif.tobytes())
    return path


def panorama_png(path: Path, size=(400, 40), at: float = 0.25) -> Path:
    _square(size, "RGB", (200, 220, 240), (40, 20, 10), at).save(path)
    return path


def grey_png(path: Path, size=(28, 28), at: float = 0.25) -> Path:
    _square(size, "L", 235, 15, at).save(path)
    return path


def rgb_png(path: Path, size=(50, 50), at: float = 0.25) -> Path:
    _square(size, "RGB", (240, 240, 220), (120, 10, 10), at).save(path)
    return path


KINDS: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "rgba": (".png", rgba_png),
    "palette": (".png", palette_png),
    "grey16": (".png", grey16_png),
    "cmyk": (".jpg", cmyk_jpeg),
    "exif_rotated": (".jpg", rotated_jpeg),
    "panorama": (".png", panorama_png),
    "grey": (".png", grey_png),
    "rgb": (".png", rgb_png),
}


def every_kind_folder(root: Path, classes: list[str], per_class: int) -> Path:
    """An ImageFolder where every class holds every kind of file, in turn.

    The square sits further right and down from one class to the next, so a
    model can tell the classes apart.
    """
    rng = np.random.default_rng(0)
    kinds = list(KINDS.items())
    for c, label in enumerate(classes):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name, (suffix, make) = kinds[i % len(kinds)]
            at = 0.1 + 0.6 * c / max(1, len(classes) - 1) + float(rng.uniform(-0.03, 0.03))
            width, height = inspect.signature(make).parameters["size"].default
            size = (width + i, height + i)  # every file its own content: no duplicates
            make(folder / f"{name}-{i}{suffix}", size=size, at=min(max(at, 0.0), 0.74))
    return root
