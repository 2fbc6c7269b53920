"""The monitoring flow: one drift check; on drift, the training flow runs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.training import training_flow
from monitoring.drift import check_drift
from pipelines.config import load_params


@task(cache_policy=NO_CACHE)
def drift_check(overrides: list[str]) -> dict:
    verdict = check_drift(load_params(Path("params.yaml"), overrides))
    return asdict(verdict) | {"drift": verdict.drift}


@flow(name="transferops-monitoring", log_prints=True)
def monitoring_flow(
    retrain: bool = True, new_data: str | None = None, overrides: list[str] | None = None
) -> dict:
    """Check the latest traffic window; retrain when it has drifted.

    Args:
        retrain: run the training flow on a drift verdict.
        new_data: a labelled ImageFolder (e.g. labelled production images)
            that the retraining run adds to the dataset.
        overrides: params overrides, ``key=value``.
    """
    logger = get_run_logger()
    verdict = drift_check(list(overrides or []))
    result = {"verdict": verdict, "retrained": None}
    if verdict["drift"] and retrain:
        logger.warning("drift: %s -> retraining", "; ".join(verdict["reasons"]))
        result["retrained"] = training_flow(dataset=new_data, overrides=overrides)
    else:
        logger.info("verdict %s: no retraining", verdict["status"])
    return result
