"""Stage ``train``: LP-FT as the strategy stage's decision record says.

Phase 1, always: a linear probe (softmax regression on standardised features,
AdamW) on the cached frozen features of the ``features`` stage; the epoch with
the best validation accuracy is kept and the standardisation is folded into
the head. Phase 2, for ``top_blocks``, ``most_blocks`` and ``full``: the
fine-tuning engine (``transferops/models/finetune.py``) trains the recorded stages at
the recorded learning rates, starting from the probe's head, resuming from
``paths.checkpoints`` after an interruption. Runs data-parallel under
``torchrun``. Metrics and per-stage learning rates go to DVCLive; the model is
saved as safetensors plus the JSON needed to rebuild it. A retrain from a
classifier with the same classes (the champion's weights, for a drift
retrain) starts its probe from that classifier's head (``train.warm_start``):
it moves off what the champion knew instead of learning it again from zero.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from transferops.commands import run_stage
from transferops.config import Params
from transferops.data.datasets import ManifestImages, read_accepted, read_classes
from transferops.models.backbones import build_transform, data_config_for, load_backbone
from transferops.models.classifier import ClassifierConfig, save_classifier, starting_head
from transferops.models.features import load_split
from transferops.models.finetune import World, load_checkpoint
from transferops.models.recipe import read_side
from transferops.models.strategy import DECISION
from transferops.models.training import (
    fine_tunes,
    fingerprint,
    fit_classifier,
    train_transform,
)
from transferops.runtime import select_device, set_threads

log = logging.getLogger(__name__)


def train(params: Params) -> dict:
    """Probe on cached features, fine-tune what the decision unfreezes, save the classifier."""
    set_threads(params.threads)
    device = select_device(params.device)
    world = World.from_env(device)
    paths = params.paths
    decision = json.loads((Path(paths.profile) / DECISION).read_text())
    classes = read_classes(paths.prepared)
    backbone = load_backbone(params.model.backbone, params.model.weights)
    data_config = data_config_for(backbone, read_side(paths.features))
    manifest = read_accepted(paths.validation) if fine_tunes(decision, params.train) else None
    run_id = fingerprint(params, decision, manifest) if manifest is not None else ""
    resuming = manifest is not None and load_checkpoint(paths.checkpoints, run_id) is not None
    live = open_live(params, decision, resuming) if world.main else None
    start_head, no_start = (
        starting_head(params.model.weights, backbone.name, classes)
        if params.train.warm_start
        else (None, "train.warm_start is off")
    )
    fitted = fit_classifier(
        params,
        backbone,
        len(classes),
        {split: load_split(paths.features, split) for split in ("train", "val")},
        decision,
        None if manifest is None else images(params, manifest, classes, data_config),
        device=device,
        world=world,
        live=live,
        checkpoint_dir=Path(paths.checkpoints),
        run_id=run_id,
        resuming=resuming,
        start_head=start_head,
    )
    fitted.summary["probe"]["started_from"] = params.model.weights if start_head else no_start
    if world.main:
        for group, values in fitted.summary.items():  # next to the values DVCLive logged
            live.summary.setdefault(group, {}).update(values)
        live.end()
        config = ClassifierConfig(
            backbone=backbone.name,
            classes=classes,
            strategy=decision["strategy"],
            data_config=data_config,
            picture=params.data.picture().to_dict(),
            extra={
                "weights": params.model.weights,
                "trainable_stages": decision["trainable_stages"],
                "learning_rates": decision["learning_rates"],
                **fitted.summary,
            },
        )
        save_classifier(fitted.model, config, Path(paths.model))
    log.info("%s: %s", decision["strategy"], fitted.summary)
    return fitted.summary


def open_live(params: Params, decision: dict, resuming: bool):
    """DVCLive for this run (resumed with the checkpoint); params logged on a fresh run."""
    from dvclive import Live

    live = Live(dir=str(params.paths.train_log), save_dvc_exp=False, dvcyaml=None, resume=resuming)
    if not resuming:
        live.log_params({"strategy": decision["strategy"], **params.train.model_dump(mode="json")})
    return live


def images(params: Params, manifest, classes: list[str], data_config: dict) -> tuple:
    """(train, val) datasets of transformed images, for fine-tuning."""
    transforms = {
        "train": train_transform(data_config, params.train),
        "val": build_transform(data_config),
    }
    return tuple(
        ManifestImages(
            manifest[manifest["split"] == split],
            params.paths.prepared,
            classes,
            transforms[split],
            params.data.picture(),
        )
        for split in ("train", "val")
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], train, argv)


if __name__ == "__main__":
    sys.exit(main())
