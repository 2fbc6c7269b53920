"""Time `transferops check` on all 70,000 Fashion-MNIST images, cold and unchanged.

Writes the images once as an ImageFolder (PNG) under --root, then checks it
twice in-process with the default params: first with no cache (every file
hashed and decoded), then with nothing changed (cached facts reused); then
once more as a `transferops check` process, which adds interpreter and
library start-up (Great Expectations alone imports in about 2 s). Prints a
table. Targets (issue 3): under 60 s cold, under 5 s unchanged, on 2 cores.

    .venv/bin/python benchmarks/check_speed.py --root /tmp/fmnist-70k
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from transferops.config import load_params
from transferops.data.checks import check_source
from transferops.data.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from transferops.runtime import configure_runtime

ROOT = Path(__file__).resolve().parents[1]


def write_image_folder(source: Path, root: Path) -> int:
    """All 70,000 images as ``root/<class>/<part>-<index>.png`` (skipped if present)."""
    count = 0
    for part in ("train", "t10k"):
        images, labels = load_fashion_mnist(source, part)
        for index in tqdm(range(len(labels)), desc=f"write {part}", disable=None):
            path = root / FASHION_MNIST_CLASSES[labels[index]] / f"{part}-{index:05d}.png"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[index]).save(path)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/fmnist-70k"))
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    configure_runtime()
    images = write_image_folder(params.data.source, args.root)
    out = args.root.with_name(args.root.name + "-check")
    shutil.rmtree(out, ignore_errors=True)
    timings = []
    for run in ("cold (no cache)", "unchanged (cached)"):
        started = time.perf_counter()
        report = check_source(args.root, params.validate_, out)
        timings.append((run, time.perf_counter() - started, report))
    started = time.perf_counter()
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "--params",
            str(ROOT / "params.yaml"),
            "check",
            str(args.root),
            "--out",
            str(out),
        ],
        capture_output=True,
    )
    cli_seconds = time.perf_counter() - started
    table = Table(
        title=f"transferops check, {images:,} Fashion-MNIST PNGs "
        f"({platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')})"
    )
    for column in ("run", "seconds", "images/s", "problems"):
        table.add_column(column, justify="right")
    for run, seconds, report in timings:
        table.add_row(run, f"{seconds:.1f}", f"{images / seconds:,.0f}", str(len(report.problems)))
    table.add_row(
        "CLI process, unchanged (imports included)",
        f"{cli_seconds:.1f}",
        f"{images / cli_seconds:,.0f}",
        f"exit {cli.returncode}",
    )
    Console().print(table)
    for problem in timings[0][2].problems[:10]:
        print(f"  {problem.check}: {problem.detail} ({len(problem.files)} files)")


if __name__ == "__main__":
    main()
