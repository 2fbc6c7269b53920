"""Stage ``package``: the trained model into BentoML's model store, with lineage.

The BentoML model holds the weights, their config, the evaluation metrics and
the monitoring reference; its labels name the DVC data version, git revision,
backbone and strategy; its metadata holds every param (``params_json``). The tag is written to
``bento_model.json`` for the service, monitoring and flows to find.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

from pipelines.classifier import CONFIG, WEIGHTS, ClassifierConfig
from pipelines.config import Params, to_flat_dict
from pipelines.evaluate import METRICS, REFERENCE
from pipelines.lineage import data_version, git_revision
from pipelines.stage import run_stage
from pipelines.strategy import DECISION

log = logging.getLogger(__name__)
PACKAGE_RECORD = "bento_model.json"


def package(params: Params) -> str:
    """Save a new BentoML model version; return its tag."""
    import bentoml

    paths = params.paths
    config = ClassifierConfig.from_json((Path(paths.model) / CONFIG).read_text())
    metrics = json.loads((Path(paths.evaluation) / METRICS).read_text())
    decision = json.loads((Path(paths.profile) / DECISION).read_text())
    labels = {
        "data_version": data_version(paths.prepared),
        "git_revision": git_revision(),
        "backbone": config.backbone,
        "strategy": config.strategy,
        # What the selector recommends; `strategy` is what was trained (the
        # engine for partial fine-tuning is issue 5).
        "recommended_strategy": decision["strategy"],
    }
    metadata = {
        "classes": config.classes,
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        # BentoML metadata takes no None values: params travel as one JSON string.
        "params_json": json.dumps(to_flat_dict(params), sort_keys=True),
    }
    files = [
        Path(paths.model) / WEIGHTS,
        Path(paths.model) / CONFIG,
        Path(paths.evaluation) / METRICS,
        Path(paths.evaluation) / REFERENCE,
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
    (out_dir / PACKAGE_RECORD).write_text(
        json.dumps({"tag": tag, "labels": labels, "accuracy": metrics["accuracy"]}, indent=2)
    )
    log.info("packaged %s (data %s, git %s)", tag, labels["data_version"], labels["git_revision"])
    return tag


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], package, argv)


if __name__ == "__main__":
    sys.exit(main())
