"""The monitoring flow: a drift check, the guarded retrain decision, the retrain request.

When the guards allow a retrain, the drifted traffic's kept images with late
labels are harvested into a drop (``flows/data.py``); the request carries it,
and without it (too few labels: ``waiting for labels``, with a label queue
beside the check's report) no retrain is requested.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.data import (
    add_dataset,
    harvest_dataset,
    harvested_before,
    pending_harvest,
    require_passed,
)
from flows.events import api_url, request_retrain
from flows.records import recorded_run
from monitoring.decision import LabelsFound, decide_and_record
from monitoring.drift import check_drift, read_history
from transferops.config import DEFAULT_PARAMS, Params, load_params, run_may_change
from transferops.data.datasets import DataSourceError
from transferops.data.harvest import HarvestRefused, TooFewLabels
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
def retrain_decision(params: Params, report_dir: str | None = None) -> dict:
    """K-of-N persistence, cooldown, new labelled data, and a recorded reason
    (monitoring/decision.py)."""
    drift_dir = Path(params.paths.reports) / "drift"
    history = read_history(drift_dir)
    decision = decide_and_record(
        drift_dir,
        history,
        params.monitor.retrain,
        surgical_overrides(params),
        harvest=harvest_drifted_traffic(params, report_dir),
    )
    return asdict(decision)


def harvest_drifted_traffic(
    params: Params, report_dir: str | None
) -> Callable[[datetime | None], LabelsFound]:
    """The decision's harvest: the labelled kept images since the drift began, as a drop.

    Too few labels: the label queue goes beside the check's report
    (``<report>/queue/``), aimed at the classes still short (twice the labels each lacks).
    """

    def harvest(since: datetime | None) -> LabelsFound:
        try:
            record = harvest_dataset(params, since=since)
        except TooFewLabels as short:
            if (pending := pending_harvest(params, since)) is not None:
                # A harvest of this drift that no run has trained on yet (its retrain
                # failed, or someone harvested by hand): train on it, not wait for more.
                counts = pending.provenance["labels_per_class"]
                return LabelsFound(drop=pending.name, counts=counts)
            wanted = {c: need - have for c, (have, need) in short.short.items()}
            queue = write_label_queue(params, report_dir, since, wanted)
            return LabelsFound(counts=short.counts, short=short.short, queue=queue)
        except (HarvestRefused, DataSourceError) as refused:
            return LabelsFound(problem=str(refused))
        if record.status != "passed":
            return LabelsFound(
                problem=f"the harvest failed its data checks ({record.problems} problem(s)): "
                f"{record.report}"
            )
        return LabelsFound(drop=record.name, counts=record.provenance["labels_per_class"])

    return harvest


def write_label_queue(
    params: Params, report_dir: str | None, since: datetime | None, wanted: dict[str, int]
) -> str | None:
    """The queue of the drifted traffic's images to label first; its page's path."""
    from monitoring.queue import QUEUE_HTML, label_queue

    if report_dir is None:
        return None
    out = Path(report_dir) / "queue"
    exclude, _ = harvested_before(Path(params.paths.incoming))
    label_queue(params, out, None, since=since, exclude=exclude, wanted=wanted)
    return str(out / QUEUE_HTML)


@task(cache_policy=NO_CACHE)
def emit_retrain_request(
    verdict: dict, decision: dict, overrides: list[str], new_data: str | None
) -> dict:
    """The decision said retrain: emit the event the training deployment answers; it carries
    the decision's harvest (the drop of the drifted traffic) to train on."""
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
        "harvest": decision.get("harvest"),
    }
    sent = request_retrain(
        model_tag=verdict.get("model_tag") or "unknown",
        overrides=overrides,
        new_data=new_data,
        harvest=decision.get("harvest"),
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
        new_data: a labelled ImageFolder (e.g. labelled production images):
            checked and added as a drop when the decision retrains; the event
            names the drop.
        overrides: params overrides, ``key=value``; those in ``orchestrate.run_keys``
            go to the retraining run too.
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
        decision = retrain_decision(params, verdict.get("report_dir"))
        result["decision"] = decision
        if decision["retrain"]:
            # The run takes only what orchestrate.run_keys allows; this check's own
            # settings (monitor.*, say) stay here. A folder goes as a checked drop.
            keys = params.orchestrate.run_keys
            forwarded = [o for o in overrides if run_may_change(o.partition("=")[0], keys)]
            if new_data:
                new_data = require_passed(add_dataset(Path(new_data), params)).name
            result["requested"] = emit_retrain_request(
                verdict, decision, [*forwarded, *decision["overrides"]], new_data
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
