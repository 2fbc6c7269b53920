"""The monitoring flow: a drift check, the guarded retrain decision, the retrain request."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.events import api_url, request_retrain
from flows.records import recorded_run
from monitoring.decision import decide_and_record
from monitoring.drift import check_drift, read_history
from transferops.config import DEFAULT_PARAMS, Params, load_params
from transferops.models.saved import WEIGHTS
from transferops.registry import champion
from transferops.registry.store import stored_model, stored_model_dir


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


@task(cache_policy=NO_CACHE)
def emit_retrain_request(
    verdict: dict, decision: dict, overrides: list[str], new_data: str | None
) -> dict:
    """The decision said retrain: emit the event the training deployment answers."""
    logger = get_run_logger()
    if api_url() is None:
        logger.warning(
            "PREFECT_API_URL is not set: the event goes to this run's temporary server and "
            "nothing will retrain. Start `prefect server start` and `transferops deploy` "
            "(docs/orchestration.md)."
        )
    why = {
        "reason": decision["reason"],
        "strategy": decision["strategy"],
        "check": decision.get("check"),
        "report_dir": verdict.get("report_dir"),
        "model_tag": verdict.get("model_tag"),
    }
    sent = request_retrain(
        model_tag=verdict.get("model_tag") or "unknown",
        overrides=overrides,
        new_data=new_data,
        why=why,
    )
    logger.warning("retrain requested (%s): %s; event %s", why["strategy"], why["reason"], sent)
    return sent


@flow(name="transferops-monitoring", log_prints=True)
def monitoring_flow(
    retrain: bool = True,
    new_data: str | None = None,
    overrides: list[str] | None = None,
    trigger: dict | None = None,
    params_file: str = str(DEFAULT_PARAMS),
) -> dict:
    """Check the latest traffic window; when the decision says retrain, emit the request.

    The retraining itself is the training deployment's run, started by the
    event through Prefect's guards (flows/events.py; ``transferops deploy``).

    Args:
        retrain: decide after the check (and maybe request a retrain);
            False only reports.
        new_data: a labelled ImageFolder (e.g. labelled production images)
            that the retraining run adds to the dataset.
        overrides: params overrides, ``key=value``; they go to the retraining run too.
        trigger: what started this run (a schedule fills this in); recorded.
        params_file: the params file (``transferops --params FILE monitor``).
    """
    logger = get_run_logger()
    with recorded_run(load_params(params_file), "monitoring", trigger) as result:
        overrides = list(overrides or [])
        params = load_params(params_file, overrides)  # bad overrides fail here, named
        verdict = drift_check(params)
        result |= {"verdict": verdict, "decision": None, "requested": None}
        result["model_tag"] = verdict.get("model_tag")
        result["report_dir"] = verdict.get("report_dir")
        result["data_version"] = serving_data_version(verdict.get("model_tag"))
        if not retrain:
            logger.info("verdict %s; retraining off for this run", verdict["status"])
            return result
        decision = retrain_decision(params)
        result["decision"] = decision
        if decision["retrain"]:
            result["requested"] = emit_retrain_request(
                verdict, decision, [*overrides, *decision["overrides"]], new_data
            )
        else:
            logger.info("verdict %s; no retraining: %s", verdict["status"], decision["reason"])
    return result


def serving_data_version(model_tag: str | None) -> str | None:
    """The data version the checked model was trained on (its package labels)."""
    if not model_tag:
        return None
    try:
        return stored_model(model_tag).info.labels.get("data_version")
    except FileNotFoundError:
        return None
