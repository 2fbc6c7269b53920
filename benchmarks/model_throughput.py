"""The serving model path's throughput: images per second through ``Loaded.predict``.

``Loaded.predict`` is what a serving worker runs per batch: cut each image to
the model's input, stack, copy to the device (pinned on CUDA), forward under
autocast with the BatchNorm probe recording, top-k. No HTTP, no decoding: this
is the part a GPU changes (docs/serving.md has the whole service under load).
The model is the pretrained Lite0 with a seeded 10-class head, saved as the
package stage saves it; the images are seeded random RGB at ``--image-side``.

    .venv/bin/python benchmarks/model_throughput.py [--device cuda] [--batches 1 8 32 128]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from services.following import Loaded
from transferops.models.backbones import load_backbone
from transferops.models.classifier import save_seeded_classifier
from transferops.runtime import configure_runtime, select_device

CLASSES = [f"class {i}" for i in range(10)]


def saved_model(folder: Path, side: int | None) -> Path:
    return save_seeded_classifier(load_backbone("tf_efficientnet_lite0"), CLASSES, folder, side)


def images_per_second(loaded: Loaded, images: list, batch: int, seconds: float) -> float:
    """Batches of ``batch`` for at least ``seconds`` (after two warm-up batches)."""
    for _ in range(2):
        loaded.predict(images[:batch])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done * batch) % (len(images) - batch + 1)
        loaded.predict(images[start : start + batch])  # returns host arrays: synchronised
        done += 1
    return done * batch / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--side", type=int, default=0, help="model input px; 0 = native")
    parser.add_argument("--image-side", type=int, default=256, help="incoming image px")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed per batch size")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the rows here too")
    args = parser.parse_args(argv)
    configure_runtime()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    rng = np.random.default_rng(0)
    side = args.image_side
    images = list(rng.integers(0, 256, (max(args.batches) * 2, side, side, 3), dtype=np.uint8))
    with tempfile.TemporaryDirectory() as tmp:
        loaded = Loaded.from_folder(saved_model(Path(tmp) / "model", args.side or None), 3, device)
        model_side = loaded.config.data_config["input_size"][-1]
        rows = {
            batch: images_per_second(loaded, images, batch, args.seconds) for batch in args.batches
        }
    table = Table(
        title=f"Serving model path (Loaded.predict), {side} px images -> {model_side} px, {device}"
    )
    table.add_column("batch", justify="right")
    table.add_column("images/s", justify="right")
    table.add_column("ms per batch", justify="right")
    for batch, rate in rows.items():
        table.add_row(str(batch), f"{rate:,.0f}", f"{1000 * batch / rate:.1f}")
    Console().print(table)
    if args.json:
        result = {"device": device, "image_side": side, "model_side": model_side}
        args.json.write_text(json.dumps(result | {"images_per_s": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
