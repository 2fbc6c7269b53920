"""The fine-tuning engine: train exactly the stages a decision record names.

Pure training machinery, no files of the pipeline: :func:`fine_tune` takes a
timm model whose classifier already holds the linear probe (phase 1 of LP-FT),
the datasets and a :class:`FineTuneConfig`, and trains phase 2.

- Stages come from timm's own grouping (:func:`pipelines.backbones.stage_namer`).
  Frozen stages get ``requires_grad=False`` and their BatchNorm layers stay in
  eval mode, so their running statistics never move.
- Every trainable stage is its own optimizer group with the learning rate the
  record asks for; the warm-up + cosine schedule multiplies all groups by the
  same factor, so the layer-wise ratios hold at every step.
- Frozen work is done once: the frozen prefix's activations (stem up to the
  first trainable stage) are computed for ``cache_views`` augmented views of
  every training image and for the validation images, within a memory budget;
  epochs then run only the trainable suffix. Over budget (or for a model that
  cannot be cut into stages) the prefix is recomputed, frozen, every step.
- Under ``torchrun`` it runs data-parallel (DDP; NCCL on CUDA, gloo on CPU):
  each rank trains a disjoint shard; rank 0 alone logs and checkpoints.
- A checkpoint after every epoch (weights, optimizer, scheduler, RNG states,
  epoch, best so far) lets an interrupted run resume where it stopped, to the
  same weights an uninterrupted run reaches (CPU, deterministic).
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from pipelines.backbones import stage_namer

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class FineTuneConfig:
    """Phase 2 of LP-FT, as a decision record and ``params.yaml`` describe it."""

    trainable: list[str]  # stages that train, e.g. ["block5", "block6", "head", "classifier"]
    learning_rates: dict[str, float]  # per trainable stage (layer-wise decay)
    epochs: int
    batch_size: int
    weight_decay: float = 0.01
    warmup: float = 0.1
    gradual_unfreeze: bool = False
    cache_mb: int = 2048
    cache_views: int = 4
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    keep_best: bool = True  # end on the best validation epoch (else on the last)
    validations: int = 20  # at most this many validation passes (every epoch on short runs)
    # frozen: running statistics everywhere; adapt: batch statistics in trainable stages
    batchnorm: str = "frozen"

    def __post_init__(self) -> None:
        missing = [s for s in self.trainable if s not in self.learning_rates]
        if missing:
            raise ValueError(f"no learning rate for trainable stage(s) {missing}")


@dataclass
class FitResult:
    best_val_accuracy: float
    best_epoch: int
    epochs_run: int
    resumed_from: int  # epochs already done when this call started (0: fresh)
    cached: bool  # frozen-prefix activations were cached
    cache_views: int
    cache_seconds: float
    history: list[dict] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)  # training indices this rank used


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


# --------------------------------------------------------------------- stages


def stage_sequence(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The model as stages in forward order (EfficientNet / MobileNet layout), or None.

    The modules are the model's own (shared, not copied). Models of another
    layout still train, frozen by stage, but without the cached prefix.
    """
    if not all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return None
    return [
        ("stem", nn.Sequential(model.conv_stem, model.bn1)),
        *[(f"block{i}", block) for i, block in enumerate(model.blocks)],
        ("head", nn.Sequential(model.conv_head, model.bn2)),
    ]


class Suffix(nn.Module):
    """The model from a given stage on: what runs on cached prefix activations."""

    def __init__(self, model: nn.Module, stages: list[nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.model.forward_head(x)


def split_model(model: nn.Module, trainable: list[str]) -> tuple[nn.Module | None, nn.Module]:
    """(frozen prefix, suffix): the prefix covers the stages before the first trainable one."""
    sequence = stage_sequence(model)
    if sequence is None:
        return None, model
    names = [name for name, _ in sequence]
    first = min((names.index(s) for s in trainable if s in names), default=len(names))
    if first == 0:
        return None, model
    prefix = nn.Sequential(*[module for _, module in sequence[:first]])
    return prefix, Suffix(model, [module for _, module in sequence[first:]])


def set_trainable(model: nn.Module, trainable: list[str], adapt_batchnorm: bool = False) -> None:
    """``requires_grad`` by stage; BatchNorm of frozen stages in eval mode (stats untouched).

    Trainable stages' BatchNorm also stays in eval mode (its affine weights still
    learn) unless ``adapt_batchnorm``: then it normalises with batch statistics
    and updates its running ones. Call after ``model.train()``.
    """
    stage = stage_namer(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(stage(name) in trainable)
    for name, module in model.named_modules():
        is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if is_norm and not (adapt_batchnorm and stage(name) in trainable):
            module.eval()


def parameter_groups(
    model: nn.Module, learning_rates: dict[str, float], weight_decay: float
) -> list[dict]:
    """One optimizer group per trainable stage (and its no-decay half: norms and biases)."""
    stage = stage_namer(model)
    groups: dict[tuple[str, bool], list] = {}
    for name, parameter in model.named_parameters():
        if stage(name) in learning_rates:
            groups.setdefault((stage(name), parameter.ndim <= 1), []).append(parameter)
    return [
        {
            "params": params,
            "lr": learning_rates[name],
            "weight_decay": 0.0 if no_decay else weight_decay,
            "stage": name,
        }
        for (name, no_decay), params in groups.items()
    ]


def unfrozen_at(epoch: int, trainable: list[str], gradual: bool) -> list[str]:
    """Gradual unfreezing: the classifier and one more stage per epoch, from the top."""
    if not gradual:
        return trainable
    ordered = list(reversed(trainable))  # classifier first
    return ordered[: min(len(ordered), epoch + 1)]


def warmup_cosine(total_steps: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(total_steps * warmup)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


# ---------------------------------------------------------------------- cache


def _loader(dataset, batch_size: int, device: str) -> torch.utils.data.DataLoader:
    cuda = device == "cuda"
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=min(8, os.cpu_count() or 1) if cuda else 0,
        pin_memory=cuda,
        persistent_workers=False,
    )


def _to_device(images: torch.Tensor, device: str) -> torch.Tensor:
    images = images.to(device, non_blocking=True)
    return images.to(memory_format=torch.channels_last) if device == "cuda" else images


def _autocast(device: str):
    return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda")


@torch.no_grad()
def cache_activations(
    prefix: nn.Module, dataset, views: int, batch_size: int, device: str, desc: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``views`` passes of ``dataset`` through the frozen prefix: (views, N, C, H, W), labels.

    Each pass draws fresh augmentations when the dataset's transform is random.
    Stored on CPU in float32 (the values the frozen network produces).
    """
    prefix.eval()
    out, labels = None, torch.empty(len(dataset), dtype=torch.long)
    for view in range(views):
        start = 0
        for images, targets in tqdm(
            _loader(dataset, batch_size, device),
            desc=f"{desc} view {view + 1}/{views}",
            unit="batch",
            disable=None,
            leave=False,
        ):
            with _autocast(device):
                acts = prefix(_to_device(images, device)).float().cpu()
            if out is None:
                out = torch.empty((views, len(dataset), *acts.shape[1:]), dtype=torch.float32)
            out[view, start : start + len(acts)] = acts
            labels[start : start + len(acts)] = targets
            start += len(acts)
    return out, labels


@torch.no_grad()
def activation_bytes(prefix: nn.Module, dataset, device: str) -> int:
    """Bytes one image's prefix activations take (float32)."""
    prefix.eval()
    image, _ = dataset[0]
    with _autocast(device):
        return prefix(_to_device(image[None], device)).numel() * 4


def cache_plan(per_image: int, n_train: int, n_val: int, views: int, budget_mb: int) -> int:
    """How many augmented views fit the budget next to the validation cache (0: none)."""
    budget = budget_mb * 2**20 - per_image * n_val
    if budget <= 0 or n_train == 0:
        return 0
    return int(min(views, budget // (per_image * n_train)))


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


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def load_checkpoint(directory: Path | None, fingerprint: str) -> dict | None:
    """The last epoch's state when it belongs to this run (same fingerprint), else None.

    Loaded with ``weights_only=True``: tensors and plain values only, no code.
    """
    if directory is None or not (Path(directory) / CHECKPOINT).is_file():
        return None
    state = torch.load(Path(directory) / CHECKPOINT, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.info("checkpoint in %s is for another run; starting fresh", directory)
        return None
    return state


# ---------------------------------------------------------------------- train


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
        chunks = _loader(inputs, batch_size, device)
    for x, y in chunks:
        with _autocast(device):
            logits = module(_to_device(x, device))
        correct += int((logits.float().argmax(1).cpu() == y).sum())
        total += len(y)
    return correct / total if total else 0.0


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
    """Train the stages ``cfg.trainable`` of ``model`` in place; keep the best epoch on val.

    Args:
        model: a timm model, classifier already initialised (LP-FT phase 1).
        train_data: dataset of (augmented image tensor, label).
        val_data: dataset of (image tensor, label) with the evaluation transform.
        live: a DVCLive ``Live`` (rank 0): loss, accuracy and lr per stage each epoch.
        checkpoint_dir: where the per-epoch checkpoint lives; an existing one with
            the same ``fingerprint`` is resumed.
        stop_after: end after this many epochs in total (tests interrupt runs with it).
    """
    world = world or World()
    device = cfg.device
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    model.to(device)
    if device == "cuda":
        model.to(memory_format=torch.channels_last)
    prefix, suffix = split_model(model, cfg.trainable)
    shard = _shard(len(train_data), world, cfg.seed)
    shard_data = torch.utils.data.Subset(train_data, shard.tolist())

    views, cache_started, cache_seconds = 0, time.perf_counter(), 0.0
    if prefix is not None:
        per_image = activation_bytes(prefix, val_data if len(val_data) else train_data, device)
        views = cache_plan(per_image, len(shard), len(val_data), cfg.cache_views, cfg.cache_mb)
        if views == 0:
            log.info("frozen-prefix cache over train.cache_mb=%d: recomputing", cfg.cache_mb)
    if views:
        train_acts, train_labels = cache_activations(
            prefix, shard_data, views, cfg.batch_size, device, "cache train"
        )
        val_inputs = cache_activations(prefix, val_data, 1, cfg.batch_size, device, "cache val")
        val_inputs = (val_inputs[0][0], val_inputs[1])
        runner, evaluator = suffix, suffix
        cache_seconds = time.perf_counter() - cache_started
        log.info(
            "cached the frozen prefix: %d view(s) of %d images in %.1f s",
            views,
            len(shard),
            cache_seconds,
        )
    else:
        train_labels = None
        runner, evaluator = model, model
        val_inputs = val_data

    set_trainable(model, cfg.trainable)  # before DDP: it registers what trains
    parameters = parameter_groups(model, cfg.learning_rates, cfg.weight_decay)
    optimizer = torch.optim.AdamW(parameters)
    steps_per_epoch = max(1, len(shard) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(steps_per_epoch * cfg.epochs, cfg.warmup)
    )
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + world.rank)
    trained = runner
    if world.size > 1:
        trained = nn.parallel.DistributedDataParallel(
            runner, find_unused_parameters=cfg.gradual_unfreeze
        )
    if cfg.compile:
        trained = torch.compile(trained)

    history: list[dict] = []
    resumed = load_checkpoint(checkpoint_dir, fingerprint)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        _set_rng_state(resumed["rng"][world.rank], generator)
        start_epoch, best, history = resumed["epoch"], resumed["best"], resumed["history"]
        best_state = resumed["best_state"]
        log.info("resuming from the checkpoint after epoch %d", start_epoch)
    else:  # epoch 0 is the linear probe alone: fine-tuning must beat it on val to count
        start_epoch, best_state = 0, _state(model)
        best = {
            "val_accuracy": _accuracy(evaluator, val_inputs, device, cfg.batch_size),
            "epoch": 0,
        }

    seen: list[int] = []
    val_every = max(1, math.ceil(cfg.epochs / cfg.validations))
    last_epoch = min(cfg.epochs, stop_after) if stop_after is not None else cfg.epochs
    for epoch in range(start_epoch, last_epoch):
        active = unfrozen_at(epoch, cfg.trainable, cfg.gradual_unfreeze)
        model.train()
        set_trainable(model, active, cfg.batchnorm == "adapt")
        losses, correct, count, started = [], 0, 0, time.perf_counter()
        batches = list(_batches(len(shard), cfg.batch_size, generator))
        for idx in tqdm(
            batches,
            desc=f"fine-tune {epoch + 1}/{cfg.epochs}",
            unit="batch",
            disable=None,
            leave=False,
        ):
            if views:
                pick = torch.randint(views, (len(idx),), generator=generator)
                x, y = train_acts[pick, idx], train_labels[idx]
            else:
                x, y = torch.utils.data.default_collate([shard_data[int(i)] for i in idx])
            seen.extend(shard[idx].tolist())
            x, y = _to_device(x, device), y.to(device, non_blocking=True)
            with _autocast(device):
                logits = trained(x)
                loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
        train_seconds = time.perf_counter() - started
        validate = (epoch + 1) % val_every == 0 or epoch + 1 == cfg.epochs
        val_accuracy = (
            _accuracy(evaluator, val_inputs, device, cfg.batch_size) if validate else None
        )
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "train_accuracy": correct / max(count, 1),
            "val_accuracy": val_accuracy,
            "lr": {g["stage"]: g["lr"] for g in optimizer.param_groups},
            "train_seconds": train_seconds,
        }
        history.append(record)
        log.info(
            "epoch %d/%d: train loss %.3f, train accuracy %.3f, val accuracy %s",
            epoch + 1,
            cfg.epochs,
            record["train_loss"],
            record["train_accuracy"],
            "-" if val_accuracy is None else f"{val_accuracy:.3f}",
        )
        if val_accuracy is not None and val_accuracy > best["val_accuracy"]:
            best = {"val_accuracy": val_accuracy, "epoch": epoch + 1}
            best_state = _state(model)
        if live is not None and world.main:
            _log_epoch(live, record)
        _checkpoint(
            checkpoint_dir,
            world,
            generator,
            {
                "fingerprint": fingerprint,
                "epoch": epoch + 1,
                "model": _state(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "best": best,
                "best_state": best_state,
                "history": history,
            },
        )

    if world.size > 1:  # BatchNorm running stats drift apart per rank: take rank 0's
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
    if last_epoch == cfg.epochs and cfg.keep_best:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        best_val_accuracy=best["val_accuracy"],
        best_epoch=best["epoch"],
        epochs_run=last_epoch - start_epoch,
        resumed_from=start_epoch,
        cached=bool(views),
        cache_views=views,
        cache_seconds=cache_seconds,
        history=history,
        seen=seen,
    )


def _log_epoch(live, record: dict) -> None:
    live.log_metric("finetune/train_loss", record["train_loss"])
    live.log_metric("finetune/train_accuracy", record["train_accuracy"])
    if record["val_accuracy"] is not None:
        live.log_metric("finetune/val_accuracy", record["val_accuracy"])
    for stage, lr in record["lr"].items():
        live.log_metric(f"lr/{stage}", lr)
    live.next_step()


def _checkpoint(directory: Path | None, world: World, generator, state: dict) -> None:
    """Rank 0 writes the state after an epoch atomically; every rank adds its RNG states."""
    rng = _rng_state(generator)
    if world.size > 1:
        gathered: list = [None] * world.size
        dist.all_gather_object(gathered, rng)
        rng = gathered
    else:
        rng = [rng]
    if directory is None or not world.main:
        return
    Path(directory).mkdir(parents=True, exist_ok=True)
    _atomic_save({**state, "rng": rng}, Path(directory) / CHECKPOINT)
