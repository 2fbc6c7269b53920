"""Stage ``features``: choose the input side, then the frozen backbone's features per split.

Writes ``side.json`` (the side ``model.image_size`` resolves to, and why:
transferops/models/resolution.py) and ``<split>.npz`` (features, labels).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

from transferops.commands import run_stage
from transferops.config import Params
from transferops.data.datasets import SPLITS, ManifestImages, read_accepted, read_classes
from transferops.models.backbones import load_backbone, transform_for
from transferops.models.features import extract_features, save_split
from transferops.models.recipe import choose_input_side, native_side, write_side
from transferops.runtime import loader_for, select_device, set_threads

log = logging.getLogger(__name__)


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
    transform = transform_for(backbone, choice.side)
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
        written[split] = save_split(out_dir, split, features, np.asarray(dataset.targets))
        log.info("%s: %d x %d features", split, *features.shape)
    return written


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], compute_features, argv)


if __name__ == "__main__":
    sys.exit(main())
