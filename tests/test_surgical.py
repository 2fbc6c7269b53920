"""Surgical fine-tuning for real: from a packaged model's weights, only its first stages move."""

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from tests.commands import run_stage
from tests.conftest import write_params
from transferops.models.backbones import stage_namer
from transferops.models.classifier import WEIGHTS, load_classifier
from transferops.models.finetune import CHECKPOINT


def test_surgical_retrain_from_the_champion_weights(trained_project: Path, tmp_path: Path) -> None:
    paths = yaml.safe_load(trained_project.read_text())["paths"]
    champion_weights = Path(paths["model"]) / WEIGHTS
    moved = {
        f"paths.{key}": str(tmp_path / key)
        for key in ("features", "model", "checkpoints", "train_log", "profile")
    }
    params = write_params(
        tmp_path / "params.yaml",
        moved | {"strategy.force": "surgical", "model.weights": str(champion_weights)},
        base=trained_project,
    )
    for stage in ("features", "profile", "strategy", "train"):
        run_stage(stage, params)
    decision = json.loads((tmp_path / "profile" / "decision.json").read_text())
    assert decision["strategy"] == "surgical"
    assert decision["trainable_stages"] == ["stem", "block0", "classifier"]

    before = load_file(str(champion_weights))
    stage = stage_namer(load_classifier(tmp_path / "model")[0])
    # The last epoch's state (the saved model is the best validation epoch, which
    # on this tiny data may be the probe itself).
    last = torch.load(tmp_path / "checkpoints" / CHECKPOINT, weights_only=True)["model"]
    changed = {stage(k) for k in before if not before[k].equal(last[k])}
    assert {"stem", "block0"} <= changed, "the first stages trained"
    assert changed <= {"stem", "block0", "classifier"}, f"later stages moved: {changed}"
    saved = load_file(str(tmp_path / "model" / WEIGHTS))
    kept = {stage(k) for k in before if not before[k].equal(saved[k])}
    assert kept <= {"stem", "block0", "classifier"}, "the champion's other stages are kept"
    # The probe started from the champion's own head (train.warm_start), and moved off it.
    probe = json.loads((tmp_path / "train_log" / "metrics.json").read_text())["probe"]
    assert probe["started_from"] == str(champion_weights), probe
    assert probe["best_epoch"] >= 1 and "start_val_accuracy" in probe, probe
