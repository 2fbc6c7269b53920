"""What a packaged model carries (labels, metadata) and where the last package run left its tag."""

from __future__ import annotations

import json
from pathlib import Path

from transferops.config import Params, to_flat_dict
from transferops.models.saved import CONFIG, METRICS, ClassifierConfig
from transferops.models.strategy import DECISION
from transferops.registry.lineage import data_version, git_revision

PACKAGE_RECORD = "bento_model.json"


def lineage(params: Params) -> tuple[dict[str, str], dict]:
    """The labels and metadata a packaged model carries."""
    paths = params.paths
    config = ClassifierConfig.from_json((Path(paths.model) / CONFIG).read_text())
    metrics = json.loads((Path(paths.evaluation) / METRICS).read_text())
    decision = json.loads((Path(paths.profile) / DECISION).read_text())
    labels = {
        "data_version": data_version(paths.prepared),
        "git_revision": git_revision(),
        "backbone": config.backbone,
        "strategy": config.strategy,
        "accuracy": f"{metrics['accuracy']:.4f}",
        "macro_f1": f"{metrics['macro_f1']:.4f}",
    }
    metadata = {
        "classes": config.classes,
        "preprocessing": json.loads(config.to_json())["data_config"],
        "strategy": {
            "name": decision["strategy"],
            "trainable_stages": decision["trainable_stages"],
            "learning_rates": decision["learning_rates"],
            "reason": decision["reason"],
        },
        # BentoML metadata takes no None values: nested records travel as JSON strings.
        "metrics_json": json.dumps({k: v for k, v in metrics.items() if k != "per_class"}),
        "params_json": json.dumps(to_flat_dict(params), sort_keys=True),
        "test_images": metrics["n"],
    }
    return labels, metadata


def candidate_tag(package_dir: Path) -> str:
    """The tag the last package run saved."""
    record = Path(package_dir) / PACKAGE_RECORD
    if not record.is_file():
        raise FileNotFoundError(f"{record}: nothing packaged yet; run the pipeline first")
    return json.loads(record.read_text())["tag"]
