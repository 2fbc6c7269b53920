"""Stage ``profile``: how far the task is from what the pretrained network knows.

On the cached frozen features (no image is re-read for them): dataset size,
LogME, LEEP (from the backbone's own ImageNet head applied to the cached
pre-logits), a k-NN probe; and, from a forward pass over a sample of training
images, the per-stage BatchNorm domain distance, which says whether the shift
sits early (input-level: colour, resolution, texture) or late (semantic).
Writes ``profile.json``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from transferops.commands import run_stage
from transferops.config import Params
from transferops.data.datasets import read_accepted, read_classes
from transferops.models.backbones import load_backbone, transform_for
from transferops.models.features import load_split
from transferops.models.profiling import bn_sample_loader, features_at, measure, write_profile
from transferops.models.recipe import read_side
from transferops.runtime import select_device, set_threads

log = logging.getLogger(__name__)


def profile(params: Params) -> dict:
    """Profile the prepared dataset on the configured backbone; write profile.json.

    The numbers are measured at ``profile.side`` (the selector's thresholds were
    fitted there), reusing the features stage's output when training runs at
    that side too.
    """
    set_threads(params.threads)
    device = select_device(params.device)
    paths = params.paths
    classes = read_classes(paths.prepared)
    backbone = load_backbone(params.model.backbone, params.model.weights)
    manifest = read_accepted(paths.validation)
    side = params.profile.side
    transform = transform_for(backbone, side)
    if read_side(paths.features) == side:
        train, val = load_split(paths.features, "train"), load_split(paths.features, "val")
    else:
        train, val = (
            features_at(
                backbone,
                manifest[manifest["split"] == split],
                paths.prepared,
                classes,
                transform,
                params,
                device,
            )
            for split in ("train", "val")
        )
    loader = bn_sample_loader(
        manifest[manifest["split"] == "train"], paths.prepared, classes, transform, params, device
    )
    numbers = measure(backbone, train, val, loader, len(classes), device, side)
    numbers["train_side"] = read_side(paths.features)
    write_profile(numbers, Path(paths.profile))
    return numbers


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], profile, argv)


if __name__ == "__main__":
    sys.exit(main())
