"""The frozen backbone's pooled features: computed once per image, stored per split.

A linear probe never changes the backbone, so its inputs are a cached stage
output (``<split>.npz``): changing ``train.*`` re-trains in seconds without
touching an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from transferops.models.backbones import Backbone, pooled_features
from transferops.runtime import autocast, place_model, to_device


@torch.inference_mode()
def extract_features(
    backbone: Backbone, loader: torch.utils.data.DataLoader, device: str, desc: str = "features"
) -> np.ndarray:
    """Pooled pre-logit features for every image the loader yields, in order."""
    model = place_model(backbone.model, device)
    chunks = []
    for images, _ in tqdm(loader, desc=desc, unit="batch", disable=None):
        with autocast(device):
            chunks.append(pooled_features(model, to_device(images, device)).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, backbone.num_features), np.float32)


def save_split(features_dir: Path, split: str, features: np.ndarray, labels: np.ndarray) -> Path:
    path = Path(features_dir) / f"{split}.npz"
    np.savez(path, features=features, labels=labels)
    return path


def load_split(features_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(features_dir) / f"{split}.npz") as data:
        return data["features"], data["labels"]
