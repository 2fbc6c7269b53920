"""Is the freeze-strategy selector any good? Compare it with an oracle on a task suite.

For every task: profile it (features, LogME, LEEP, k-NN, BatchNorm distance)
and let the selector decide, exactly as the pipeline does; then train every
strategy (linear_probe, top_blocks, most_blocks, full) at every learning rate
of a small grid with the real engine (LP-FT, cached frozen prefix). The oracle
is the cell with the best validation accuracy, scored on test; the selector's
run is its strategy at the default learning rate. Reported per task: oracle
and selected test accuracy, regret (points), and the compute of profiling +
the selected run against the whole grid. Baselines: always ``full``, always
``linear_probe``, and a rule on size alone.

Suite (all offline): Fashion-MNIST with 100, 1,000 and 10,000 labels (test
2,000 images of the official test set), scikit-learn's 8x8 digits (far from
ImageNet), and crops of scikit-image's sample photographs (close to it); add
any ImageFolder with ``--imagefolder PATH``.

    .venv/bin/python benchmarks/strategy_oracle.py            # the whole suite
    .venv/bin/python benchmarks/strategy_oracle.py --tasks digits photos
    .venv/bin/python benchmarks/strategy_oracle.py --imagefolder ~/my-images

Per-task results are kept in ``--out`` (one JSON each) and reused unless
``--fresh``: the table can be rebuilt without retraining.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from pipelines.backbones import build_transform, data_config_for, load_backbone
from pipelines.classifier import build_classifier
from pipelines.config import load_params
from pipelines.datasets import ArrayImages, load_fashion_mnist
from pipelines.features import extract_features, loader_for
from pipelines.finetune import fine_tune, stage_sequence
from pipelines.profile import measure
from pipelines.runtime import configure_runtime, select_device, set_threads
from pipelines.stage import add_override_option
from pipelines.strategy import (
    STRATEGIES,
    decide,
    learning_rates,
    size_class,
    trainable_stages,
)
from pipelines.train import finetune_config, fit_linear_probe, train_transform

ROOT = Path(__file__).resolve().parents[1]  # defaults for --params and --out
log = logging.getLogger("strategy_oracle")
LR_GRID = (1e-3, 3e-3, 1e-2)  # fine-tuning (classifier) lr; the probe uses the same grid
SIZE_ONLY = {"small": "linear_probe", "medium": "top_blocks", "large": "full"}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Task:
    name: str
    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    note: str


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    )


def fashion_mnist(per_class: int, seed: int) -> Task:
    images, labels = load_fashion_mnist(FASHION_MNIST, "train")
    test_images, test_labels = load_fashion_mnist(FASHION_MNIST, "t10k")
    rng = np.random.default_rng(seed)
    val = stratified(labels, 50, rng)
    rest = np.setdiff1d(np.arange(len(labels)), val)
    train = rest[stratified(labels[rest], per_class, rng)]
    test = stratified(test_labels, 200, rng)
    return Task(
        f"fmnist-{per_class * 10}",
        (images[train], labels[train]),
        (images[val], labels[val]),
        (test_images[test], test_labels[test]),
        f"Fashion-MNIST, {per_class * 10} labels; val 500 (train part), test 2,000 (t10k)",
    )


def digits(seed: int) -> Task:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.kron(data.images, np.ones((4, 4))) * (255 / 16)  # 8x8 -> 32x32
    images, labels = images.round().astype(np.uint8), data.target
    order = np.random.default_rng(seed).permutation(len(labels))
    train, val, test = order[:1000], order[1000:1300], order[1300:]
    return Task(
        "digits",
        (images[train], labels[train]),
        (images[val], labels[val]),
        (images[test], labels[test]),
        "scikit-learn 8x8 digits, 16 grey levels, upscaled: far from ImageNet",
    )


PHOTOS = (
    "astronaut",
    "brick",
    "cat",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "immunohistochemistry",
    "rocket",
    "moon",
)


def photos(seed: int, side: int = 64) -> Task:
    """Which photograph does a crop come from? Train, val and test crops come from
    disjoint horizontal bands (top 60%, next 20%, last 20%), so no pixel is shared."""
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    bands = {"train": (0.0, 0.6, 100), "val": (0.6, 0.8, 30), "test": (0.8, 1.0, 100)}
    parts: dict[str, tuple[list, list]] = {split: ([], []) for split in bands}
    for label, name in enumerate(PHOTOS):
        photo = np.asarray(getattr(skimage.data, name)())
        photo = np.stack([photo] * 3, -1) if photo.ndim == 2 else photo[..., :3]
        height, width = photo.shape[:2]
        for split, (top, bottom, count) in bands.items():
            y0, y1 = int(top * height), int(bottom * height)
            for _ in range(count):
                crop = int(rng.uniform(0.12, 0.2) * min(height, width))
                crop = min(crop, y1 - y0)
                y = rng.integers(y0, y1 - crop + 1)
                x = rng.integers(0, width - crop + 1)
                patch = Image.fromarray(photo[y : y + crop, x : x + crop]).resize((side, side))
                parts[split][0].append(np.asarray(patch))
                parts[split][1].append(label)
    arrays = {split: (np.stack(x), np.asarray(y)) for split, (x, y) in parts.items()}
    return Task(
        "photos",
        arrays["train"],
        arrays["val"],
        arrays["test"],
        "crops of 10 scikit-image sample photos (which photo?): close to ImageNet",
    )


def imagefolder(path: Path, seed: int) -> Task:
    from PIL import Image
    from sklearn.model_selection import train_test_split

    from pipelines.sources import list_source

    listing = list_source(path)
    rows = listing.rows[listing.rows["problem"].isna()]
    classes = sorted(rows["label"].unique())
    images = np.stack(
        [
            np.asarray(Image.open(listing.root / p).convert("RGB").resize((64, 64)))
            for p in rows["path"]
        ]
    )
    labels = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    index = np.arange(len(labels))
    train, rest = train_test_split(index, test_size=0.4, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
    return Task(
        Path(path).name,
        (images[train], labels[train]),
        (images[val], labels[val]),
        (images[test], labels[test]),
        f"ImageFolder {path}, 60/20/20 split",
    )


def suite(names: list[str], folders: list[Path], seed: int) -> list[Task]:
    makers = {
        "fmnist-100": lambda: fashion_mnist(10, seed),
        "fmnist-1000": lambda: fashion_mnist(100, seed),
        "fmnist-10000": lambda: fashion_mnist(1000, seed),
        "digits": lambda: digits(seed),
        "photos": lambda: photos(seed),
    }
    unknown = set(names) - set(makers)
    if unknown:
        raise SystemExit(f"unknown task(s) {sorted(unknown)}; choose from {sorted(makers)}")
    return [makers[n]() for n in names] + [imagefolder(f, seed) for f in folders]


class Runner:
    """Everything one task's grid needs: datasets, cached features, timings."""

    def __init__(self, task: Task, params, device: str) -> None:
        self.task, self.params, self.device = task, params, device
        self.backbone = load_backbone(params.model.backbone, params.model.weights)
        config = data_config_for(self.backbone, params.model.input_side(device))
        self.eval_transform = build_transform(config)
        self.train_images = ArrayImages(*task.train, train_transform(config, params.train))
        self.val_images = ArrayImages(*task.val, self.eval_transform)
        self.test_images = ArrayImages(*task.test, self.eval_transform)
        self.classes = int(max(task.train[1].max(), task.val[1].max(), task.test[1].max()) + 1)
        self.stages = [name for name, _ in stage_sequence(self.backbone.model)]

    def features(self, images) -> tuple[np.ndarray, np.ndarray]:
        loader = loader_for(images, self.params.features.batch_size, self.device)
        return extract_features(self.backbone, loader, self.device), np.asarray(images.targets)

    def profile(self) -> tuple[dict, float, float]:
        """Profile numbers, seconds for features (train+val), seconds for the metrics."""
        start = time.perf_counter()
        self.train_features = self.features(ArrayImages(*self.task.train, self.eval_transform))
        self.val_features = self.features(self.val_images)
        features_seconds = time.perf_counter() - start
        start = time.perf_counter()
        sample = np.random.default_rng(0).permutation(len(self.task.train[1]))
        sample = sample[: self.params.profile.bn_images]
        bn_images = ArrayImages(
            self.task.train[0][sample], self.task.train[1][sample], self.eval_transform
        )
        numbers = measure(
            self.backbone,
            self.train_features,
            self.val_features,
            loader_for(bn_images, self.params.features.batch_size, self.device),
            self.classes,
            self.device,
            self.params.model.input_side(self.device),
        )
        return numbers, features_seconds, time.perf_counter() - start

    def probe(self, lr: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        cfg = self.params.train
        weight, bias, best = fit_linear_probe(
            *self.train_features,
            *self.val_features,
            num_classes=self.classes,
            epochs=cfg.probe_epochs,
            lr=lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            seed=self.params.seed,
        )
        return weight, bias, best["val_accuracy"]

    def cell(self, strategy: str, lr: float) -> dict:
        """Train one (strategy, lr) cell; val and test accuracy, seconds of training."""
        cfg = self.params.train
        start = time.perf_counter()
        weight, bias, val = self.probe(lr if strategy == "linear_probe" else cfg.lr)
        model = build_classifier(
            self.backbone.model, self.backbone.name, self.classes, weight, bias
        )
        epochs = 0
        if strategy != "linear_probe":
            trainable = trainable_stages(strategy, self.stages)
            rates = learning_rates(trainable, lr, self.params.strategy.layer_decay)
            config = finetune_config(
                self.params, trainable, rates, len(self.train_images), self.device
            )
            epochs = config.epochs
            result = fine_tune(model, self.train_images, self.val_images, config)
            val = result.best_val_accuracy
        seconds = time.perf_counter() - start
        return {
            "strategy": strategy,
            "lr": lr,
            "epochs": epochs,
            "val": val,
            "test": self.test_accuracy(model),
            "seconds": seconds,
        }

    @torch.inference_mode()
    def test_accuracy(self, model: torch.nn.Module) -> float:
        model.to(self.device).eval()
        loader = loader_for(self.test_images, self.params.features.batch_size, self.device)
        correct = 0
        for images, labels in loader:
            correct += int((model(images.to(self.device)).argmax(1).cpu() == labels).sum())
        return correct / len(self.test_images)


def run_task(task: Task, params, device: str) -> dict:
    runner = Runner(task, params, device)
    numbers, features_seconds, metric_seconds = runner.profile()
    decision = decide(numbers, runner.stages, params.strategy, params.train)
    cells = []
    for strategy in STRATEGIES:
        for lr in LR_GRID:
            cells.append(runner.cell(strategy, lr))
            log.info("%s %s lr=%g: %s", task.name, strategy, lr, cells[-1])
    return {
        "task": task.name,
        "note": task.note,
        "sizes": {s: len(getattr(task, s)[1]) for s in ("train", "val", "test")},
        "numbers": numbers,
        "decision": decision.strategy,
        "size_class": size_class(numbers["per_class_min"], params.strategy),
        "features_seconds": features_seconds,
        "metric_seconds": metric_seconds,
        "cells": cells,
    }


def score(result: dict, params) -> dict:
    """Oracle, selected and baselines' test accuracy, regret, compute share.

    The decision is re-made from the stored profile numbers with ``params``, so
    other thresholds can be scored without retraining (the grid covers every
    strategy at every learning rate)."""
    cells = result["cells"]
    numbers = result["numbers"]
    decision = decide(numbers, list(numbers["bn_distance"]), params.strategy, params.train)
    result = result | {
        "decision": decision.strategy,
        "size_class": size_class(numbers["per_class_min"], params.strategy),
    }
    oracle = max(cells, key=lambda c: c["val"])

    def at_default(strategy: str) -> dict:
        lr = params.train.lr if strategy == "linear_probe" else params.train.finetune_lr
        return next(c for c in cells if c["strategy"] == strategy and c["lr"] == lr)

    selected = at_default(result["decision"])
    grid_seconds = result["features_seconds"] + sum(c["seconds"] for c in cells)
    selected_seconds = result["features_seconds"] + result["metric_seconds"] + selected["seconds"]
    regrets = {
        name: 100 * (oracle["test"] - at_default(strategy)["test"])
        for name, strategy in {
            "selector": result["decision"],
            "always_full": "full",
            "always_linear_probe": "linear_probe",
            "size_only": SIZE_ONLY[result["size_class"]],
        }.items()
    }
    return {
        "task": result["task"],
        "oracle": f"{oracle['strategy']} @ {oracle['lr']:g}",
        "oracle_test": oracle["test"],
        "selected": result["decision"],
        "selected_test": selected["test"],
        "regret": regrets,
        "cost_share": selected_seconds / grid_seconds,
        "grid_seconds": grid_seconds,
        "selected_seconds": selected_seconds,
    }


def render(scores: list[dict], console: Console) -> None:
    table = Table(title="Freeze-strategy selector against the oracle (test accuracy)")
    for column in (
        "task",
        "oracle (val-best cell)",
        "oracle acc",
        "selected",
        "selected acc",
        "regret (pts)",
        "cost: profile+selected / grid",
    ):
        table.add_column(column)
    for s in scores:
        table.add_row(
            s["task"],
            s["oracle"],
            f"{s['oracle_test']:.3f}",
            s["selected"],
            f"{s['selected_test']:.3f}",
            f"{s['regret']['selector']:.1f}",
            f"{s['selected_seconds']:.0f} s / {s['grid_seconds']:.0f} s "
            f"= {100 * s['cost_share']:.1f}%",
        )
    console.print(table)
    summary = Table(title="Regret in accuracy points: selector against baselines")
    for column in ("policy", "mean", "worst"):
        summary.add_column(column)
    for policy in ("selector", "always_full", "always_linear_probe", "size_only"):
        values = [s["regret"][policy] for s in scores]
        summary.add_row(policy, f"{np.mean(values):.2f}", f"{np.max(values):.2f}")
    console.print(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks",
        nargs="*",
        default=["fmnist-100", "fmnist-1000", "digits", "photos", "fmnist-10000"],
        help="built-in tasks to run (default: all five)",
    )
    parser.add_argument("--imagefolder", type=Path, action="append", default=[])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "oracle")
    parser.add_argument("--fresh", action="store_true", help="retrain tasks already in --out")
    add_override_option(parser)  # -S strategy.similar_knn=0.7 re-scores stored runs
    args = parser.parse_args(argv)
    configure_runtime()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = load_params(args.params, args.overrides)
    set_threads(params.threads)
    device = select_device(params.device)
    args.out.mkdir(parents=True, exist_ok=True)
    scores = []
    for task in suite(args.tasks, args.imagefolder, params.seed):
        path = args.out / f"{task.name}.json"
        if args.fresh or not path.is_file():
            path.write_text(json.dumps(run_task(task, params, device), indent=2, default=float))
        scores.append(score(json.loads(path.read_text()), params))
    (args.out / "scores.json").write_text(json.dumps(scores, indent=2))
    render(scores, Console(width=170))
    return 0


if __name__ == "__main__":
    sys.exit(main())
