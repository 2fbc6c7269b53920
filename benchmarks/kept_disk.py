"""What keeping production images costs on disk, at the shipped policy (``serve.keep``).

Real images go through the real keeper (``transferops/logs/kept.py``) exactly
as the service hands them over: Fashion-MNIST digits as the demo sends them
(28-px PNG), scikit-image's sample photos as JPEG at their own size and as
large PNG, for a model of the given input side. The table gives, per kind,
the bytes sent, the bytes kept (the files under ``kept/``, as ``du`` counts
them), and the largest side stored. Each kind's images are distinct (a seeded
crop), so none is stored once for two requests. Run:

    .venv/bin/python benchmarks/kept_disk.py --side 110
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transferops.config import load_params  # noqa: E402
from transferops.data.datasets import load_fashion_mnist  # noqa: E402
from transferops.logs.kept import ImageKeeper  # noqa: E402
from transferops.logs.keptfiles import kept_root  # noqa: E402
from transferops.logs.predictions import PredictionLog, PredictionRecord, utc_now  # noqa: E402


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def kinds(count: int, seed: int) -> dict[str, list[bytes]]:
    """Images of each kind, each distinct."""
    from skimage import data

    rng = np.random.default_rng(seed)
    digits, _ = load_fashion_mnist(load_params(ROOT / "params.yaml").data.source, "t10k")
    photos = [Image.fromarray(getattr(data, n)()).convert("RGB")
              for n in ("chelsea", "coffee", "astronaut")]  # fmt: skip

    def crops(size: tuple[int, int]) -> list[Image.Image]:
        out = []
        for i in range(count):
            photo = photos[i % len(photos)]
            w, h = int(photo.width * 0.6), int(photo.height * 0.6)  # a seeded 60% crop
            x, y = rng.integers(0, photo.width - w + 1), rng.integers(0, photo.height - h + 1)
            out.append(photo.crop((x, y, x + w, y + h)).resize(size))
        return out

    return {
        "Fashion-MNIST 28 px PNG (the demo's traffic)": [
            encoded(Image.fromarray(digits[i]), "PNG") for i in range(count)
        ],
        "photo 640x480 JPEG q90": [encoded(c, "JPEG", quality=90) for c in crops((640, 480))],
        "photo 1600x1200 JPEG q90": [encoded(c, "JPEG", quality=90) for c in crops((1600, 1200))],
        "photo 640x480 PNG": [encoded(c, "PNG") for c in crops((640, 480))],
    }


def keep_all(images: list[bytes], side: int) -> tuple[int, int]:
    """Bytes on disk under kept/ (allocated blocks, as du counts) and the largest side kept."""
    serve = load_params(ROOT / "params.yaml").serve
    with tempfile.TemporaryDirectory() as folder:
        log = PredictionLog(Path(folder))
        keeper = ImageKeeper(log, serve, seed=0)
        for i, data in enumerate(images):
            record = PredictionRecord(f"r{i}", utc_now(), "m:1", "x", 0.5, [0.5, 0.5], np.zeros(4))
            log.append([record])
            keeper.offer(record.request_id, data, side)
        keeper.flush()
        keeper.close()
        log.close()
        files = [p for p in kept_root(Path(folder)).rglob("*") if p.is_file()]
        assert len(files) == len(images), f"{len(files)} of {len(images)} kept"
        disk = sum(os.stat(p).st_blocks * 512 for p in files)
        largest = max(max(Image.open(p).size) for p in files)
        return disk, largest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=110, help="the model's input (resize) side")
    parser.add_argument("--count", type=int, default=60, help="images per kind")
    args = parser.parse_args()
    policy = load_params(ROOT / "params.yaml").serve.keep
    kept_side = int(np.ceil(policy.side_factor * args.side))
    table = Table(
        title=f"kept images at the shipped policy (side_factor {policy.side_factor:g}: "
        f"largest side <= {kept_side} px); {platform.node()}, {date.today()}"
    )
    for column in ("kind", "sent KB/image", "kept KB/image on disk", "largest side kept"):
        table.add_column(column)
    for kind, images in kinds(args.count, seed=0).items():
        disk, largest = keep_all(images, kept_side)
        sent = sum(map(len, images)) / len(images) / 1024
        table.add_row(kind, f"{sent:.1f}", f"{disk / len(images) / 1024:.1f}", str(largest))
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
