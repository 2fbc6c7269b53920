"""The fine-tuning checkpoint: written after every epoch, resumed after an interruption.

Weights, optimizer, scheduler, every rank's RNG states (torch, Python, NumPy,
the shuffling generator) and the race so far; written atomically by rank 0,
loaded with ``weights_only=True`` (tensors and plain values, no code). A run
resumes only from a checkpoint with its own fingerprint (params, decision,
data).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from transferops.models.candidates import Candidate, Race, World

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def rng_state(generator: torch.Generator) -> dict:
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
    rng = rng_state(run.generator)
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


def restore(model: nn.Module, run: Candidate, state: dict, world: World) -> None:
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
