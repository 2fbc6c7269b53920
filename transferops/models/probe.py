"""Phase 1 of LP-FT: a linear probe (softmax regression) on cached frozen features.

Standardised features, AdamW, the best validation epoch kept, the
standardisation folded into the head so it applies to raw features. A
retrain from a classifier (the champion, the same classes) starts from that
classifier's head (``start_head``) instead of a random one; its epoch 0 is then
the start itself, which is not a result, so the best epoch is one that trained.
Feature standard deviations are floored at 0.1x their median before folding:
near-constant features would otherwise get weights of 10^4 that blow the loss
up as soon as fine-tuning moves the features (docs/training.md).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import trange


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
    start_head: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Train softmax regression; return (weight, bias) on raw features and best metrics.

    With ``epochs == 0`` the head stays at its (seeded) initialisation: an
    untrained baseline, useful to test the gate. ``start_head``: (weight, bias) of a
    head on raw features to start from; the result is then one of the trained
    epochs (``best["start_val_accuracy"]`` is the start's own).
    """
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(train_x).float(), torch.from_numpy(train_y).long()
    vx, vy = torch.from_numpy(val_x).float(), torch.from_numpy(val_y).long()
    mean, std = x.mean(0), x.std(0)
    std = std.clamp_min(0.1 * float(std.median()) + 1e-6)  # see docs/training.md
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        if start_head is None:
            head.weight.normal_(0, 0.01, generator=generator)
            head.bias.zero_()
        else:  # a head on raw features, unfolded: W x + b == (W s) (x - m) / s + (b + W m)
            weight, bias = start_head
            head.weight.copy_(weight * std)
            head.bias.copy_(bias + weight @ mean)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best = {"val_accuracy": _accuracy(head, (vx - mean) / std, vy), "epoch": 0}
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    if start_head is not None and epochs > 0:  # the start is what the retrain moves off
        best = {"val_accuracy": -1.0, "epoch": 0, "start_val_accuracy": best["val_accuracy"]}
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
            best |= {"val_accuracy": val_acc, "epoch": epoch}
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
    head.load_state_dict(best_state)
    # Fold the standardisation in: W (x - m) / s + b == (W / s) x + (b - W m / s).
    weight = head.weight.detach() / std
    bias = head.bias.detach() - weight @ mean
    return weight, bias, best


@torch.no_grad()
def _accuracy(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((head(x).argmax(1) == y).float().mean()) if len(y) else 0.0
