"""The trained classifier: one timm model (backbone + head), saved without pickle.

A model folder holds ``model.safetensors`` (all weights) and ``model.json``
(everything needed to rebuild it: backbone name, classes, data config).
Evaluation, packaging and serving all load it through :func:`load_classifier`
and run it through :func:`embed_and_classify`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from transferops.data.pictures import PictureSettings
from transferops.models.backbones import (
    HEAD,
    build_transform,
    classifier_of,
    create_model,
    is_head_key,
    pooled_features,
)

WEIGHTS = "model.safetensors"
CONFIG = "model.json"


@dataclass
class ClassifierConfig:
    backbone: str
    classes: list[str]
    data_config: dict[str, Any]
    strategy: str
    extra: dict[str, Any] = field(default_factory=dict)
    picture: dict[str, Any] = field(default_factory=dict)  # PictureSettings, as trained

    def picture_settings(self) -> PictureSettings:
        """How files became pictures in training; serving and evaluation do the same."""
        return PictureSettings.from_dict(self.picture)

    def to_json(self) -> str:
        config = asdict(self)
        config["data_config"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()
        }
        return json.dumps(config, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClassifierConfig:
        config = json.loads(text)
        config["data_config"] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in config["data_config"].items()
        }
        return cls(**config)


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


def load_classifier(model_dir: Path) -> tuple[torch.nn.Module, ClassifierConfig]:
    """Rebuild a saved classifier in eval mode (safetensors: no code is loaded)."""
    model_dir = Path(model_dir)
    config = ClassifierConfig.from_json((model_dir / CONFIG).read_text())
    model = create_model(config.backbone, len(config.classes))
    model.load_state_dict(load_file(str(model_dir / WEIGHTS)), strict=True)
    return model.eval(), config


def eval_transform(config: ClassifierConfig):
    return build_transform(config.data_config, training=False)


@torch.inference_mode()
def embed_and_classify(
    model: torch.nn.Module, batch: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate embeddings and class probabilities for a batch of inputs."""
    pooled = pooled_features(model, batch)
    probabilities = classifier_of(model)(pooled).softmax(dim=-1)
    return pooled.float().cpu().numpy(), probabilities.float().cpu().numpy()
