"""One learning-rate candidate's training: optimizer, schedule, epochs, validation, patience.

The fine-tuning engine (``transferops/models/finetune.py``) runs the
candidates of its race through :func:`run_candidate`, one after the other,
on the same :class:`TrainingInputs`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from transferops.models.checkpoint import (
    _state,
    save_checkpoint,
)
from transferops.models.freezing import (
    parameter_groups,
    set_trainable,
    split_model,
    unfrozen_at,
    warmup_cosine,
)
from transferops.models.prefixcache import TrainingInputs
from transferops.runtime import autocast, loader_for, to_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneConfig:
    """Phase 2 of LP-FT, as a decision record and ``params.yaml`` describe it."""

    trainable: list[str]  # stages that train, e.g. ["block5", "block6", "head", "classifier"]
    learning_rates: dict[str, float]  # per trainable stage (layer-wise decay)
    epochs: int  # planned per candidate
    batch_size: int
    weight_decay: float = 0.01
    warmup: float = 0.1
    gradual_unfreeze: bool = False
    cache_mb: int = 2048
    cache_views: int = 4
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    keep_best: bool = True  # end on the best validation state (else on the last)
    validations: int = 20  # at most this many validation passes per candidate
    # frozen: running statistics everywhere; adapt: batch statistics in trainable stages
    batchnorm: str = "frozen"
    lr_scales: tuple[float, ...] = (1.0,)  # the race's candidates, as multiples of the rates
    race_margin: float = 1.0  # the next candidate runs only while the best beats the probe by less
    patience: int = 0  # validations without a new best before a candidate stops (0: never)
    patience_from: float = 0.3  # ...and not before this fraction of its planned epochs

    def __post_init__(self) -> None:
        missing = [s for s in self.trainable if s not in self.learning_rates]
        if missing:
            raise ValueError(f"no learning rate for trainable stage(s) {missing}")
        if not self.lr_scales:
            raise ValueError("lr_scales: at least one learning-rate candidate")


@dataclass(frozen=True)
class World:
    """This process's place in a (possibly one-process) data-parallel run."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str) -> World:
        """Join the process group ``torchrun`` describes (NCCL on CUDA, gloo on CPU)."""
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
            if device == "cuda":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return cls(rank=dist.get_rank() if size > 1 else 0, size=size)


@dataclass
class Race:
    """The best state over the probe and every candidate so far, and who is done."""

    best: dict  # val_accuracy, epoch, candidate (-1: the probe)
    best_state: dict[str, torch.Tensor]
    probe_val: float
    finished: list[dict] = field(default_factory=list)


class Candidate:
    """One learning-rate candidate: optimizer, schedule, progress and patience."""

    def __init__(
        self, model: nn.Module, inputs: TrainingInputs, cfg: FineTuneConfig, index: int, world
    ) -> None:
        self.index, self.scale = index, cfg.lr_scales[index]
        self.runner = split_model(model, cfg.trainable)[1] if inputs.views else model
        set_trainable(model, cfg.trainable)  # before DDP: it registers what trains
        rates = {stage: lr * self.scale for stage, lr in cfg.learning_rates.items()}
        self.optimizer = torch.optim.AdamW(parameter_groups(model, rates, cfg.weight_decay))
        self.steps_per_epoch = max(1, len(inputs.shard) // cfg.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(self.steps_per_epoch * cfg.epochs, cfg.warmup)
        )
        self.generator = torch.Generator().manual_seed((cfg.seed * 1000 + world.rank) * 100 + index)
        self.trained = self.runner
        if world.size > 1:
            self.trained = nn.parallel.DistributedDataParallel(
                self.runner, find_unused_parameters=cfg.gradual_unfreeze
            )
        if cfg.compile:
            self.trained = torch.compile(self.trained)
        self.epoch, self.stale, self.seconds, self.stopped = 0, 0, 0.0, False
        self.own_best = -1.0  # this candidate's best validation accuracy so far
        self.history: list[dict] = []

    def summary(self, cfg: FineTuneConfig) -> dict:
        return {
            "candidate": self.index,
            "lr_scale": self.scale,
            "classifier_lr": cfg.learning_rates["classifier"] * self.scale,
            "best_val_accuracy": max(
                (h["val_accuracy"] for h in self.history if h["val_accuracy"] is not None),
                default=None,
            ),
            "epochs_run": self.epoch,
            "stopped_early": self.stopped,
            "seconds": self.seconds,
            # (epoch, validation accuracy): how the candidate went, for reviewers and tuning
            "val_curve": [
                [h["epoch"], h["val_accuracy"]]
                for h in self.history
                if h["val_accuracy"] is not None
            ],
        }


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    stop = n if n < batch_size else n - n % batch_size  # drop the ragged last batch
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def _shard(n: int, world: World, seed: int) -> torch.Tensor:
    """This rank's training indices: a seeded permutation dealt round-robin, equal sizes."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    per_rank = n // world.size
    return order[world.rank :: world.size][:per_rank].sort().values


@torch.no_grad()
def _accuracy(module: nn.Module, inputs, device: str, batch_size: int) -> float:
    """Accuracy over (cached activations, labels) or a dataset of images."""
    module.eval()
    correct = total = 0
    if isinstance(inputs, tuple):
        acts, labels = inputs
        chunks = (
            (acts[i : i + batch_size], labels[i : i + batch_size])
            for i in range(0, len(labels), batch_size)
        )
    else:
        chunks = loader_for(inputs, batch_size, device)
    for x, y in chunks:
        with autocast(device):
            logits = module(to_device(x, device))
        correct += int((logits.float().argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / total if total else 0.0


def train_epoch(
    model: nn.Module, run: Candidate, inputs: TrainingInputs, cfg: FineTuneConfig, seen: list
) -> dict:
    """One pass over this rank's shard; returns the epoch's record (no validation yet)."""
    device = cfg.device
    model.train()
    active = unfrozen_at(run.epoch, cfg.trainable, cfg.gradual_unfreeze)
    set_trainable(model, active, adapt_batchnorm=cfg.batchnorm == "adapt")
    losses, correct, count, started = [], 0, 0, time.perf_counter()
    for idx in tqdm(
        list(_batches(len(inputs.shard), cfg.batch_size, run.generator)),
        desc=f"fine-tune lr x{run.scale:g} {run.epoch + 1}/{cfg.epochs}",
        unit="batch",
        disable=None,
        leave=False,
    ):
        x, y = inputs.batch(idx, run.generator)
        seen.extend(inputs.shard[idx].tolist())
        x, y = to_device(x, device), y.to(device, non_blocking=True)
        with autocast(device):
            logits = run.trained(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.scheduler.step()
        losses.append(loss.item())
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
    return {
        "candidate": run.index,
        "epoch": run.epoch + 1,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "train_accuracy": correct / max(count, 1),
        "val_accuracy": None,
        "lr": {g["stage"]: g["lr"] for g in run.optimizer.param_groups},
        "train_seconds": time.perf_counter() - started,
    }


def _should_stop(run: Candidate, cfg: FineTuneConfig) -> bool:
    """Early stopping: ``patience`` validations without improving on its own best.

    Its own, not the race's: fine-tuning often dips below the probe before it
    climbs past it, and a rule against the probe stopped such runs early.
    """
    return (
        cfg.patience > 0
        and run.stale >= cfg.patience
        and run.epoch >= math.ceil(cfg.patience_from * cfg.epochs)
    )


def run_candidate(
    model: nn.Module,
    run: Candidate,
    inputs: TrainingInputs,
    cfg: FineTuneConfig,
    race: Race,
    *,
    world: World,
    seen: list,
    live=None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
    stop_after: int | None = None,
) -> None:
    """Train one candidate until its planned epochs end or early stopping stops it."""
    val_every = max(1, math.ceil(cfg.epochs / cfg.validations))
    last = min(cfg.epochs, stop_after) if stop_after is not None else cfg.epochs
    while run.epoch < last and not run.stopped:
        record = train_epoch(model, run, inputs, cfg, seen)
        run.epoch += 1
        run.seconds += record["train_seconds"]
        if run.epoch % val_every == 0 or run.epoch == cfg.epochs:
            record["val_accuracy"] = _accuracy(
                run.runner, inputs.val_inputs, cfg.device, cfg.batch_size
            )
            val = record["val_accuracy"]
            run.stale = 0 if val > run.own_best else run.stale + 1
            run.own_best = max(run.own_best, val)
            if val > race.best["val_accuracy"]:
                race.best = {"val_accuracy": val, "epoch": run.epoch, "candidate": run.index}
                race.best_state = _state(model)
        run.history.append(record)
        run.stopped = _should_stop(run, cfg)
        log.info(
            "lr x%g epoch %d/%d: train loss %.3f, accuracy %.3f, val %s%s",
            run.scale,
            run.epoch,
            cfg.epochs,
            record["train_loss"],
            record["train_accuracy"],
            "-" if record["val_accuracy"] is None else f"{record['val_accuracy']:.3f}",
            "; no gain for a while: stopping early" if run.stopped else "",
        )
        if live is not None and world.main:
            _log_epoch(live, record)
        save_checkpoint(checkpoint, world, model, run, race, fingerprint)


def _log_epoch(live, record: dict) -> None:
    live.log_metric("finetune/train_loss", record["train_loss"])
    live.log_metric("finetune/train_accuracy", record["train_accuracy"])
    live.log_metric("finetune/candidate", record["candidate"])
    if record["val_accuracy"] is not None:
        live.log_metric("finetune/val_accuracy", record["val_accuracy"])
    for stage, lr in record["lr"].items():
        live.log_metric(f"lr/{stage}", lr)
    live.next_step()
