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
from pipelines.recipe import choose_input_side, native_side, write_side
from pipelines.runtime import autocast, loader_for, select_device, set_threads, to_device
from pipelines.stage import run_stage

log = logging.getLogger(__name__)


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
        with autocast(device):
            pooled = model.forward_head(
                model.forward_features(to_device(images, device)), pre_logits=True
            )
        chunks.append(pooled.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, backbone.num_features), np.float32)


def compute_features(params: Params) -> dict[str, Path]:
    """Choose the input side (``side.json``); write ``<split>.npz`` (features, labels)."""
    set_threads(params.threads)
    device = select_device(params.device)
    prepared, out_dir = Path(params.paths.prepared), Path(params.paths.features)
    manifest, classes = read_accepted(params.paths.validation), read_classes(prepared)
    backbone = load_backbone(params.model.backbone, params.model.weights)
    train_rows = manifest[manifest["split"] == "train"]
    choice = choose_input_side(
        params,
        native=native_side(train_rows["width"], train_rows["height"]),
        n_train=len(train_rows),
        backbone_side=backbone.native_side,
        device=device,
    )
    log.info("input side %s", choice.reason)
    write_side(choice, out_dir)
    transform = build_transform(data_config_for(backbone, choice.side))
    written = {}
    for split in SPLITS:
        dataset = ManifestImages(
            manifest[manifest["split"] == split],
            prepared,
            classes,
            transform,
            params.data.picture(),
        )
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
