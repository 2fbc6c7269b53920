"""The monitoring flow: a drift check, the guarded retrain decision, and the retrain."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.training import training_flow
from monitoring.decision import decide_and_record
from monitoring.drift import check_drift, read_history
from pipelines import champion
from pipelines.classifier import WEIGHTS
from pipelines.config import Params, load_params
from pipelines.package import stored_model_dir


@task(cache_policy=NO_CACHE)
def drift_check(params: Params) -> dict:
    return check_drift(params).to_dict()


def surgical_overrides(params: Params) -> list[str] | None:
    """Start from the champion's weights and train only its first stages; None without one."""
    holder = champion.current(params.paths.models)
    if holder is None:
        return None
    weights = (stored_model_dir(holder.tag) / WEIGHTS).resolve()
    return ["strategy.force=surgical", f"model.weights={weights}"]


@task(cache_policy=NO_CACHE)
def retrain_decision(params: Params) -> dict:
    """K-of-N persistence, cooldown and a recorded reason (monitoring/decision.py)."""
    drift_dir = Path(params.paths.reports) / "drift"
    history = read_history(drift_dir)
    decision = decide_and_record(
        drift_dir, history, params.monitor.retrain, surgical_overrides(params)
    )
    return asdict(decision)


@flow(name="transferops-monitoring", log_prints=True)
def monitoring_flow(
    retrain: bool = True, new_data: str | None = None, overrides: list[str] | None = None
) -> dict:
    """Check the latest traffic window; retrain when the decision says so.

    Args:
        retrain: decide (and maybe start the training flow) after the check;
            False only reports.
        new_data: a labelled ImageFolder (e.g. labelled production images)
            that the retraining run adds to the dataset.
        overrides: params overrides, ``key=value``.
    """
    logger = get_run_logger()
    overrides = list(overrides or [])
    params = load_params(Path("params.yaml"), overrides)
    verdict = drift_check(params)
    result = {"verdict": verdict, "decision": None, "retrained": None}
    if not retrain:
        logger.info("verdict %s; retraining off for this run", verdict["status"])
        return result
    decision = retrain_decision(params)
    result["decision"] = decision
    if decision["retrain"]:
        logger.warning("retraining (%s): %s", decision["strategy"], decision["reason"])
        result["retrained"] = training_flow(
            dataset=new_data, overrides=[*overrides, *decision["overrides"]]
        )
    else:
        logger.info("verdict %s; no retraining: %s", verdict["status"], decision["reason"])
    return result
