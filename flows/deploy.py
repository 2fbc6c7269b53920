"""``transferops deploy``: the project's Prefect deployments, served by one process.

- ``transferops-monitoring/check``: the drift check on ``orchestrate.monitor_cron``.
- ``transferops-training/retrain``: retraining, answering the drift event
  (flows/events.py: threshold within the cooldown window) and, when
  ``orchestrate.retrain_cron`` is set, on that schedule too. Its concurrency
  limit is 1: a run that comes while one trains waits its turn.

Schedules and event triggers need a Prefect server that outlives the runs
(``prefect server start``, the UI at http://127.0.0.1:4200): the temporary
server a lone flow run starts has no scheduler, and an automation fires only
while this process is alive to run what it starts. ``serve`` runs each flow
run in a subprocess of this process, in the project folder it was started in.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

from flows.events import api_url, retrain_trigger
from flows.monitoring import monitoring_flow
from flows.training import training_flow
from transferops.config import DEFAULT_PARAMS, Params

MONITORING = "check"
TRAINING = "retrain"
MONITORING_DEPLOYMENT = f"{monitoring_flow.name}/{MONITORING}"
TRAINING_DEPLOYMENT = f"{training_flow.name}/{TRAINING}"

SERVER_HELP = """\
`transferops deploy` needs a Prefect server that stays up: schedules and event
triggers do not run on the temporary server a single flow run starts.

  terminal 1:  prefect server start            # UI and API on http://127.0.0.1:4200
  terminal 2:  export PREFECT_API_URL=http://127.0.0.1:4200/api
               transferops deploy

Runs, their logs and records then show in the UI. docs/orchestration.md; for
a shared server on Postgres and workers on Docker/Kubernetes, docs/scaling.md."""

log = logging.getLogger(__name__)


class NoServerError(RuntimeError):
    """``PREFECT_API_URL`` is not set: there is no server to register deployments with."""


def build_deployments(params: Params, params_file: Path = DEFAULT_PARAMS, **where) -> list:
    """The deployments, not yet registered (``serve`` or ``deploy`` registers them).

    Their runs read ``params_file`` (``transferops --params FILE deploy``).
    ``where``: more ``to_deployment`` options (a work pool's job variables).
    The flows are referenced by module path (``flows.training.training_flow``),
    not by file: loading a flow from its file puts ``flows/`` on ``sys.path``,
    where ``flows/monitoring.py`` would hide the ``monitoring`` package.
    """
    where = {
        "entrypoint_type": EntrypointType.MODULE_PATH,
        "parameters": {"params_file": str(params_file)},
        **where,
    }
    monitoring = monitoring_flow.to_deployment(
        name=MONITORING,
        description="The drift and bias check over the latest traffic window; on a "
        "retrain decision it emits transferops.retrain.requested.",
        schedules=_cron(params, "monitor_cron"),
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
        ),
        tags=["transferops", "monitoring"],
        **where,
    )
    training = training_flow.to_deployment(
        name=TRAINING,
        description="Snapshot -> dvc repro -> gate -> promote -> service. Started by the "
        "drift event (guarded) or by the retraining schedule when one is set.",
        schedules=_cron(params, "retrain_cron"),
        triggers=[retrain_trigger(params)],
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        tags=["transferops", "training"],
        **where,
    )
    return [monitoring, training]


def _cron(params: Params, key: str) -> list:
    """The schedule ``orchestrate.<key>`` names (none when null); its runs record it as trigger."""
    cron = getattr(params.orchestrate, key)
    if not cron:
        return []
    trigger = {"kind": "schedule", "setting": f"orchestrate.{key}"}
    return [Cron(cron, timezone=params.orchestrate.timezone, parameters={"trigger": trigger})]


def serve_deployments(params: Params, params_file: Path = DEFAULT_PARAMS) -> None:
    """Register the deployments and run what they start until interrupted."""
    from prefect import serve

    if api_url() is None:
        raise NoServerError(SERVER_HELP)
    deployments = build_deployments(params, params_file)
    log.info("serving %s and %s on %s", MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT, api_url())
    serve(*deployments, print_starting_message=True)


def deploy_to_work_pool(
    params: Params, pool: str, image: str | None = None, params_file: Path = DEFAULT_PARAMS
) -> list[str]:
    """Register the same deployments on a work pool; its workers run them. Returns their ids.

    The flows are referenced by module path (``flows.training.training_flow``),
    which the project's installation provides wherever a worker runs: a
    process worker starts them in this project folder; a Docker or
    Kubernetes worker in ``image`` (flows/infra/Dockerfile), whose working
    directory is the project. Nothing is built or pushed here.
    """
    from prefect import deploy

    if api_url() is None:
        raise NoServerError(SERVER_HELP)
    variables = {} if image else {"working_dir": str(Path.cwd().resolve())}
    deployments = build_deployments(params, params_file, job_variables=variables)
    ids = deploy(
        *deployments,
        work_pool_name=pool,
        image=image,
        build=False,
        push=False,
        print_next_steps_message=False,
        ignore_warnings=True,
    )
    return [str(i) for i in ids]
