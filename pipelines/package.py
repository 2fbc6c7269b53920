"""Stage ``package``: the trained model into BentoML's model store, with its lineage.

Every run saves a new model version (a candidate); the promotion gate
(``pipelines/gate.py``) decides whether it becomes the champion. A model
answers, from the store alone:

- labels (short, searchable): DVC data version, git revision, backbone,
  strategy, and the headline test metrics;
- metadata: class names, the preprocessing config, the strategy record
  (what trained, at which learning rates, and why), the evaluation metrics
  with their intervals, and every param (``params_json``);
- files: weights and config, ``metrics.json``, the monitoring reference,
  ``decision.json`` and the evaluation pictures.

The tag is written to ``bento_model.json`` for the gate and the flows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

from pipelines.classifier import CONFIG, WEIGHTS, ClassifierConfig, load_classifier
from pipelines.config import Params, to_flat_dict
from pipelines.evaluate import CONFUSION, METRICS, REFERENCE, RELIABILITY
from pipelines.lineage import data_version, git_revision
from pipelines.stage import run_stage
from pipelines.strategy import DECISION

log = logging.getLogger(__name__)
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


def package(params: Params) -> str:
    """Save a new BentoML model version; return its tag."""
    import bentoml

    paths = params.paths
    labels, metadata = lineage(params)
    files = [
        Path(paths.model) / WEIGHTS,
        Path(paths.model) / CONFIG,
        Path(paths.evaluation) / METRICS,
        Path(paths.evaluation) / REFERENCE,
        Path(paths.evaluation) / CONFUSION,
        Path(paths.evaluation) / RELIABILITY,
        Path(paths.profile) / DECISION,
    ]
    with bentoml.models.create(
        params.package.model_name, labels=labels, metadata=metadata
    ) as model:
        for file in files:
            shutil.copy2(file, Path(model.path) / file.name)
    tag = str(model.tag)
    out_dir = Path(paths.package)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PACKAGE_RECORD).write_text(json.dumps({"tag": tag, "labels": labels}, indent=2))
    log.info("packaged %s (data %s, git %s)", tag, labels["data_version"], labels["git_revision"])
    return tag


def candidate_tag(package_dir: Path) -> str:
    """The tag the last package run saved."""
    record = Path(package_dir) / PACKAGE_RECORD
    if not record.is_file():
        raise FileNotFoundError(f"{record}: nothing packaged yet; run the pipeline first")
    return json.loads(record.read_text())["tag"]


def stored_model(tag: str):
    """``tag`` (``name:version``, ``name:latest`` or ``name``) in the local BentoML store.

    Raises FileNotFoundError naming the tag and the store when it is absent.
    """
    import bentoml

    try:
        return bentoml.models.get(tag)
    except (bentoml.exceptions.BentoMLException, ValueError) as err:
        store = os.environ.get("BENTOML_HOME", "~/bentoml")
        problem = "is not in" if isinstance(err, bentoml.exceptions.NotFound) else "is not a tag of"
        raise FileNotFoundError(
            f"model {tag!r} {problem} the BentoML store at {store} "
            "(list them with `transferops models`)"
        ) from err


def stored_model_dir(tag: str) -> Path:
    return Path(stored_model(tag).path)


def resolve_tag(tag: str) -> str:
    """The full ``name:version`` of ``tag``: a champion is never ``latest``."""
    return str(stored_model(tag).tag)


def load_stored(tag: str):
    """A packaged model and its config, rebuilt from the store (safetensors, no pickle)."""
    return load_classifier(stored_model_dir(tag))


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], package, argv)


if __name__ == "__main__":
    sys.exit(main())
