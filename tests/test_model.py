"""Evaluation outputs and the packaged model's lineage, on a really trained tiny model."""

import json
from pathlib import Path

import bentoml
import numpy as np

from pipelines.config import load_params


def test_evaluation_writes_metrics_picture_and_reference(trained_project: Path) -> None:
    params = load_params(trained_project)
    metrics = json.loads((params.paths.evaluation / "metrics.json").read_text())
    assert metrics["n"] == 120
    assert metrics["accuracy"] > 0.4, "10 classes: chance is 0.1"
    assert set(metrics["per_class"]) >= {"bag", "trouser"}
    assert (params.paths.evaluation / "confusion.png").stat().st_size > 10_000
    with np.load(params.paths.evaluation / "reference.npz") as ref:
        assert ref["embeddings"].shape == (120, 1280)
        assert np.allclose(ref["probabilities"].sum(1), 1, atol=1e-4)


def test_packaged_model_answers_lineage_questions(trained_project: Path) -> None:
    params = load_params(trained_project)
    record = json.loads((params.paths.package / "bento_model.json").read_text())
    model = bentoml.models.get(record["tag"])
    labels = model.info.labels
    assert labels["data_version"].startswith("manifest-"), "outside DVC: manifest hash"
    assert labels["git_revision"] and labels["backbone"] == "tf_efficientnet_lite0"
    decision = json.loads((params.paths.profile / "decision.json").read_text())
    assert labels["strategy"] == decision["strategy"], "the strategy that trained"
    packaged_params = json.loads(model.info.metadata["params_json"])
    assert packaged_params["data.train_size"] == 100
    assert model.info.metadata["accuracy"] > 0.4
    assert {p.name for p in Path(model.path).iterdir()} >= {
        "model.safetensors",
        "model.json",
        "metrics.json",
        "reference.npz",
    }
