"""How far a task is from what the pretrained network knows: the profile numbers.

On frozen features: dataset size, LogME, LEEP (from the backbone's own
ImageNet head applied to the pre-logits), a k-NN probe; and, from a forward
pass over a sample of training images, the per-stage BatchNorm domain
distance, which says whether the shift sits early (input-level: colour,
resolution, texture) or late (semantic).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from transferops.config import Params
from transferops.data.datasets import ManifestImages
from transferops.models.backbones import Backbone, classifier_of, stage_namer
from transferops.models.features import extract_features
from transferops.models.recipe import PROFILE
from transferops.models.transferability import (
    bn_domain_distance,
    knn_probe_accuracy,
    leep,
    logme,
    shift_location,
)
from transferops.runtime import loader_for, place_model, to_device

log = logging.getLogger(__name__)


@torch.inference_mode()
def bn_statistics(model: torch.nn.Module, loader, device: str) -> tuple[dict, dict, dict]:
    """Per BatchNorm layer: the target's input (mean, var), the source running stats, stages."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    sums: dict[str, list] = {name: [0, 0.0, 0.0] for name in layers}

    def hook(name: str):
        def record(_module, inputs) -> None:
            x = inputs[0].float().transpose(0, 1).flatten(1)  # channels x (N*H*W)
            sums[name][0] += x.shape[1]
            sums[name][1] = sums[name][1] + x.sum(1).double().cpu()
            sums[name][2] = sums[name][2] + (x * x).sum(1).double().cpu()

        return record

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in layers.items()]
    place_model(model, device).eval()
    try:
        for images, _ in loader:
            model(to_device(images, device))
    finally:
        for handle in handles:
            handle.remove()
    target, source = {}, {}
    for name, module in layers.items():
        count, total, squares = sums[name]
        mean = (total / count).numpy()
        target[name] = (mean, (squares / count).numpy() - mean**2)
        source[name] = (
            module.running_mean.double().cpu().numpy(),
            module.running_var.double().cpu().numpy(),
        )
    stage = stage_namer(model)
    return target, source, {name: stage(name) for name in layers}


def source_probabilities(backbone: Backbone, features: np.ndarray) -> np.ndarray:
    """The pretrained (ImageNet) head's softmax on cached pre-logit features."""
    with torch.inference_mode():
        logits = classifier_of(backbone.model)(torch.from_numpy(features).float())
    return logits.softmax(dim=-1).numpy()


def profile_features(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    source_probs: np.ndarray,
    num_classes: int,
) -> dict:
    """Size and similarity numbers from frozen features."""
    (train_x, train_y), (val_x, val_y) = train, val
    per_class = np.bincount(train_y, minlength=num_classes)
    knn = knn_probe_accuracy(train_x, train_y, val_x, val_y)
    chance = 1 / num_classes
    return {
        "images": len(train_y),
        "classes": num_classes,
        "per_class_min": int(per_class.min()),
        "per_class_median": float(np.median(per_class)),
        "logme": logme(train_x, train_y),
        "leep": leep(source_probs, train_y),
        "knn_accuracy": knn,
        # 0 at chance, 1 when the nearest neighbours are always right.
        "knn_similarity": (knn - chance) / (1 - chance),
    }


def measure(
    backbone: Backbone,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    bn_loader,
    num_classes: int,
    device: str,
    image_size: int | None,
) -> dict:
    """Every profile number: size and similarity from features, BN distance from images."""
    numbers = profile_features(train, val, source_probabilities(backbone, train[0]), num_classes)
    distance = bn_domain_distance(*bn_statistics(backbone.model, bn_loader, device))
    return numbers | {
        "bn_distance": distance,
        "shift_location": shift_location(distance),
        "backbone": backbone.name,
        "image_size": image_size,
    }


def write_profile(numbers: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PROFILE).write_text(json.dumps(numbers, indent=2))
    log.info(
        "profile: %d images (min %d/class), LogME %.3f, LEEP %.3f, kNN %.3f, shift %s",
        numbers["images"],
        numbers["per_class_min"],
        numbers["logme"],
        numbers["leep"],
        numbers["knn_accuracy"],
        numbers["shift_location"],
    )


def bn_sample_loader(
    train_rows: pd.DataFrame, root: Path, classes: list[str], transform, params: Params, device: str
):
    """Batches of ``profile.bn_images`` seeded training images for the BatchNorm statistics."""
    sample = train_rows.sample(
        n=min(params.profile.bn_images, len(train_rows)), random_state=params.seed
    )
    images = ManifestImages(sample, root, classes, transform, params.data.picture())
    return loader_for(images, params.features.batch_size, device)


def features_at(
    backbone: Backbone,
    frame: pd.DataFrame,
    root: Path,
    classes: list[str],
    transform,
    params: Params,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen features and label indices of the manifest rows ``frame``."""
    images = ManifestImages(frame, root, classes, transform, params.data.picture())
    loader = loader_for(images, params.features.batch_size, device)
    return extract_features(backbone, loader, device, desc="profile"), np.asarray(images.targets)
