"""What trains and what stays frozen: stages, the cached prefix, optimizer groups.

Stages come from timm's own grouping (``transferops.models.backbones``):
``stem``, ``block0``.., ``head``, ``classifier``. Frozen stages get
``requires_grad=False`` and their BatchNorm layers stay in eval mode, so
their running statistics never move. Every trainable stage is its own
optimizer group with the learning rate the decision record asks for.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import nn

from transferops.models.backbones import Suffix, stage_namer, stage_sequence


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
    """Learning-rate factor per step: linear warm-up, then cosine to zero."""
    warm = max(1, int(total_steps * warmup)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor
