"""The training flow: snapshot the data with DVC, reproduce the pipeline, push, gate.

Prefect owns time and retries; DVC owns the stage graph. Every DVC stage is a
task of its own (``dvc repro STAGE``, in dvc.yaml's order) with its logs in
the Prefect UI, retried when it failed transiently (a held DVC lock, remote
I/O); DVC calls are serialised across processes (flows/dvc.py). Stages that
are up to date are skipped by DVC, so re-running the flow on unchanged data
costs seconds. The packaged candidate then faces the promotion gate
(``transferops/registry/gate.py``): it becomes the champion only when it beats the
current one, and the flow waits for the service to serve it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE

from flows.data import add_dataset, checkout_version, list_versions, require_passed
from flows.dvc import DvcError, pipeline_stages, run_dvc
from flows.records import recorded_run
from flows.serving import http_client
from transferops.config import (
    DEFAULT_PARAMS,
    Params,
    RunRefused,
    load_params,
    refuse_unlisted_changes,
    run_changes,
    write_run_params,
)
from transferops.data.datasets import DataSourceError
from transferops.data.preparation import incoming_drops
from transferops.files import Held, exclusive
from transferops.models.saved import METRICS
from transferops.names import name_problem
from transferops.registry import champion
from transferops.registry.packaging import PACKAGE_RECORD

REPO = Path()
TRAINING_LOCK = Path(".dvc") / "tmp" / "transferops-training.lock"
# tell_service: a service that has not answered at all by then is not running. Nothing
# listening at the address (connection refused) says so at once.
NO_ANSWER_S = 5
VERSIONS = Path("data") / "versions"  # data versions restored for a run (data_version=...)
DATA_VERSION = re.compile(r"[0-9a-f]{32}(\.dir)?")  # DVC's md5; joined into a path below


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
def check_harvest(params: Params, harvest: str) -> dict:
    """The drop a drift retrain must train on: a harvest that passed its checks.

    The name comes from the event's payload: it must be a plain drop name, and
    that drop must be under ``paths.incoming`` with a passed record, or the run
    stops here: a retrain on unchanged data learns nothing.
    """
    if problem := name_problem("harvest", harvest):
        raise DataSourceError(f"the retrain request's harvest: {problem}")
    return passed_drop(params, harvest, "harvest")


def passed_drop(params: Params, name: str, what: str) -> dict:
    """Drop ``name`` under ``paths.incoming`` with a passed record, or DataSourceError."""
    incoming = Path(params.paths.incoming)
    passed = [v for v in list_versions(params.paths.registry) if v.name == name]
    if not (incoming / name).is_dir() or not passed or passed[-1].status != "passed":
        raise DataSourceError(
            f"the retrain request names {what} {name!r}, which is not a drop under "
            f"{incoming} that passed its checks (see `transferops data list`): not training"
        )
    return {"name": name, "version": passed[-1].version, "images": passed[-1].images}


def requested_dataset(params: Params, dataset: str, remote: bool) -> dict | None:
    """What a run's ``dataset`` is: a drop under ``paths.incoming`` (a name or its path) is
    used as it is, once it passed its checks; any other folder is added as a new drop
    (None) only from this machine's own shell. A run started by an event or the API
    (``remote``: a deployment's) never reads a path elsewhere on the worker's disk."""
    incoming = Path(params.paths.incoming).resolve()
    plain = "/" not in dataset and os.sep not in dataset
    resolved = (incoming / dataset if plain else Path(dataset)).resolve()
    if resolved.parent == incoming:
        return passed_drop(params, resolved.name, "new_data")
    if remote:
        raise DataSourceError(
            f"the retrain request's new_data {dataset!r} is not a drop under {incoming}: a run "
            "started by an event or the API reads only drops that were added there "
            "(`transferops data add`); not training"
        )
    return None


def transient_failure(task, task_run, state) -> bool:
    """Prefect's retry condition: retry what may pass (DVC lock, remote I/O), not a bug."""
    try:
        state.result()
    except DvcError as err:
        return err.transient
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(task_run_name="dvc repro {stage}", cache_policy=NO_CACHE)
def reproduce_stage(stage: str) -> str:
    """``dvc repro --single-item STAGE``: DVC skips it when nothing it depends on changed.

    The flow runs the stages in dvc.yaml's order, so the stages upstream were
    brought up to date by the tasks before; without ``--single-item`` DVC would
    check every one of them again in every task (1 s per stage here, quadratic
    in the pipeline's length, and a "didn't change, skipping" line each).
    """
    output = run_dvc(["repro", "--single-item", stage], REPO, get_run_logger())
    return "ran" if f"Running stage '{stage}'" in output else "up to date"


@task(cache_policy=NO_CACHE)
def restore_data_version(version: str) -> list[str]:
    """Materialise a recorded data version with DVC; overrides that make it the whole dataset.

    The version is a prepared dataset (folder + ``manifest.csv`` with its
    splits): it becomes the source, and no drops are merged on top of it.
    """
    folder = VERSIONS / version.removesuffix(".dir")
    if not (folder / "manifest.csv").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        checkout_version(version, folder, REPO)
    no_drops = VERSIONS / "no-drops"
    no_drops.mkdir(parents=True, exist_ok=True)
    return [
        "data.format=imagefolder",
        f"data.source={folder / 'manifest.csv'}",
        f"paths.incoming={no_drops}",
    ]


@contextlib.contextmanager
def params_for_this_run(params: Params) -> Iterator[bool]:
    """Give the DVC stages this run's params without touching params.yaml.

    What ``params`` changes from params.yaml goes to ``RUN_PARAMS`` (DVC
    watches it and the stages load it on top, transferops/config.py); it is
    emptied when the block ends. A run killed inside leaves its changes there
    until the next run starts, and params.yaml as it was. Yields whether the
    run changes anything.
    """
    base = load_params(DEFAULT_PARAMS)
    changes = run_changes(base, params)
    write_run_params(changes)
    try:
        yield params != base
    finally:
        write_run_params(run_changes(base, base))


@contextlib.contextmanager
def one_training_run(who: str) -> Iterator[None]:
    """Hold the project's training lock for the block; refuse when another run holds it.

    Every caller (the CLI, a deployment run, cron calling the CLI) takes it, so
    two runs never rebuild the same outputs at once and the gate always scores
    the candidate this run packaged.
    """
    try:
        with exclusive(TRAINING_LOCK, who):
            yield
    except Held as held:
        raise TrainingBusy(
            f"another training run is in progress ({held.holder}; lock {TRAINING_LOCK}): "
            "this one does not start. Wait for it to end, then start again."
        ) from None


class TrainingBusy(RuntimeError):
    """A training run was asked for while another one runs in the same project."""


def refuse_when_busy() -> None:
    """Raise :class:`TrainingBusy` now when another run holds the lock.

    For callers in a terminal: they hear it before Prefect starts (its
    temporary server alone takes 20 s on 2 cores). The flow still takes the
    lock itself, so a run that starts in between is refused there.
    """
    with one_training_run(f"a training run starting (pid {os.getpid()})"):
        pass


@task(cache_policy=NO_CACHE)
def save_experiment() -> str:
    """Keep a run with overrides as a DVC experiment (``dvc exp show`` lists it)."""
    saved = run_dvc(["exp", "save"], REPO, get_run_logger()).strip()
    return saved.rpartition(":")[2].strip()  # "Experiment has been saved as: NAME"


@task(retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def push_to_remote() -> None:
    """Send data and models to the DVC remote (I/O: retried)."""
    run_dvc(["push"], REPO, get_run_logger())


@task(cache_policy=NO_CACHE)
def gate_candidate(params: Params, candidate: str) -> dict:
    """Champion vs. this run's candidate on the same test images; promote if it passes."""
    from transferops.registry.gate import run_gate  # torch and timm: not in every flow process

    who = f"prefect flow run {runtime.flow_run.name} ({runtime.flow_run.id})"
    verdict = run_gate(params, candidate, who=who)
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


@task(cache_policy=NO_CACHE)
def tell_service(params: Params, champion_tag: str | None) -> dict:
    """Wait until the service at ``orchestrate.service_url`` serves the champion.

    The service follows ``models/champion.json`` by itself (it looks every
    ``serve.switch_poll_s``); this confirms the switch. A service that does
    not answer or has not switched in ``orchestrate.switch_timeout_s`` is a
    warning, not a failed run: the promotion stands either way.
    """
    logger = get_run_logger()
    url = params.orchestrate.service_url
    if not url or champion_tag is None:
        return {"url": url, "serving": None, "switched": None}
    headers = {}
    if params.serve.api_key_env and same_origin(url, load_params(DEFAULT_PARAMS)):
        headers["X-API-Key"] = os.environ.get(params.serve.api_key_env, "")
    elif params.serve.api_key_env:
        logger.warning("%s is not params.yaml's orchestrate.service_url: no API key sent", url)
    started, answered, refused = time.monotonic(), False, False
    serving = None
    while time.monotonic() - started < params.orchestrate.switch_timeout_s:
        try:
            response = http_client().get(f"{url}/v1/metadata", headers=headers, timeout=5)
            answered = True
            serving = response.json().get("model") if response.status_code == 200 else None
        except httpx.ConnectError:  # nothing listens there (a starting service loads the champion)
            serving, refused = None, True
        except (httpx.HTTPError, ValueError):
            serving = None
        if serving == champion_tag:
            waited = time.monotonic() - started
            logger.info("%s serves %s (after %.1f s)", url, champion_tag, waited)
            return {"url": url, "serving": serving, "switched": True, "after_s": round(waited, 1)}
        if not answered and (refused or time.monotonic() - started > NO_ANSWER_S):
            logger.warning(
                "no service answers at %s; it will load %s when it starts", url, champion_tag
            )
            return {"url": url, "serving": None, "switched": None}
        time.sleep(1)
    logger.warning("%s still serves %s, not the champion %s", url, serving, champion_tag)
    return {"url": url, "serving": serving, "switched": False}


def refuse_what_a_run_may_not_ask(
    params: Params, dataset: str | None, data_version: str | None
) -> dict | None:
    """Before anything runs, everything a run was asked that it may not do, named at once
    (:class:`RunRefused`): a key outside ``orchestrate.run_keys`` changed from params.yaml,
    a ``dataset`` outside ``paths.incoming`` in a deployment's run, a data version that is
    not a DVC hash. Returns the requested drop when ``dataset`` is one."""
    problems, drop = [], None
    try:
        refuse_unlisted_changes(load_params(DEFAULT_PARAMS), params, "this training run")
    except RunRefused as refused:
        problems.append(str(refused))
    if dataset:
        try:
            drop = requested_dataset(params, dataset, remote=bool(runtime.deployment.id))
        except DataSourceError as refused:
            problems.append(str(refused))
    if data_version and not DATA_VERSION.fullmatch(data_version):
        problems.append(
            f"data version {data_version!r} is not a DVC hash (32 hex digits, optionally "
            ".dir): see `transferops data list` or a model's data_version"
        )
    if problems:
        raise RunRefused("refused before anything ran: " + "; ".join(problems))
    return drop


def same_origin(url: str, trusted: Params) -> bool:
    """Whether ``url`` has the scheme, host and port of params.yaml's service URL (the only
    place the service's API key is ever sent)."""
    from urllib.parse import urlsplit

    def origin(address: str) -> tuple:
        parts = urlsplit(address)
        return parts.scheme, parts.hostname, parts.port

    own = trusted.orchestrate.service_url
    return bool(own) and origin(url) == origin(own)


def run_overrides(overrides: list[str] | None, strategy: str | None) -> list[str]:
    """The run's params overrides; a forced strategy is one more (``strategy.force``)."""
    return [*(overrides or []), *([f"strategy.force={strategy}"] if strategy else [])]


@flow(name="transferops-training", log_prints=True)
def training_flow(
    dataset: str | None = None,
    data_version: str | None = None,
    overrides: list[str] | None = None,
    strategy: str | None = None,
    trigger: dict | None = None,
    params_file: str = str(DEFAULT_PARAMS),
    harvest: str | None = None,
) -> dict:
    """Snapshot data -> ``dvc repro``, stage by stage -> push -> gate -> tell the service.

    The result names the packaged candidate (``model_tag``), its metrics and
    data version, the gate's verdict, the champion afterwards and whether the
    service switched to it; a record of the run goes under ``reports/runs/``.

    Args:
        dataset: a labelled ImageFolder or manifest to add as a new drop first.
        data_version: train on a recorded data version instead (a DVC hash,
            e.g. a model's ``data_version``), restored with DVC.
        overrides: params overrides for this run, e.g. ``["train.lr=0.01"]``.
        strategy: force a freeze strategy (``strategy.force``).
        trigger: what started the run (a drift event fills this in); recorded.
        params_file: the params file (``transferops --params FILE``); what it
            changes from params.yaml reaches the stages through ``RUN_PARAMS``.
        harvest: the harvested drop a drift retrain trains on (already under
            ``paths.incoming``; the run stops unless it passed its checks).

    Raises:
        TrainingBusy: another training run of this project is in progress.
    """
    who = f"flow run {runtime.flow_run.name} (pid {os.getpid()}, since {time.ctime()})"
    with (
        one_training_run(who),
        recorded_run(load_params(params_file), "training", trigger) as outcome,
    ):
        overrides = run_overrides(overrides, strategy)
        params = load_params(params_file, overrides)  # bad overrides fail here, named
        drop = refuse_what_a_run_may_not_ask(params, dataset, data_version)
        if drop is not None:  # a drop already under paths.incoming: trained on as it is
            outcome["dataset"], dataset = drop, None
        if data_version:
            overrides += restore_data_version(data_version)
            params = load_params(params_file, overrides)
        outcome["params_file"] = params_file
        outcome["overrides"] = overrides
        if harvest:  # "" when an event of an older release had none
            outcome["harvest"] = check_harvest(params, harvest)
        outcome["drops"] = snapshot_data(params, dataset)
        with params_for_this_run(params) as changed:
            retried = reproduce_stage.with_options(
                retries=params.orchestrate.stage_retries,
                retry_delay_seconds=params.orchestrate.retry_delay_s,
                retry_condition_fn=transient_failure,
            )
            outcome["stages"] = {stage: retried(stage) for stage in pipeline_stages(REPO)}
            if changed:
                outcome["experiment"] = save_experiment()
        push_to_remote()
        outcome |= training_outcome(params)
        outcome["gate"] = gate_candidate(params, outcome["model_tag"])
        holder = champion.current(params.paths.models)
        outcome["champion"] = holder.tag if holder else None
        outcome["service"] = tell_service(params, outcome["champion"])
        outcome["reports"] = {
            "gate": outcome["gate"]["report"],
            "validation": str(Path(params.paths.validation) / "docs" / "index.html"),
            "evaluation": str(Path(params.paths.evaluation)),
            "decision": str(Path(params.paths.profile) / "decision.txt"),
        }
        get_run_logger().info(
            "trained %s: accuracy %.3f (data %s); champion %s",
            outcome["model_tag"],
            outcome["accuracy"],
            outcome["data_version"],
            outcome["champion"],
        )
    return outcome
