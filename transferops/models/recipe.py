"""How long a default training run fine-tunes, and the input side it can afford.

The train stage, the strategy record, ``image_size: auto`` and the benchmarks
all plan a run through these functions, so what is estimated is what runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from transferops.config import Params, TrainParams
from transferops.models.resolution import SideChoice, choose_side

SIDE_RECORD = "side.json"  # in paths.features: the input side every later stage uses
PROFILE = "profile.json"  # in paths.profile: the profile stage's numbers, which the strategy reads


def epochs_for(n_train: int, batch_size: int, epochs: int, min_steps: int) -> int:
    """Fine-tuning epochs: ``epochs``, raised so that small datasets get ``min_steps`` steps."""
    if epochs == 0:
        return 0
    steps_per_epoch = max(1, n_train // batch_size)
    return max(epochs, math.ceil(min_steps / steps_per_epoch))


def planned_images(n_train: int, cfg: TrainParams) -> int:
    """Training images the fine-tuning phase plans to process (before any early stop)."""
    epochs = epochs_for(n_train, cfg.batch_size, cfg.epochs, cfg.min_steps)
    steps = max(1, n_train // cfg.batch_size)
    return epochs * steps * min(cfg.batch_size, n_train)


def native_side(widths: pd.Series, heights: pd.Series) -> float:
    """Median shorter side of the training images as their files hold them (px)."""
    sides = pd.concat([widths, heights], axis=1).min(axis=1).dropna()
    return float(sides.median()) if len(sides) else 0.0


def choose_input_side(
    params: Params, *, native: float, n_train: int, backbone_side: int, device: str
) -> SideChoice:
    """The side ``model.image_size`` asks for; ``auto`` decides from the data and the budget."""
    model = params.model
    planned = planned_images(n_train, params.train)
    if model.image_size != "auto":
        side = backbone_side if model.image_size is None else int(model.image_size)
        return SideChoice(
            side, native, side, planned, 0.0, 0.0, f"{side} px: set by model.image_size"
        )
    return choose_side(
        native=native,
        backbone_side=backbone_side,
        planned_images=planned,
        budget_s=model.auto.budget_s.on(device),
        images_per_s_at_64=model.auto.images_per_s.on(device),
        max_upsample=model.auto.max_upsample,
    )


def write_side(choice: SideChoice, features_dir: Path) -> None:
    Path(features_dir).mkdir(parents=True, exist_ok=True)
    (Path(features_dir) / SIDE_RECORD).write_text(json.dumps(choice.to_dict(), indent=2))


def read_side(features_dir: Path) -> int:
    """The input side the features stage chose (profile and train use the same)."""
    path = Path(features_dir) / SIDE_RECORD
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no recorded input side; run the features stage first")
    return int(json.loads(path.read_text())["side"])
