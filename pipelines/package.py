"""Stage ``package``: the trained model into BentoML's model store, with its lineage.

Every run saves a new model version (a candidate); the promotion gate
(``transferops/registry/gate.py``) decides whether it becomes the champion. A model
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
import sys
from pathlib import Path

from transferops.commands import run_stage
from transferops.config import Params
from transferops.models.saved import CONFIG, CONFUSION, METRICS, REFERENCE, RELIABILITY, WEIGHTS
from transferops.models.strategy import DECISION
from transferops.registry.packaging import PACKAGE_RECORD, lineage
from transferops.registry.store import save_model

log = logging.getLogger(__name__)


def package(params: Params) -> str:
    """Save a new BentoML model version; return its tag."""
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
    tag = save_model(params.package.model_name, files, labels, metadata)
    out_dir = Path(paths.package)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / PACKAGE_RECORD).write_text(json.dumps({"tag": tag, "labels": labels}, indent=2))
    log.info("packaged %s (data %s, git %s)", tag, labels["data_version"], labels["git_revision"])
    return tag


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], package, argv)


if __name__ == "__main__":
    sys.exit(main())
