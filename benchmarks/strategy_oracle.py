"""Is the freeze-strategy selector any good out of sample? Oracle, baselines, held-out fits.

For every task of the suite (``benchmarks/tasks.py`` builds 11 offline tasks of
different domain, size, resolution and colour; the recorded results in
``benchmarks/results/oracle`` hold 9 of them: fmnist-1000 and fmnist-10000,
whose grids take hours on 2 CPUs, were not run):

1. profile it exactly as the pipeline does (features, LogME, LEEP, k-NN,
   BatchNorm distance) and time that;
2. the grid a user would run instead: every strategy (top_blocks,
   most_blocks, full) at every learning rate of ``LR_GRID``, full length,
   no race, no early stopping, plus the linear probe; the oracle is the cell
   with the best validation accuracy, scored on test;
3. the default recipe for each strategy, as ``dvc repro`` would train it
   (probe, learning-rate race, early stopping: ``transferops/models/finetune.py``).

A decision rule picks a strategy from the profile numbers; its result is the
recipe run of that strategy, its regret the oracle's test accuracy minus
that, its cost the profile plus that run against the whole grid (CPU
seconds of this process, all threads). Rules are fitted (thresholds by
exhaustive search, minimising mean regret) on the tasks they are scored on
(in sample) and, with ``--loo``, on every task but the one scored
(leave-one-task-out, held out). Baselines: always ``full``, always the probe,
a rule on size alone (its thresholds fitted the same way).

    .venv/bin/python benchmarks/strategy_oracle.py --loo           # ~3 h on 2 vCPUs, then cached
    .venv/bin/python benchmarks/strategy_oracle.py --tasks icons letters
    .venv/bin/python benchmarks/strategy_oracle.py --imagefolder ~/my-images --loo

Per-task runs are kept in ``--out`` (one JSON each) and reused unless
``--fresh``; scoring and fitting never retrain. Every task runs at
``--side`` px (64 by default: the grid costs 12 fine-tuning runs per task,
and 64 px keeps the suite within a few CPU hours; benchmarks/resolution.py
measures the side itself).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ siblings

from selector_fit import FAMILIES, render_tables, score_policies
from tasks import BUILDERS, Task, TaskUnavailable, build

from transferops.commands import add_override_option
from transferops.config import load_params
from transferops.data.datasets import ArrayImages
from transferops.models.backbones import build_transform, data_config_for, load_backbone
from transferops.models.classifier import build_classifier
from transferops.models.features import extract_features
from transferops.models.finetune import fine_tune
from transferops.models.freezing import stage_sequence
from transferops.models.probe import fit_linear_probe
from transferops.models.profiling import measure
from transferops.models.strategy import STRATEGIES, learning_rates, trainable_stages
from transferops.models.training import finetune_config, finetune_summary, train_transform
from transferops.runtime import configure_runtime, loader_for, select_device, set_threads

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("strategy_oracle")
LR_GRID = (1e-4, 3e-4, 1e-3, 3e-3)  # fine-tuning (classifier) lr; stages below x layer_decay
PROBE_LRS = (1e-3, 3e-3, 1e-2)  # the linear probe's own grid (cheap: cached features)
FINE_TUNING = tuple(s for s in STRATEGIES if s != "linear_probe")


class Runner:
    """One task at one side: datasets, the probe's cached features, CPU timings."""

    def __init__(self, task: Task, params, device: str, side: int) -> None:
        self.task, self.params, self.device, self.side = task, params, device, side
        self.backbone = load_backbone(params.model.backbone, params.model.weights)
        config = data_config_for(self.backbone, side)
        self.eval_transform = build_transform(config)
        self.parts = {split: task.part(split) for split in ("train", "val", "test")}
        self.train_images = ArrayImages(*self.parts["train"], train_transform(config, params.train))
        self.val_images = ArrayImages(*self.parts["val"], self.eval_transform)
        self.test_images = ArrayImages(*self.parts["test"], self.eval_transform)
        self.classes = len(task.classes)
        self.stages = [name for name, _ in stage_sequence(self.backbone.model)]

    def features(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        images = ArrayImages(*self.parts[split], self.eval_transform)
        loader = loader_for(images, self.params.features.batch_size, self.device)
        return extract_features(self.backbone, loader, self.device), np.asarray(images.targets)

    def profile(self) -> tuple[dict, float, float]:
        """Profile numbers, CPU seconds for features (train + val), CPU seconds for metrics."""
        start = time.process_time()
        self.train_features, self.val_features = self.features("train"), self.features("val")
        features_seconds = time.process_time() - start
        start = time.process_time()
        rng = np.random.default_rng(self.params.seed)
        sample = rng.permutation(len(self.parts["train"][1]))[: self.params.profile.bn_images]
        images, labels = self.parts["train"]
        bn_images = ArrayImages([images[i] for i in sample], labels[sample], self.eval_transform)
        numbers = measure(
            self.backbone,
            self.train_features,
            self.val_features,
            loader_for(bn_images, self.params.features.batch_size, self.device),
            self.classes,
            self.device,
            self.side,
        )
        return numbers, features_seconds, time.process_time() - start

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

    def train(self, strategy: str, lr: float | None) -> dict:
        """One run: ``lr`` set = a grid cell (full length, one rate); None = the default recipe."""
        params = self.params
        start = time.process_time()
        probe_lr = lr if strategy == "linear_probe" and lr is not None else params.train.lr
        weight, bias, val = self.probe(probe_lr)
        model = build_classifier(
            self.backbone.model, self.backbone.name, self.classes, weight, bias
        )
        record = {"strategy": strategy, "lr": lr, "probe_val": val}
        if strategy != "linear_probe":
            trainable = trainable_stages(strategy, self.stages)
            head_lr = params.train.finetune_lr if lr is None else lr
            rates = learning_rates(trainable, head_lr, params.strategy.layer_decay)
            config = finetune_config(params, trainable, rates, len(self.train_images), self.device)
            if lr is not None:  # what a grid search runs: one rate, every planned epoch
                config = dataclasses.replace(config, lr_scales=(1.0,), patience=0)
            result = fine_tune(model, self.train_images, self.val_images, config)
            val = result.best_val_accuracy
            record |= {"epochs": config.epochs, "finetune": finetune_summary(result, rates)}
        return record | {
            "val": val,
            "test": self.test_accuracy(model),
            "seconds": time.process_time() - start,
        }

    @torch.inference_mode()
    def test_accuracy(self, model: torch.nn.Module) -> float:
        model.to(self.device).eval()
        loader = loader_for(self.test_images, self.params.features.batch_size, self.device)
        correct = sum(
            int((model(images.to(self.device)).argmax(1).cpu() == labels).sum())
            for images, labels in loader
        )
        return correct / len(self.test_images)


def run_task(task: Task, params, device: str, side: int, saved: dict | None) -> dict:
    """Profile, grid and recipe runs of one task; parts already in ``saved`` are kept."""
    runner = Runner(task, params, device, side)
    numbers, features_seconds, metric_seconds = runner.profile()
    result = saved or {
        "task": task.name,
        "note": task.note,
        "source": task.source,
        "sizes": task.sizes(),
        "classes": len(task.classes),
        "native_side": task.native_side(),
        "side": side,
        "numbers": numbers,
        "features_seconds": features_seconds,
        "metric_seconds": metric_seconds,
        "grid": [],
        "recipe": {},
    }
    done = {(c["strategy"], c["lr"]) for c in result["grid"]}
    for strategy in ("linear_probe", *FINE_TUNING):
        for lr in PROBE_LRS if strategy == "linear_probe" else LR_GRID:
            if (strategy, lr) not in done:
                result["grid"].append(runner.train(strategy, lr))
                log.info("%s grid %s lr=%s: %s", task.name, strategy, lr, result["grid"][-1])
    for strategy in STRATEGIES:
        if strategy not in result["recipe"]:
            result["recipe"][strategy] = runner.train(strategy, None)
            log.info("%s recipe %s: %s", task.name, strategy, result["recipe"][strategy])
    return result


def imagefolder_task(path: Path, seed: int) -> Task:
    """Any ImageFolder or manifest as a task (given splits kept, else 60/20/20)."""
    from sklearn.model_selection import train_test_split
    from tasks import _task

    from transferops.data.pictures import open_rgb
    from transferops.data.sources import list_source

    rows = list_source(path).rows
    rows = rows[rows["problem"].isna()].reset_index(drop=True)
    classes = sorted(rows["label"].unique())
    labels = rows["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    splits = rows["split"].to_numpy(dtype=object)
    if not set(splits) >= {"train", "val", "test"}:
        index = np.arange(len(rows))
        train, rest = train_test_split(index, test_size=0.4, stratify=labels, random_state=seed)
        val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
        splits[train], splits[val], splits[test] = "train", "val", "test"
    parts: dict[str, list] = {"train": [], "val": [], "test": []}
    for file, label, split in zip(rows["file"], labels, splits, strict=True):
        image = open_rgb(Path(file))
        parts[split].append((image, int(label), image.size))
    return _task(Path(path).name, f"ImageFolder {path}", str(path), classes, parts)


def start(args: argparse.Namespace) -> tuple:
    """A benchmark's common start: runtime, logging, params (with ``-S``), threads,
    device and the output folder; (params, device)."""
    configure_runtime()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    params = load_params(args.params, args.overrides)
    set_threads(params.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return params, select_device(params.device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(BUILDERS), help="suite tasks to run")
    parser.add_argument("--imagefolder", type=Path, action="append", default=[])
    parser.add_argument("--loo", action="store_true", help="also fit each rule leave-one-out")
    parser.add_argument("--side", type=int, default=64, help="input side for every task (px)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "oracle")
    parser.add_argument("--fresh", action="store_true", help="retrain tasks already in --out")
    parser.add_argument(
        "--fresh-recipe", action="store_true", help="re-run only the default recipe's runs"
    )
    parser.add_argument("--score-only", action="store_true", help="no training: stored runs")
    add_override_option(parser)
    args = parser.parse_args(argv)
    params, device = start(args)
    results = []
    names = [*args.tasks, *[str(f) for f in args.imagefolder]]
    for name in names:
        path = args.out / f"{Path(name).name}.json"
        saved = json.loads(path.read_text()) if path.is_file() and not args.fresh else None
        if saved and args.fresh_recipe:
            saved["recipe"] = {}
        complete = saved and len(saved["grid"]) == len(PROBE_LRS) + len(FINE_TUNING) * len(LR_GRID)
        if not args.score_only and not (complete and len(saved["recipe"]) == len(STRATEGIES)):
            try:
                task = (
                    imagefolder_task(Path(name), params.seed)
                    if name in map(str, args.imagefolder)
                    else build(name, params.seed)
                )
            except TaskUnavailable as err:
                log.warning("skipping %s: %s", name, err)
                continue
            saved = run_task(task, params, device, args.side, saved)
            path.write_text(json.dumps(saved, indent=1, default=float))
        if saved:
            results.append(saved)
    scores = score_policies(results, FAMILIES, loo=args.loo)
    (args.out / "scores.json").write_text(json.dumps(scores, indent=1, default=float))
    render_tables(scores, Console(width=170))
    return 0


if __name__ == "__main__":
    sys.exit(main())
