"""Channels-last against the default (NCHW) memory layout, on the backbone the project trains.

``transferops.runtime.place_model`` puts every model channels-last, on CPU as
on CUDA. This measures why: images per second through the pretrained Lite0,
feature extraction (forward, inference mode) and full fine-tuning (forward,
backward and an AdamW step), at the sides the project trains at, with each
layout in the same process on the same seeded batch.

    .venv/bin/python benchmarks/memory_format.py [--device cpu] [--sides 32 64 96] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from rich.console import Console
from rich.table import Table

from transferops.models.backbones import load_backbone
from transferops.runtime import autocast, configure_runtime, select_device, set_threads

LAYOUTS = {"NCHW": torch.contiguous_format, "channels-last": torch.channels_last}


def images_per_second(step, batch: torch.Tensor, seconds: float) -> float:
    """``step(batch)`` repeated for at least ``seconds`` after two warm-up steps."""
    for _ in range(2):
        step(batch)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step(batch)
        done += 1
    if batch.is_cuda:
        torch.cuda.synchronize()
    return done * len(batch) / (time.perf_counter() - started)


def measure(device: str, side: int, batch_size: int, layout: str, seconds: float) -> dict:
    model = load_backbone("tf_efficientnet_lite0").model
    model.to(device, memory_format=LAYOUTS[layout])
    batch = torch.randn(batch_size, 3, side, side, generator=torch.Generator().manual_seed(0))
    batch = batch.to(device).contiguous(memory_format=LAYOUTS[layout])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def features(x: torch.Tensor) -> None:
        with torch.inference_mode(), autocast(device):
            model.forward_features(x)

    def train_step(x: torch.Tensor) -> None:
        with autocast(device):
            loss = model(x).float().logsumexp(1).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.eval()
    extract = images_per_second(features, batch, seconds)
    model.train()
    train = images_per_second(train_step, batch, seconds)
    return {"side": side, "layout": layout, "features_per_s": extract, "train_per_s": train}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = every core")
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    configure_runtime()
    if args.threads:
        set_threads(args.threads)
    device = select_device(args.device)
    rows = [
        measure(device, side, args.batch, layout, args.seconds)
        for side in args.sides
        for layout in LAYOUTS
    ]
    table = Table(
        title=f"Lite0 on {device}, batch {args.batch}, {torch.get_num_threads()} torch threads"
    )
    for column in ("side", "layout", "features img/s", "fine-tune img/s", "x NCHW"):
        table.add_column(column, justify="right")
    for row in rows:
        base = next(r for r in rows if r["side"] == row["side"] and r["layout"] == "NCHW")
        speedup = f"{row['features_per_s'] / base['features_per_s']:.1f} / "
        speedup += f"{row['train_per_s'] / base['train_per_s']:.1f}"
        table.add_row(
            str(row["side"]),
            row["layout"],
            f"{row['features_per_s']:.0f}",
            f"{row['train_per_s']:.0f}",
            speedup,
        )
    Console().print(table)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
