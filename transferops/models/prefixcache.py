"""Frozen work done once: the frozen prefix's activations, cached for every epoch.

The stages before the first trainable one never change, so their output is
computed for ``cache_views`` augmented views of every training image and for
the validation images, within a memory budget; epochs (and every
learning-rate candidate) then run only the trainable suffix. Over budget, or
for a model that cannot be cut into stages, the prefix is recomputed, frozen,
every step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm

from transferops.models.freezing import split_model
from transferops.runtime import autocast, loader_for, to_device

log = logging.getLogger(__name__)


@dataclass
class TrainingInputs:
    """What every candidate trains and validates on: cached activations, or images."""

    shard: torch.Tensor  # this rank's training indices
    shard_data: torch.utils.data.Dataset
    views: int  # augmented views cached per image (0: nothing cached)
    train_acts: torch.Tensor | None  # (views, N, C, H, W)
    train_labels: torch.Tensor | None
    val_inputs: object  # (activations, labels) when cached, else the validation dataset
    cache_seconds: float = 0.0

    def batch(self, idx: torch.Tensor, generator: torch.Generator) -> tuple:
        """Inputs and labels of the training rows ``idx`` (a random cached view each)."""
        if self.views:
            pick = torch.randint(self.views, (len(idx),), generator=generator)
            return self.train_acts[pick, idx], self.train_labels[idx]
        return torch.utils.data.default_collate([self.shard_data[int(i)] for i in idx])


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
            loader_for(dataset, batch_size, device),
            desc=f"{desc} view {view + 1}/{views}",
            unit="batch",
            disable=None,
            leave=False,
        ):
            with autocast(device):
                acts = prefix(to_device(images, device)).float().cpu()
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
    with autocast(device):
        return prefix(to_device(image[None], device)).numel() * 4


def cache_plan(per_image: int, n_train: int, n_val: int, views: int, budget_mb: int) -> int:
    """How many augmented views fit the budget next to the validation cache (0: none)."""
    budget = budget_mb * 2**20 - per_image * n_val
    if budget <= 0 or n_train == 0:
        return 0
    return int(min(views, budget // (per_image * n_train)))


def prepare_inputs(
    model: nn.Module,
    trainable: list[str],
    shard: torch.Tensor,
    train_data,
    val_data,
    *,
    views: int,
    cache_mb: int,
    batch_size: int,
    device: str,
) -> TrainingInputs:
    """Cache the frozen prefix's activations when the budget allows, else plan to recompute."""
    shard_data = torch.utils.data.Subset(train_data, shard.tolist())
    prefix, _ = split_model(model, trainable)
    planned = 0
    if prefix is not None:
        per_image = activation_bytes(prefix, val_data if len(val_data) else train_data, device)
        planned = cache_plan(per_image, len(shard), len(val_data), views, cache_mb)
        if planned == 0:
            log.info("frozen-prefix cache over train.cache_mb=%d: recomputing", cache_mb)
    if not planned:
        return TrainingInputs(shard, shard_data, 0, None, None, val_data)
    started = time.perf_counter()
    train_acts, train_labels = cache_activations(
        prefix, shard_data, planned, batch_size, device, "cache train"
    )
    val_acts, val_labels = cache_activations(prefix, val_data, 1, batch_size, device, "cache val")
    seconds = time.perf_counter() - started
    log.info(
        "cached the frozen prefix: %d view(s) of %d images in %.1f s", planned, len(shard), seconds
    )
    return TrainingInputs(
        shard, shard_data, planned, train_acts, train_labels, (val_acts[0], val_labels), seconds
    )
