"""The fine-tuning engine: phase 2 of LP-FT for exactly the stages a decision names.

Pure training machinery, no files of the pipeline: :func:`fine_tune` takes a
timm model whose classifier already holds the linear probe (phase 1 of LP-FT,
Kumar et al. 2022), the datasets and a :class:`FineTuneConfig`, and trains.

- What trains is set by stage (``transferops/models/freezing.py``); frozen stages and
  their BatchNorm statistics never move; each trainable stage is an optimizer
  group at its recorded rate, all scaled by one warm-up + cosine schedule.
- Frozen work is done once (``transferops/models/prefixcache.py``).
- The learning-rate race: the candidates ``lr_scales`` (multiples of the
  recorded rates) train one after the other, each from the probe, as long as
  the best so far beats the probe by less than ``race_margin`` on validation
  (a practitioner raises the rate only when fine-tuning did not help). Each
  stops early once it has gone ``patience`` validations without improving
  on its own best, but never before ``patience_from`` of its planned epochs.
  The best validation state of all of them wins, the probe included (epoch 0).
- Under ``torchrun`` it runs data-parallel (DDP; NCCL on CUDA, gloo on CPU):
  each rank trains a disjoint shard; rank 0 alone logs and checkpoints.
- A checkpoint after every epoch (weights, optimizer, scheduler, RNG states,
  the race so far) lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from transferops.models.candidates import (
    Candidate,
    FineTuneConfig,
    Race,
    World,
    _accuracy,
    _shard,
    run_candidate,
)
from transferops.models.checkpoint import CHECKPOINT, _state, load_checkpoint, restore
from transferops.models.freezing import split_model
from transferops.models.prefixcache import TrainingInputs, prepare_inputs
from transferops.runtime import place_model

log = logging.getLogger(__name__)
# What callers use: the engine, its settings and result, the checkpoint's name and reader.
__all__ = ["CHECKPOINT", "FineTuneConfig", "FitResult", "World", "fine_tune", "load_checkpoint"]


@dataclass
class FitResult:
    best_val_accuracy: float
    best_epoch: int  # of the winning candidate (0: the probe stayed best)
    epochs_run: int  # by every candidate in this call
    resumed_from: int  # epochs of the interrupted candidate already done (0: fresh)
    cached: bool  # frozen-prefix activations were cached
    cache_views: int
    cache_seconds: float
    history: list[dict] = field(default_factory=list)  # every candidate's epochs
    seen: list[int] = field(default_factory=list)  # training indices this rank used
    lr_scale: float | None = None  # the winner's (None: the probe stayed best)
    candidates: list[dict] = field(default_factory=list)
    planned_epochs: int = 0  # per candidate
    train_seconds: float = 0.0
    seconds_saved: float = 0.0  # estimated: planned epochs not run x mean epoch time
    probe_val_accuracy: float = 0.0


def fine_tune(
    model: nn.Module,
    train_data,
    val_data,
    cfg: FineTuneConfig,
    *,
    live=None,
    checkpoint_dir: Path | None = None,
    fingerprint: str = "",
    world: World | None = None,
    stop_after: int | None = None,
) -> FitResult:
    """Race the learning-rate candidates from the probe; keep the best validation state.

    Args:
        model: a timm model, classifier already initialised (LP-FT phase 1);
            trained in place.
        train_data: dataset of (augmented image tensor, label).
        val_data: dataset of (image tensor, label) with the evaluation transform.
        live: a DVCLive ``Live`` (rank 0): loss, accuracy and lr per stage each epoch.
        checkpoint_dir: where the per-epoch checkpoint lives; an existing one with
            the same ``fingerprint`` is resumed.
        stop_after: end the current candidate after this many epochs (tests
            interrupt runs with it).
    """
    world = world or World()
    _seed_everything(cfg.seed)
    _place(model, cfg.device)
    inputs = prepare_inputs(
        model,
        cfg.trainable,
        _shard(len(train_data), world, cfg.seed),
        train_data,
        val_data,
        # A view no epoch would read is a prefix pass for nothing (one epoch, one rate: one view).
        views=min(cfg.cache_views, cfg.epochs * len(cfg.lr_scales)),
        cache_mb=cfg.cache_mb,
        batch_size=cfg.batch_size,
        device=cfg.device,
    )
    initial = _state(model)
    resumed = load_checkpoint(checkpoint_dir, fingerprint)
    race, first = start_race(model, inputs, cfg, resumed, initial)
    history, seen, epochs_run, finished = [], [], 0, False
    for index in range(first, len(cfg.lr_scales)):
        if index > first and not worth_another_rate(race, cfg):
            break
        model.load_state_dict(initial)
        run = Candidate(model, inputs, cfg, index, world)
        if resumed is not None and index == first:
            restore(model, run, resumed, world)
        before = run.epoch
        run_candidate(
            model,
            run,
            inputs,
            cfg,
            race,
            world=world,
            seen=seen,
            live=live,
            checkpoint=checkpoint_dir,
            fingerprint=fingerprint,
            stop_after=stop_after,
        )
        epochs_run += run.epoch - before
        history += run.history
        finished = run.epoch >= cfg.epochs or run.stopped
        if not finished:  # interrupted on purpose (stop_after)
            break
        race.finished.append(run.summary(cfg))
    _finish(model, race, world, keep_best=finished and cfg.keep_best)
    resumed_from = resumed["epoch"] if resumed is not None else 0
    return _result(cfg, race, inputs, history, seen, epochs_run, resumed_from)


def _place(model: nn.Module, device: str) -> None:
    place_model(model, device)


def start_race(
    model: nn.Module, inputs: TrainingInputs, cfg: FineTuneConfig, resumed: dict | None, initial
) -> tuple[Race, int]:
    """The race so far from a checkpoint, or a fresh one the probe leads (epoch 0)."""
    if resumed is not None:
        log.info(
            "resuming from the checkpoint after epoch %d of learning-rate candidate %d/%d",
            resumed["epoch"],
            resumed["candidate"] + 1,
            len(cfg.lr_scales),
        )
        race = Race(
            resumed["best"], resumed["best_state"], resumed["probe_val"], resumed["finished"]
        )
        return race, resumed["candidate"]
    evaluator = split_model(model, cfg.trainable)[1] if inputs.views else model
    probe_val = _accuracy(evaluator, inputs.val_inputs, cfg.device, cfg.batch_size)
    return Race({"val_accuracy": probe_val, "epoch": 0, "candidate": -1}, initial, probe_val), 0


def worth_another_rate(race: Race, cfg: FineTuneConfig) -> bool:
    """A higher rate only while fine-tuning has not beaten the probe by ``race_margin``."""
    gain = race.best["val_accuracy"] - race.probe_val
    if gain >= cfg.race_margin:
        log.info(
            "fine-tuning beat the probe by %.3f >= train.race_margin on validation: "
            "no higher learning rate tried",
            gain,
        )
        return False
    return True


def _finish(model: nn.Module, race: Race, world: World, keep_best: bool) -> None:
    for result in race.finished:  # a later candidate may have taken the lead
        result["won"] = result["candidate"] == race.best["candidate"]
    if world.size > 1:  # BatchNorm running stats drift apart per rank: take rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    if keep_best:
        model.load_state_dict(race.best_state)
    model.eval()


def _result(
    cfg: FineTuneConfig,
    race: Race,
    inputs: TrainingInputs,
    history: list[dict],
    seen: list,
    epochs_run: int,
    resumed_from: int,
) -> FitResult:
    done = [c["epochs_run"] for c in race.finished]
    seconds = sum(c["seconds"] for c in race.finished)
    per_epoch = seconds / max(1, sum(done))
    winner = race.best["candidate"]
    return FitResult(
        best_val_accuracy=race.best["val_accuracy"],
        best_epoch=race.best["epoch"],
        epochs_run=epochs_run,
        resumed_from=resumed_from,
        cached=bool(inputs.views),
        cache_views=inputs.views,
        cache_seconds=inputs.cache_seconds,
        history=history,
        seen=seen,
        lr_scale=cfg.lr_scales[winner] if winner >= 0 else None,
        candidates=race.finished,
        planned_epochs=cfg.epochs,
        probe_val_accuracy=race.probe_val,
        train_seconds=seconds,
        seconds_saved=per_epoch * sum(cfg.epochs - d for d in done),
    )


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
