"""The trained classifier: one timm model (backbone + head), saved without pickle.

A model folder holds ``model.safetensors`` (all weights) and ``model.json``
(everything needed to rebuild it: backbone name, classes, data config).
Evaluation, packaging and serving all load it through :func:`load_classifier`
and run it through :func:`embed_and_classify`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from transferops.models.backbones import (
    HEAD,
    build_transform,
    classifier_of,
    create_model,
    data_config_for,
    is_head_key,
    pooled_features,
)
from transferops.models.saved import CONFIG, WEIGHTS, ClassifierConfig


def build_classifier(
    backbone: torch.nn.Module, name: str, num_classes: int, weight: torch.Tensor, bias: torch.Tensor
) -> torch.nn.Module:
    """Put a trained linear head on top of the pretrained backbone."""
    model = create_model(name, num_classes)
    state = {k: v for k, v in backbone.state_dict().items() if not is_head_key(k)}
    state[f"{HEAD}.weight"], state[f"{HEAD}.bias"] = weight, bias
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_classifier(model: torch.nn.Module, config: ClassifierConfig, out_dir: Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS))
    (out_dir / CONFIG).write_text(config.to_json())


def save_seeded_classifier(
    backbone, classes: list[str], out_dir: Path, side: int | None = None, seed: int = 0
) -> Path:
    """``backbone`` (a loaded ``Backbone``) with a seeded random linear head, saved as the
    package stage saves a model: for measurements and device checks that need a real
    packaged model, not a trained one."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(len(classes), backbone.num_features, generator=generator)
    model = build_classifier(
        backbone.model, backbone.name, len(classes), weight, torch.zeros(len(classes))
    )
    config = ClassifierConfig(backbone.name, classes, data_config_for(backbone, side), "full")
    save_classifier(model, config, out_dir)
    return Path(out_dir)


def load_classifier(model_dir: Path) -> tuple[torch.nn.Module, ClassifierConfig]:
    """Rebuild a saved classifier in eval mode (safetensors: no code is loaded)."""
    model_dir = Path(model_dir)
    config = ClassifierConfig.from_json((model_dir / CONFIG).read_text())
    model = create_model(config.backbone, len(config.classes))
    model.load_state_dict(load_file(str(model_dir / WEIGHTS)), strict=True)
    return model.eval(), config


def starting_head(
    weights: str, backbone: str, classes: list[str]
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """The head (weight, bias) of the classifier ``weights`` names, when a run training
    ``backbone`` for ``classes`` (in this order) can start its probe from it; otherwise
    (None, why not). A retrain from the champion's weights passes its ``model.safetensors``,
    with ``model.json`` beside it; ImageNet weights (``offline``, ``hub``) have no such head."""
    if weights in ("offline", "hub"):
        return None, f"model.weights = {weights}: pretrained weights, not a trained classifier"
    path = Path(weights)
    if path.name != WEIGHTS or not (path.parent / CONFIG).is_file():
        return None, f"model.weights {weights!r} is not a saved classifier (no {CONFIG} beside it)"
    config = ClassifierConfig.from_json((path.parent / CONFIG).read_text())
    if config.backbone != backbone:
        return None, f"the start is a {config.backbone}; this run trains a {backbone}"
    if list(config.classes) != list(classes):
        return None, f"the start's classes {config.classes} are not this run's {classes}"
    with safe_open(str(path), framework="pt") as state:  # the two head tensors, not all
        return (state.get_tensor(f"{HEAD}.weight"), state.get_tensor(f"{HEAD}.bias")), ""


def eval_transform(config: ClassifierConfig):
    return build_transform(config.data_config, training=False)


class InputSplit:
    """The eval transform, cut where it leaves Pillow: pixels per image, then one batch.

    ``pixels`` (resize and crop, in Pillow) runs where a request is decoded and
    yields a small uint8 array; ``batch`` stacks those and scales and
    normalises them in one tensor operation, exactly what ``ToTensor`` and
    ``Normalize`` do image by image. ``side`` is the shorter side the resize
    aims at: images are shrunk to it while decoding (``pictures.shrink``).
    """

    def __init__(self, config: ClassifierConfig) -> None:
        steps = list(eval_transform(config).transforms)
        names = [type(step).__name__ for step in steps]
        cut = next(i for i, n in enumerate(names) if n in ("ToTensor", "MaybeToTensor"))
        if names[cut + 1 :] != ["Normalize"]:
            raise ValueError(f"unexpected eval transform {names}: expected ... ToTensor, Normalize")
        self.pil_steps, normalize = steps[:cut], steps[cut + 1]
        self.mean = torch.as_tensor(normalize.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.as_tensor(normalize.std, dtype=torch.float32).view(1, -1, 1, 1) * 255
        sizes = [getattr(step, "size", None) for step in self.pil_steps]
        fallback = config.data_config["input_size"][1:]
        first = next((size for size in sizes if size is not None), fallback)
        self.side = int(first if isinstance(first, int) else min(first))
        self.key = json.dumps(config.data_config, sort_keys=True, default=str)

    def pixels(self, image) -> np.ndarray:
        """Resize and crop one RGB image: (H, W, 3) uint8."""
        for step in self.pil_steps:
            image = step(image)
        return np.asarray(image, dtype=np.uint8)

    def batch(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """N x 3 x H x W float32, normalised: the eval transform's output for every image."""
        stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float()
        return (stacked - self.mean) / self.std


@torch.inference_mode()
def embed_and_classify(
    model: torch.nn.Module, batch: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate embeddings and class probabilities for a batch of inputs."""
    pooled = pooled_features(model, batch)
    probabilities = classifier_of(model)(pooled).softmax(dim=-1)
    return pooled.float().cpu().numpy(), probabilities.float().cpu().numpy()
