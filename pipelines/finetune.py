"""The fine-tuning engine: phase 2 of LP-FT for exactly the stages a decision names.

Pure training machinery, no files of the pipeline: :func:`fine_tune` takes a
timm model whose classifier already holds the linear probe (phase 1 of LP-FT,
Kumar et al. 2022), the datasets and a :class:`FineTuneConfig`, and trains.

- What trains is set by stage (``pipelines/freezing.py``); frozen stages and
  their BatchNorm statistics never move; each trainable stage is an optimizer
  group at its recorded rate, all scaled by one warm-up + cosine schedule.
- Frozen work is done once (``pipelines/prefixcache.py``).
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
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pipelines.freezing import (
    parameter_groups,
    set_trainable,
    split_model,
    unfrozen_at,
    warmup_cosine,
)
from pipelines.prefixcache import TrainingInputs, prepare_inputs
from pipelines.runtime import autocast, loader_for, to_device

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


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


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


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
    model.to(cfg.device)
    if cfg.device == "cuda":
        model.to(memory_format=torch.channels_last)
    shard = _shard(len(train_data), world, cfg.seed)
    inputs = prepare_inputs(
        model,
        cfg.trainable,
        shard,
        train_data,
        val_data,
        views=cfg.cache_views,
        cache_mb=cfg.cache_mb,
        batch_size=cfg.batch_size,
        device=cfg.device,
    )
    initial = _state(model)
    resumed = load_checkpoint(checkpoint_dir, fingerprint)
    if resumed is not None:
        race = Race(
            resumed["best"], resumed["best_state"], resumed["probe_val"], resumed["finished"]
        )
        first, resumed_from = resumed["candidate"], resumed["epoch"]
        log.info(
            "resuming from the checkpoint after epoch %d of learning-rate candidate %d/%d",
            resumed_from,
            first + 1,
            len(cfg.lr_scales),
        )
    else:  # the probe alone: fine-tuning must beat it on validation to count
        evaluator = split_model(model, cfg.trainable)[1] if inputs.views else model
        probe_val = _accuracy(evaluator, inputs.val_inputs, cfg.device, cfg.batch_size)
        race = Race({"val_accuracy": probe_val, "epoch": 0, "candidate": -1}, initial, probe_val)
        first, resumed_from = 0, 0
    history, seen, epochs_run, planned, finished = [], [], 0, 0, False
    for index in range(first, len(cfg.lr_scales)):
        if index > first and race.best["val_accuracy"] - race.probe_val >= cfg.race_margin:
            log.info(
                "fine-tuning beat the probe by %.3f >= train.race_margin on validation: "
                "no higher learning rate tried",
                race.best["val_accuracy"] - race.probe_val,
            )
            break
        model.load_state_dict(initial)
        run = Candidate(model, inputs, cfg, index, world)
        if resumed is not None and index == first:
            _restore(model, run, resumed, world)
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
        planned += cfg.epochs
    for result in race.finished:  # a later candidate may have taken the lead
        result["won"] = result["candidate"] == race.best["candidate"]
    if world.size > 1:  # BatchNorm running stats drift apart per rank: take rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    if finished and cfg.keep_best:
        model.load_state_dict(race.best_state)
    model.eval()
    return _result(cfg, race, inputs, history, seen, epochs_run, resumed_from)


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


def _log_epoch(live, record: dict) -> None:
    live.log_metric("finetune/train_loss", record["train_loss"])
    live.log_metric("finetune/train_accuracy", record["train_accuracy"])
    live.log_metric("finetune/candidate", record["candidate"])
    if record["val_accuracy"] is not None:
        live.log_metric("finetune/val_accuracy", record["val_accuracy"])
    for stage, lr in record["lr"].items():
        live.log_metric(f"lr/{stage}", lr)
    live.next_step()


# ------------------------------------------------------------------ checkpoint


def _rng_state(generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "shuffle": generator.get_state(),
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    directory: Path | None,
    world: World,
    model: nn.Module,
    run: Candidate,
    race: Race,
    fingerprint: str,
) -> None:
    """Rank 0 writes the state after an epoch atomically; every rank adds its RNG states."""
    rng = _rng_state(run.generator)
    if world.size > 1:
        gathered: list = [None] * world.size
        dist.all_gather_object(gathered, rng)
        rng = gathered
    else:
        rng = [rng]
    if directory is None or not world.main:
        return
    state = {
        "fingerprint": fingerprint,
        "candidate": run.index,
        "epoch": run.epoch,
        "stale": run.stale,
        "own_best": run.own_best,
        "stopped": run.stopped,
        "seconds": run.seconds,
        "model": _state(model),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "history": run.history,
        "best": race.best,
        "best_state": race.best_state,
        "probe_val": race.probe_val,
        "finished": race.finished,
        "rng": rng,
    }
    Path(directory).mkdir(parents=True, exist_ok=True)
    tmp = Path(directory) / (CHECKPOINT + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, Path(directory) / CHECKPOINT)


def _restore(model: nn.Module, run: Candidate, state: dict, world: World) -> None:
    model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.epoch, run.stale, run.stopped = state["epoch"], state["stale"], state["stopped"]
    run.own_best = state["own_best"]
    run.seconds, run.history = state["seconds"], state["history"]
    _set_rng_state(state["rng"][world.rank], run.generator)


def load_checkpoint(directory: Path | None, fingerprint: str) -> dict | None:
    """The last epoch's state when it belongs to this run (same fingerprint), else None.

    Loaded with ``weights_only=True``: tensors and plain values only, no code.
    """
    if directory is None or not (Path(directory) / CHECKPOINT).is_file():
        return None
    state = torch.load(Path(directory) / CHECKPOINT, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint or "candidate" not in state:
        log.info("checkpoint in %s is for another run; starting fresh", directory)
        return None
    return state
