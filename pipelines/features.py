"""Stage ``features``: the frozen backbone's penultimate features, computed once.

A linear probe never changes the backbone, so its features are a cached stage
output: changing ``train.*`` re-trains in seconds without touching images.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipelines.backbones import Backbone, build_transform, data_config_for, load_backbone
from pipelines.config import Params
from pipelines.datasets import SPLITS, ManifestImages, read_accepted, read_classes
from pipelines.runtime import select_device, set_threads
from pipelines.stage import run_stage

log = logging.getLogger(__name__)


def loader_for(
    dataset: torch.utils.data.Dataset, batch_size: int, device: str
) -> torch.utils.data.DataLoader:
    """Batches for inference; on CUDA, worker processes and pinned memory."""
    cuda = device == "cuda"
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=4 if cuda else 0, pin_memory=cuda
    )


@torch.inference_mode()
def extract_features(
    backbone: Backbone, loader: torch.utils.data.DataLoader, device: str, desc: str = "features"
) -> np.ndarray:
    """Pooled pre-logit features for every image the loader yields, in order."""
    model = backbone.model.to(device)
    if device == "cuda":
        model = model.to(memory_format=torch.channels_last)
    chunks = []
    for images, _ in tqdm(loader, desc=desc, unit="batch", disable=None):
        images = images.to(device, non_blocking=True)
        if device == "cuda":
            images = images.to(memory_format=torch.channels_last)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            pooled = model.forward_head(model.forward_features(images), pre_logits=True)
        chunks.append(pooled.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, backbone.num_features), np.float32)


def compute_features(params: Params) -> dict[str, Path]:
    """Write ``<split>.npz`` (features, labels) for every split."""
    set_threads(params.threads)
    device = select_device(params.device)
    prepared, out_dir = Path(params.paths.prepared), Path(params.paths.features)
    manifest, classes = read_accepted(params.paths.validation), read_classes(prepared)
    backbone = load_backbone(params.model.backbone, params.model.weights)
    transform = build_transform(data_config_for(backbone, params.model.input_side(device)))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in SPLITS:
        dataset = ManifestImages(manifest[manifest["split"] == split], prepared, classes, transform)
        features = extract_features(
            backbone, loader_for(dataset, params.features.batch_size, device), device, desc=split
        )
        written[split] = out_dir / f"{split}.npz"
        np.savez(written[split], features=features, labels=np.asarray(dataset.targets))
        log.info("%s: %d x %d features", split, *features.shape)
    return written


def load_split(features_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(features_dir) / f"{split}.npz") as data:
        return data["features"], data["labels"]


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], compute_features, argv)


if __name__ == "__main__":
    sys.exit(main())
