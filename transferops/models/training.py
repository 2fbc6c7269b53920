"""The default training run: probe, then fine-tune what the decision unfreezes.

The train stage (``pipelines/train.py``) and the benchmarks run exactly this:
:func:`fit_classifier` takes the cached features, the images and a decision
record and returns the trained classifier with a summary of what happened
(the probe, every learning-rate candidate, early stopping, seconds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferops.config import Params, TrainParams
from transferops.models.backbones import Backbone, build_transform
from transferops.models.classifier import build_classifier
from transferops.models.finetune import FineTuneConfig, FitResult, World, fine_tune
from transferops.models.probe import fit_linear_probe
from transferops.models.recipe import epochs_for


def train_transform(data_config: dict, cfg: TrainParams):
    """timm's training transform with the ``train.*`` augmentation settings (or none)."""
    return build_transform(
        data_config, training=cfg.augment, scale=tuple(cfg.augment_scale), hflip=cfg.hflip
    )


def finetune_config(
    params: Params, trainable: list[str], rates: dict[str, float], n_train: int, device: str
) -> FineTuneConfig:
    """Phase 2 of LP-FT for ``trainable`` at ``rates``, everything else from ``train.*``."""
    cfg = params.train
    return FineTuneConfig(
        trainable=trainable,
        learning_rates=rates,
        epochs=epochs_for(n_train, cfg.batch_size, cfg.epochs, cfg.min_steps),
        batch_size=cfg.batch_size,
        weight_decay=cfg.weight_decay,
        warmup=cfg.warmup,
        gradual_unfreeze=cfg.gradual_unfreeze,
        batchnorm=cfg.batchnorm,
        cache_mb=cfg.cache_mb,
        cache_views=cfg.cache_views,
        seed=params.seed,
        device=device,
        compile=cfg.compile,
        lr_scales=tuple(cfg.lr_race),
        race_margin=cfg.race_margin,
        patience=cfg.patience,
        patience_from=cfg.patience_from,
    )


def finetune_summary(result: FitResult, rates: dict[str, float]) -> dict:
    """What the run record and model lineage keep of phase 2: the race, the stop, the cost."""
    won = result.lr_scale
    return {
        "best_val_accuracy": result.best_val_accuracy,
        "probe_val_accuracy": result.probe_val_accuracy,
        "best_epoch": result.best_epoch,
        "kept": "probe" if won is None else f"fine-tuned at lr x{won:g}",
        "classifier_lr": None if won is None else rates["classifier"] * won,
        "candidates": result.candidates,
        "planned_epochs": result.planned_epochs,
        "resumed_from": result.resumed_from,
        "cached_views": result.cache_views,
        "train_seconds": round(result.train_seconds, 1),
        "seconds_saved_by_early_stopping": round(result.seconds_saved, 1),
    }


def fingerprint(params: Params, decision: dict, manifest) -> str:
    """What a checkpoint must match to be resumed: params, decision and training data."""
    digest = hashlib.sha256()
    digest.update(params.model_dump_json(include={"seed", "model", "train"}).encode())
    digest.update(json.dumps([decision["trainable_stages"], decision["learning_rates"]]).encode())
    digest.update(manifest[["path", "label", "split", "sha256"]].to_csv().encode())
    return digest.hexdigest()


@dataclass
class Fitted:
    model: torch.nn.Module
    summary: dict


def fit_classifier(
    params: Params,
    backbone: Backbone,
    num_classes: int,
    features: dict[str, tuple[np.ndarray, np.ndarray]],
    decision: dict,
    images=None,
    *,
    device: str,
    world: World | None = None,
    live=None,
    checkpoint_dir: Path | None = None,
    run_id: str = "",
    resuming: bool = False,
    start_head: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Fitted:
    """LP-FT as the decision says: the probe always, fine-tuning for strategies that unfreeze.

    Args:
        features: ``{"train": (x, y), "val": (x, y)}`` frozen features.
        decision: the strategy stage's record (strategy, trainable stages, rates).
        images: ``(train dataset, val dataset)`` of transformed images; needed
            only when the decision fine-tunes.
        start_head: the head of the classifier this run starts from (a retrain from
            the champion, ``train.warm_start``); the probe starts there, not at random.
    """
    cfg = params.train
    weight, bias, best = fit_linear_probe(
        *features["train"],
        *features["val"],
        num_classes=num_classes,
        epochs=cfg.probe_epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        seed=params.seed,
        live=None if resuming else live,
        start_head=start_head,
    )
    summary = {"probe": {"best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"]}}
    if "start_val_accuracy" in best:
        summary["probe"]["start_val_accuracy"] = best["start_val_accuracy"]
    model = build_classifier(backbone.model, backbone.name, num_classes, weight, bias)
    if fine_tunes(decision, cfg):
        train_images, val_images = images
        rates = decision["learning_rates"]
        config = finetune_config(
            params, decision["trainable_stages"], rates, len(train_images), device
        )
        result = fine_tune(
            model,
            train_images,
            val_images,
            config,
            live=live,
            checkpoint_dir=checkpoint_dir,
            fingerprint=run_id,
            world=world,
        )
        summary["finetune"] = finetune_summary(result, rates) | {
            "processes": world.size if world is not None else 1
        }
    return Fitted(model, summary)


def fine_tunes(decision: dict, cfg: TrainParams) -> bool:
    """Whether the decision trains more than the probe."""
    return decision["strategy"] != "linear_probe" and cfg.epochs > 0
