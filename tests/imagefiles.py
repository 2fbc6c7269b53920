"""Real image files for tests: valid PNGs, class folders, a decompression-bomb header."""

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def png(path: Path, size: tuple[int, int] = (16, 16), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(RNG.integers(0, 255, shape, dtype=np.uint8)).convert(mode).save(path)
    return path


def bomb_header(path: Path, side: int = 50_000) -> Path:
    """A PNG whose header claims side x side pixels, with almost no pixel data.

    Decoding it would fail as truncated: a "decompression bomb" verdict proves
    the checker stopped at the header.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def clean_folder(root: Path, per_class: int = 4) -> Path:
    for label in ("cat", "dog", "fox"):
        for i in range(per_class):
            png(root / label / f"{i}.png")
    return root


def fashion_mnist_folder(root: Path, count: int) -> Path:
    """The first ``count`` Fashion-MNIST test images as a real ImageFolder of PNGs."""
    from tests.conftest import FASHION_MNIST
    from transferops.data.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist

    images, labels = load_fashion_mnist(FASHION_MNIST, "t10k")
    for i in range(count):
        path = root / FASHION_MNIST_CLASSES[labels[i]] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(path)
    return root


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "brick", "grass")


def photo_crops(per_class: int, seed: int, names: tuple[str, ...] = PHOTOS) -> list:
    """(crop, label) pairs: random crops, 64-128 px, of scikit-image's sample photographs.

    Real photographs, not Fashion-MNIST: colour (astronaut, coffee, the cat,
    the rocket) and grey (brick, grass) at their native resolution.
    """
    import skimage.data

    rng = np.random.default_rng(seed)
    crops = []
    for name in names:
        photo = np.asarray(getattr(skimage.data, name)())
        height, width = photo.shape[:2]
        for _ in range(per_class):
            side = int(rng.integers(64, min(128, height, width) + 1))
            y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
            crops.append((Image.fromarray(photo[y : y + side, x : x + side]), name))
    return crops


def photo_folder(root: Path, per_class: int, seed: int = 0) -> Path:
    """An ImageFolder of photo crops, every other one a JPEG, as a camera would save them."""
    for index, (image, label) in enumerate(photo_crops(per_class, seed)):
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        if index % 2:
            image.save(folder / f"{index:04d}.jpg", quality=90)
        else:
            image.save(folder / f"{index:04d}.png")
    return root
