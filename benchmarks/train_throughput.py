"""Training throughput: the engine against a bare timm loop, and what caching saves.

1. Images per second of one fine-tuning epoch (the second, warm) for each
   strategy that trains the backbone, through the engine (``fine_tune``,
   prefix recomputed so both do the same arithmetic; the training steps of
   the epoch, not its validation pass or checkpoint write) and through a bare
   loop: the same timm model, frozen stages ``requires_grad=False`` with
   BatchNorm in eval, one AdamW over the engine's per-stage groups, forward,
   loss, backward, step, in the engine's memory layout (channels-last, on CPU
   too: ``transferops.runtime.place_model``), so the two differ by the
   engine's own work only. Overhead = 1 - engine / bare.
2. Epoch time of the linear probe on cached features against the same probe
   recomputing the frozen backbone each epoch (both timed: a probe epoch that
   runs the backbone on every batch, and ten cached epochs), and of
   ``top_blocks`` on the cached frozen prefix against recomputing the prefix.

    .venv/bin/python benchmarks/train_throughput.py [--images 1024] [--side 64]

On CUDA (``--device cuda``) it runs the same comparison with bf16 autocast at
the model's native resolution (``--side 0``). ``--synthetic``
uses seeded random images where Fashion-MNIST is absent (the GPU machine):
throughput does not depend on what the pixels show. ``--json`` also writes the rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from transferops.data.datasets import ArrayImages, load_fashion_mnist
from transferops.models.backbones import (
    build_transform,
    data_config_for,
    load_backbone,
    pooled_features,
)
from transferops.models.classifier import build_classifier
from transferops.models.features import extract_features
from transferops.models.finetune import FineTuneConfig, fine_tune
from transferops.models.freezing import parameter_groups, set_trainable, stage_sequence
from transferops.models.probe import fit_linear_probe
from transferops.models.strategy import learning_rates, trainable_stages
from transferops.runtime import autocast, configure_runtime, loader_for, select_device, to_device

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
STRATEGIES = ("top_blocks", "most_blocks", "full")


def fresh_model(backbone, classes: int = 10) -> torch.nn.Module:
    weight = torch.randn(classes, backbone.num_features, generator=torch.Generator().manual_seed(0))
    return build_classifier(backbone.model, backbone.name, classes, weight * 0.01, torch.zeros(10))


def bare_loop(model, data, strategy: str, batch_size: int, device: str) -> float:
    """One epoch of the plainest correct loop; returns images per second."""
    trainable, lrs = plan(model, strategy)
    model.to(device).train()
    model.to(memory_format=torch.channels_last)  # the engine's layout on every device
    set_trainable(model, trainable)
    optimizer = torch.optim.AdamW(parameter_groups(model, lrs, weight_decay=0.01))
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=8 if device == "cuda" else 0,
        pin_memory=device == "cuda",
    )
    start, seen = time.perf_counter(), 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        images = images.to(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    if device == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def plan(model, strategy: str) -> tuple[list[str], dict[str, float]]:
    """Trainable stages and their layer-wise rates, as the strategy stage would record them."""
    trainable = trainable_stages(strategy, [name for name, _ in stage_sequence(model)])
    return trainable, learning_rates(trainable, 1e-3, 0.7)


def engine_epoch(model, train, val, strategy, batch_size, device, cache_mb, tmp) -> dict:
    trainable, lrs = plan(model, strategy)
    cfg = FineTuneConfig(
        trainable=trainable,
        learning_rates=lrs,
        epochs=2,
        batch_size=batch_size,
        cache_mb=cache_mb,
        cache_views=1,
        device=device,
    )
    result = fine_tune(model, train, val, cfg, checkpoint_dir=tmp, fingerprint=str(time.time()))
    # Epoch 2 (warm); its wall time covers training steps, validation and the checkpoint.
    record = result.history[-1]
    return {"train_seconds": record["train_seconds"], "cache_seconds": result.cache_seconds}


def probe_epoch_recomputing(backbone, data, batch_size: int, device: str) -> float:
    """Seconds of one linear-probe epoch with no feature cache, timed.

    Each batch goes through the frozen backbone (eval, no grad, autocast as
    in feature extraction), then one AdamW step on the linear head: what the
    cached probe would cost every epoch without its cache.
    """
    model = backbone.model.to(device).eval().to(memory_format=torch.channels_last)
    head = torch.nn.Linear(backbone.num_features, 10).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
    loader = loader_for(data, batch_size, device, shuffle=True)
    start = time.perf_counter()
    for images, targets in loader:
        with torch.no_grad(), autocast(device):
            features = pooled_features(model, to_device(images, device)).float()
        loss = torch.nn.functional.cross_entropy(head(features), to_device(targets, device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--side", type=int, default=64, help="input px; 0 = model's native")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/transferops-throughput"))
    parser.add_argument("--synthetic", action="store_true", help="random images, no dataset")
    parser.add_argument("--json", type=Path, help="write the measured rows here too")
    args = parser.parse_args(argv)
    configure_runtime()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    n = args.images - args.images % args.batch_size
    if args.synthetic:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (n + 64, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n + 64)
    else:
        images, labels = load_fashion_mnist(FASHION_MNIST, "train")
    backbone = load_backbone("tf_efficientnet_lite0")
    config = data_config_for(backbone, args.side or None)
    train = ArrayImages(images[:n], labels[:n], build_transform(config, training=True))
    val = ArrayImages(images[n : n + 64], labels[n : n + 64], build_transform(config))
    console = Console()
    side = config["input_size"][-1]

    rows: dict = {"device": device, "images": n, "side": side, "batch_size": args.batch_size}
    table = Table(title=f"Fine-tuning throughput, {n} images at {side} px, {device}")
    for column in ("strategy", "bare timm loop img/s", "engine img/s", "overhead"):
        table.add_column(column)
    for strategy in STRATEGIES:
        bare_loop(fresh_model(backbone), train, strategy, args.batch_size, device)  # warm-up
        bare = bare_loop(fresh_model(backbone), train, strategy, args.batch_size, device)
        timing = engine_epoch(
            fresh_model(backbone),
            train,
            val,
            strategy,
            args.batch_size,
            device,
            0,
            args.out / strategy,
        )
        engine = n / timing["train_seconds"]
        rows[strategy] = {"bare_img_s": bare, "engine_img_s": engine}
        table.add_row(
            strategy, f"{bare:.0f}", f"{engine:.0f}", f"{100 * (1 - engine / bare):+.1f}%"
        )
    console.print(table)

    cache = Table(title="Epoch time: cached frozen work against recomputing it")
    for column in ("run", "recompute s/epoch", "cached s/epoch", "speed-up", "one-time cache s"):
        cache.add_column(column)
    eval_train = ArrayImages(images[:n], labels[:n], build_transform(config))
    start = time.perf_counter()
    features = extract_features(backbone, loader_for(eval_train, args.batch_size, device), device)
    val_features = extract_features(backbone, loader_for(val, args.batch_size, device), device)
    feature_seconds = time.perf_counter() - start
    probe = dict(num_classes=10, lr=1e-3, weight_decay=0.01, batch_size=args.batch_size, seed=0)
    start = time.perf_counter()
    fit_linear_probe(
        features,
        np.asarray(train.targets),
        val_features,
        np.array(labels[n : n + 64]),
        epochs=10,
        **probe,
    )
    cached_probe = (time.perf_counter() - start) / 10
    probe_epoch_recomputing(backbone, eval_train, args.batch_size, device)  # warm-up
    recompute_probe = probe_epoch_recomputing(backbone, eval_train, args.batch_size, device)
    rows["probe_s_per_epoch"] = {"recompute": recompute_probe, "cached": cached_probe}
    cache.add_row(
        "linear probe",
        f"{recompute_probe:.3f}",
        f"{cached_probe:.4f}",
        f"{recompute_probe / cached_probe:.0f}x",
        f"{feature_seconds:.1f}",
    )
    recomputed, cached = (
        engine_epoch(
            fresh_model(backbone),
            train,
            val,
            "top_blocks",
            args.batch_size,
            device,
            cache_mb,
            args.out / name,
        )
        for cache_mb, name in ((0, "recompute"), (4096, "cached"))
    )
    cache.add_row(
        "top_blocks",
        f"{recomputed['train_seconds']:.2f}",
        f"{cached['train_seconds']:.2f}",
        f"{recomputed['train_seconds'] / cached['train_seconds']:.1f}x",
        f"{cached['cache_seconds']:.1f}",
    )
    rows["top_blocks_s_per_epoch"] = {
        "recompute": recomputed["train_seconds"],
        "cached": cached["train_seconds"],
    }
    console.print(cache)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
