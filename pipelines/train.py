"""Stage ``train``: a linear probe on the cached frozen features.

Softmax regression on standardised features (AdamW, full-batch epochs in
mini-batches); the epoch with the best validation accuracy is kept, and the
standardisation is folded into the head so the saved model takes raw images.
Metrics per epoch go to DVCLive.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import trange

from pipelines.backbones import data_config_for, load_backbone
from pipelines.classifier import ClassifierConfig, build_classifier, save_classifier
from pipelines.config import Params
from pipelines.datasets import read_classes
from pipelines.features import load_split
from pipelines.runtime import set_threads
from pipelines.stage import run_stage

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
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
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
            live.log_metric("train/loss", loss.item())
            live.log_metric("val/accuracy", val_acc)
            live.log_metric("lr/head", optimizer.param_groups[0]["lr"])
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


def train(params: Params) -> dict[str, float]:
    """Fit the probe on cached features and save the whole classifier."""
    from dvclive import Live

    set_threads(params.threads)
    cfg, paths = params.train, params.paths
    classes = read_classes(paths.prepared)
    train_x, train_y = load_split(paths.features, "train")
    val_x, val_y = load_split(paths.features, "val")
    with Live(dir=str(paths.train_log), save_dvc_exp=False, dvcyaml=None) as live:
        live.log_params({"strategy": cfg.strategy, "lr": cfg.lr, "epochs": cfg.epochs})
        weight, bias, best = fit_linear_probe(
            train_x,
            train_y,
            val_x,
            val_y,
            num_classes=len(classes),
            epochs=cfg.epochs,
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            batch_size=cfg.batch_size,
            seed=params.seed,
            live=live,
        )
        live.summary["best/val_accuracy"] = best["val_accuracy"]
        live.summary["best/epoch"] = best["epoch"]
    backbone = load_backbone(params.model.backbone, params.model.weights)
    model = build_classifier(backbone.model, backbone.name, len(classes), weight, bias)
    config = ClassifierConfig(
        backbone=backbone.name,
        classes=classes,
        strategy=cfg.strategy,
        data_config=data_config_for(backbone, params.model.image_size),
        extra={"weights": params.model.weights, "best_epoch": best["epoch"]},
    )
    save_classifier(model, config, Path(paths.model))
    log.info(
        "linear probe: best val accuracy %.3f at epoch %d", best["val_accuracy"], best["epoch"]
    )
    return best


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], train, argv)


if __name__ == "__main__":
    sys.exit(main())
