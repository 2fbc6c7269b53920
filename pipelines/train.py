"""Stage ``train``: LP-FT as the strategy stage's decision record says.

Phase 1, always: a linear probe (softmax regression on standardised features,
AdamW) on the cached frozen features of the ``features`` stage; the epoch with
the best validation accuracy is kept and the standardisation is folded into
the head. Phase 2, for ``top_blocks``, ``most_blocks`` and ``full``: the
fine-tuning engine (``pipelines/finetune.py``) trains the recorded stages at
the recorded learning rates, starting from the probe's head, resuming from
``paths.checkpoints`` after an interruption. Runs data-parallel under
``torchrun``. Metrics and per-stage learning rates go to DVCLive; the model is
saved as safetensors plus the JSON needed to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import trange

from pipelines.backbones import build_transform, data_config_for, load_backbone
from pipelines.classifier import ClassifierConfig, build_classifier, save_classifier
from pipelines.config import Params, TrainParams
from pipelines.datasets import ManifestImages, read_accepted, read_classes
from pipelines.features import load_split
from pipelines.finetune import FineTuneConfig, FitResult, World, fine_tune, load_checkpoint
from pipelines.recipe import epochs_for, read_side
from pipelines.runtime import select_device, set_threads
from pipelines.stage import run_stage
from pipelines.strategy import DECISION

log = logging.getLogger(__name__)


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    *,
    num_classes: int,
    epochs: int,
    lr: float,
    weight_decay: float,
    batch_size: int,
    seed: int,
    live=None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Train softmax regression; return (weight, bias) on raw features and best metrics.

    With ``epochs == 0`` the head stays at its (seeded) initialisation: an
    untrained baseline, useful to test the gate.
    """
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(train_x).float(), torch.from_numpy(train_y).long()
    vx, vy = torch.from_numpy(val_x).float(), torch.from_numpy(val_y).long()
    mean, std = x.mean(0), x.std(0)
    std = std.clamp_min(0.1 * float(std.median()) + 1e-6)  # see docs/training.md
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=generator)
        head.bias.zero_()
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best = {"val_accuracy": _accuracy(head, (vx - mean) / std, vy), "epoch": 0}
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    for epoch in trange(1, epochs + 1, desc="linear probe", unit="epoch", disable=None):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = torch.nn.functional.cross_entropy(head((x[idx] - mean) / std), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_acc = _accuracy(head, (vx - mean) / std, vy)
        if live is not None:
            live.log_metric("probe/train_loss", loss.item())
            live.log_metric("probe/val_accuracy", val_acc)
            live.log_metric("lr/classifier", optimizer.param_groups[0]["lr"])
            live.next_step()
        if val_acc > best["val_accuracy"]:
            best = {"val_accuracy": val_acc, "epoch": epoch}
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    # Fold the standardisation in: W (x - m) / s + b == (W / s) x + (b - W m / s).
    weight = head.weight.detach() / std
    bias = head.bias.detach() - weight @ mean
    return weight, bias, best


@torch.no_grad()
def _accuracy(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((head(x).argmax(1) == y).float().mean()) if len(y) else 0.0


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


def train(params: Params) -> dict[str, float]:
    """Probe on cached features, fine-tune what the decision unfreezes, save the classifier."""
    from dvclive import Live

    set_threads(params.threads)
    device = select_device(params.device)
    world = World.from_env(device)
    cfg, paths = params.train, params.paths
    decision = json.loads((Path(paths.profile) / DECISION).read_text())
    classes = read_classes(paths.prepared)
    train_x, train_y = load_split(paths.features, "train")
    val_x, val_y = load_split(paths.features, "val")
    fine_tuning = decision["strategy"] != "linear_probe" and cfg.epochs > 0
    manifest = read_accepted(paths.validation) if fine_tuning else None
    run_id = fingerprint(params, decision, manifest) if fine_tuning else ""
    resuming = fine_tuning and load_checkpoint(paths.checkpoints, run_id) is not None
    live = (
        Live(dir=str(paths.train_log), save_dvc_exp=False, dvcyaml=None, resume=resuming)
        if world.main
        else None
    )
    if live is not None and not resuming:
        live.log_params({"strategy": decision["strategy"], **cfg.model_dump(mode="json")})
    weight, bias, best = fit_linear_probe(
        train_x,
        train_y,
        val_x,
        val_y,
        num_classes=len(classes),
        epochs=cfg.probe_epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        seed=params.seed,
        live=None if resuming else live,
    )
    summary = {"probe": {"best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"]}}
    backbone = load_backbone(params.model.backbone, params.model.weights)
    model = build_classifier(backbone.model, backbone.name, len(classes), weight, bias)
    data_config = data_config_for(backbone, read_side(paths.features))
    if fine_tuning:
        transforms = {
            "train": train_transform(data_config, cfg),
            "val": build_transform(data_config),
        }
        images = {
            split: ManifestImages(
                manifest[manifest["split"] == split],
                paths.prepared,
                classes,
                transforms[split],
                params.data.picture(),
            )
            for split in ("train", "val")
        }
        result = fine_tune(
            model,
            images["train"],
            images["val"],
            finetune_config(
                params,
                decision["trainable_stages"],
                decision["learning_rates"],
                len(images["train"]),
                device,
            ),
            live=live,
            checkpoint_dir=Path(paths.checkpoints),
            fingerprint=run_id,
            world=world,
        )
        summary["finetune"] = finetune_summary(result, decision["learning_rates"])
    if world.main:
        for group, values in summary.items():  # next to the latest values DVCLive logged
            live.summary.setdefault(group, {}).update(values)
        live.end()
        config = ClassifierConfig(
            backbone=backbone.name,
            classes=classes,
            strategy=decision["strategy"],
            data_config=data_config,
            picture=params.data.picture().to_dict(),
            extra={
                "weights": params.model.weights,
                "trainable_stages": decision["trainable_stages"],
                "learning_rates": decision["learning_rates"],
                **summary,
            },
        )
        save_classifier(model, config, Path(paths.model))
    log.info("%s: %s", decision["strategy"], summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], train, argv)


if __name__ == "__main__":
    sys.exit(main())
