"""The training flow: snapshot the data with DVC, reproduce the pipeline, push, gate.

Prefect owns time and retries; DVC owns the stage graph. Each step is a task
with its own logs in the Prefect UI; stages that are up to date are skipped
by DVC, so re-running the flow on unchanged data costs seconds. The packaged
candidate then faces the promotion gate (``pipelines/gate.py``): it becomes
the champion only when it beats the current one.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from flows.data import add_dataset, require_passed
from flows.dvc import run_dvc
from pipelines import champion
from pipelines.config import Params, load_params
from pipelines.evaluate import METRICS
from pipelines.gate import run_gate
from pipelines.package import PACKAGE_RECORD
from pipelines.prepare import incoming_drops

REPO = Path()


@task(cache_policy=NO_CACHE)
def snapshot_data(params: Params, dataset: str | None) -> list[str]:
    """Track every labelled drop with DVC (``dvc add``), after adding ``dataset``.

    ``dataset`` is checked first (``transferops data add``): one that fails
    stops the run here, so it never reaches training.
    """
    logger = get_run_logger()
    incoming = Path(params.paths.incoming)
    if dataset:
        added = require_passed(add_dataset(Path(dataset), params))
        logger.info("added %s as drop %s (version %s)", dataset, added.name, added.version)
    drops = incoming_drops(incoming)
    for drop in drops:
        run_dvc(["add", str(drop)], REPO, logger)
    return [str(d) for d in drops]


@task(cache_policy=NO_CACHE)
def reproduce(overrides: list[str]) -> None:
    """``dvc repro``; with overrides, ``dvc exp run -S ...`` (DVC's own form), for this run only."""
    logger = get_run_logger()
    if overrides:
        # `dvc exp run -S` writes the overrides into params.yaml; they are for this
        # run only (DVC keeps the experiment: `dvc exp show`), so put the file back.
        params_file = REPO / "params.yaml"
        original = params_file.read_bytes()
        try:
            run_dvc(["exp", "run", *[arg for o in overrides for arg in ("-S", o)]], REPO, logger)
        finally:
            params_file.write_bytes(original)
    else:
        run_dvc(["repro"], REPO, logger)


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def push_to_remote() -> None:
    """Send data and models to the DVC remote (I/O: retried)."""
    run_dvc(["push"], REPO, get_run_logger())


@task(cache_policy=NO_CACHE)
def gate_candidate(params: Params) -> dict:
    """Champion vs. the new candidate on the same test images; promote if it passes."""
    who = f"prefect flow run {runtime.flow_run.name} ({runtime.flow_run.id})"
    verdict = run_gate(params, who=who)
    get_run_logger().info("gate: %s", verdict.summary())
    return {"promoted": verdict.promote, "reasons": verdict.reasons, "report": verdict.report}


@task(cache_policy=NO_CACHE)
def training_outcome(params: Params) -> dict:
    package = json.loads((Path(params.paths.package) / PACKAGE_RECORD).read_text())
    metrics = json.loads((Path(params.paths.evaluation) / METRICS).read_text())
    return {
        "model_tag": package["tag"],
        "data_version": package["labels"]["data_version"],
        "accuracy": metrics["accuracy"],
        "accuracy_ci": metrics["ci"]["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "ece": metrics["ece"],
    }


@flow(name="transferops-training", log_prints=True)
def training_flow(dataset: str | None = None, overrides: list[str] | None = None) -> dict:
    """Snapshot data -> ``dvc repro`` -> ``dvc push`` -> gate; returns what happened.

    The result names the packaged candidate (``model_tag``), its metrics and
    data version, the gate's verdict and the champion afterwards.

    Args:
        dataset: a labelled ImageFolder to add as a new drop before training.
        overrides: params overrides in DVC's form, e.g. ``["train.lr=0.01"]``.
    """
    overrides = list(overrides or [])
    params = load_params(Path("params.yaml"), overrides)  # bad overrides fail here, named
    drops = snapshot_data(params, dataset)
    reproduce(overrides)
    push_to_remote()
    outcome = training_outcome(params) | {"drops": drops}
    outcome["gate"] = gate_candidate(params)
    outcome["champion"] = champion.current(params.paths.models).tag
    get_run_logger().info(
        "trained %s: accuracy %.3f (data %s); champion %s",
        outcome["model_tag"],
        outcome["accuracy"],
        outcome["data_version"],
        outcome["champion"],
    )
    return outcome
