"""The end-to-end demo on the bundled Fashion-MNIST, run the way a team runs it.

It runs in ``demo-workspace/``, a fresh git + DVC copy of the project made at
each start, so the checkout stays clean and every demo starts from the default.

0. A Prefect server (``prefect server start``, its database in the
   workspace) and ``transferops deploy``: the scheduled check and the
   training deployment that answers retrain requests.
1. The training flow trains and packages the first model.
2. ``bentoml serve`` serves it on localhost.
3. In-distribution traffic; the monitoring flow finds no drift.
4. Shifted traffic (blurred images by default); the monitoring flow finds
   drift. One alarm does not retrain (K of N checks must), unless the
   accuracy estimated without labels fell ``monitor.retrain.urgent_drop`` or
   more below the reference's: then this first alarm requests the retrain.
5. Otherwise more shifted traffic; the second alarm requests a retrain: a
   Prefect event. The automation starts the training deployment, which adds a
   labelled drop of shifted images (as annotators would label a sample of
   production traffic), surgically when the shift is input-level, and puts
   the candidate through the promotion gate.
6. The running service switches to the new champion by itself; the shifted
   traffic is scored again.
7. The reviewers' index page; a summary table with links to every report.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from flows.deploy import MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT
from flows.monitoring import monitoring_flow
from flows.prefect_server import running_deployments, running_prefect_server, wait_for_run
from flows.serving import free_port, running_service
from flows.training import training_flow
from flows.workspace import create_workspace
from monitoring.index import build_index
from services.client import send as send_images
from transferops.config import Params, load_params, write_overrides
from transferops.data.shifts import HeldOutPool, write_labelled_drop
from transferops.logs.runs import read_records
from transferops.models.strategy import DECISION

log = logging.getLogger(__name__)

PREFECT_UI_PORT = 4200  # the usual port; another one when it is taken


@dataclass
class DemoSettings:
    shift: str = "blur"  # see transferops.data.shifts.SHIFTS
    window: int = 200  # images per traffic phase
    labelled_drop: int = 600  # shifted images that "annotators" label for retraining
    workspace: Path = Path("demo-workspace")
    # The triggered run must finish within this (a busy 2-core machine took over 900 s).
    retrain_timeout_s: float = 1800
    # Traffic comes from three stores (the request's group): the reports' bias section
    # judges each; every 2nd image's true label comes back later, as feedback.
    groups: tuple[str, ...] = ("store north", "store south", "store east")
    feedback_every: int = 2


def run_demo(
    root: Path, settings: DemoSettings | None = None, console: Console | None = None
) -> dict:
    """Run the whole loop once in a fresh workspace; return what happened.

    The outcome is also printed as a table and saved as JSON.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    settings, console = settings or DemoSettings(), console or Console()
    started = time.monotonic()
    workspace = create_workspace(Path(root), Path(settings.workspace).resolve())
    console.print(f"demo workspace: {workspace} (a fresh git + DVC copy of the project)")
    os.chdir(workspace)
    service_port = free_port()
    service_url = f"http://127.0.0.1:{service_port}"
    # The training deployment confirms that the service switched after a promotion.
    # The demo runs each check itself, at its step: a scheduled check landing between
    # two steps (the cron fires every 30 min) would count in K of N and change the story.
    # It trains twice, so it gives `image_size: auto` a smaller budget than a real run
    # (150 s of fine-tuning instead of 360): the loop stays under 15 minutes on 2 cores.
    write_overrides(
        workspace / "params.yaml",
        [
            f"orchestrate.service_url={service_url}",
            "orchestrate.monitor_cron=null",
            "model.auto.budget_s.cpu=150",
        ],
    )
    _commit(
        workspace,
        "demo: the service's URL; checks at the demo's steps, not on cron; "
        "a demo-sized budget for image_size: auto",
    )
    params = load_params(workspace / "params.yaml")
    if params.data.format != "fashion_mnist":
        raise ValueError(
            "the demo simulates traffic from Fashion-MNIST: set data.format = fashion_mnist"
        )
    runs = Path(params.paths.reports) / "demo"
    runs.mkdir(parents=True, exist_ok=True)
    home = workspace / ".prefect"
    port = free_port(PREFECT_UI_PORT)

    console.rule("0. Prefect server + `transferops deploy` (scheduled check, retrain on event)")
    with (
        running_prefect_server(home, port=port, log_file=runs / "prefect-server.log") as api,
        running_deployments(
            workspace,
            api,
            home,
            [MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT],
            log_file=runs / "deploy.log",
        ) as deployments,
        temporary_settings(updates={PREFECT_API_URL: api}),
    ):
        console.print(
            f"Prefect API {api}; deployments: {', '.join(d['name'] for d in deployments)}"
        )
        summary = _loop(params, settings, console, runs, service_port, api, deployments[1]["id"])
    summary["prefect"] = {"api": api, "home": str(home), "port": port}
    summary["index"] = str(build_index(params))
    summary["shift"] = settings.shift
    summary["minutes"] = (time.monotonic() - started) / 60
    (runs / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(summary_table(summary, params, workspace))
    console.print(how_to_look(summary, params, workspace))
    return summary


def _loop(
    params: Params,
    settings: DemoSettings,
    console: Console,
    runs: Path,
    service_port: int,
    api: str,
    training_deployment: str,
) -> dict:
    console.rule("1. train the first model (training flow: DVC stages as Prefect tasks)")
    first = training_flow(trigger=_step("first model"))
    pool = HeldOutPool(params.data.source, params.paths.prepared, params.seed)
    summary: dict = {"first_model": first}
    drop = write_labelled_drop(
        pool.take(settings.labelled_drop, settings.shift),
        runs / f"labelled-{settings.shift}",
    )
    console.rule(f"2. serve {first['model_tag']} (bentoml serve on localhost)")

    def send(url: str, items: list) -> float:
        return send_images(
            url, items, groups=settings.groups, feedback_every=settings.feedback_every
        )

    with running_service(port=service_port, log_file=runs / "serve.log") as url:
        console.rule("3. in-distribution traffic")
        summary["normal_accuracy"] = send(url, pool.take(settings.window))
        summary["normal"] = monitoring_flow(
            retrain=True, new_data=str(drop), trigger=_step("check of normal traffic")
        )["verdict"]
        console.rule(f"4. shifted traffic ({settings.shift}): the first check")
        summary["shifted_accuracy_before"] = send(url, pool.take(settings.window, settings.shift))
        check = monitoring_flow(
            retrain=True, new_data=str(drop), trigger=_step("first check of shifted traffic")
        )
        summary["first_alarm"] = check["decision"]
        console.print(f"decision: {check['decision']['reason']}")
        if not check["requested"]:  # K of N: one alarm is not enough
            send(url, pool.take(settings.window, settings.shift))
            console.rule("5. the alarm persists: the monitoring flow requests a retrain (event)")
            check = monitoring_flow(
                retrain=True, new_data=str(drop), trigger=_step("second check of shifted traffic")
            )
        # else: the accuracy estimated without labels fell monitor.retrain.urgent_drop or
        # more below the reference's, so the first alarm requested the retrain.
        summary["shifted"], summary["decision"] = check["verdict"], check["decision"]
        summary["requested"] = check["requested"]
        if check["requested"]:
            summary |= _await_retrain(
                check["requested"], params, settings, console, runs, api, training_deployment
            )
            console.rule("6. the service follows the champion; shifted traffic again")
            summary["serving_after"] = httpx.get(f"{url}/v1/metadata", timeout=10).json()["model"]
            summary["shifted_accuracy_after"] = send(
                url, pool.take(settings.window, settings.shift)
            )
    return summary


def _await_retrain(
    requested: dict,
    params: Params,
    settings: DemoSettings,
    console: Console,
    runs: Path,
    api: str,
    training_deployment: str,
) -> dict:
    """Wait for the run the event starts; what it was and what it produced."""
    asked = time.monotonic()
    console.print(
        f"event {requested['id']} sent; waiting for the training deployment "
        f"(its log: {runs / 'deploy.log'})"
    )
    run = wait_for_run(api, training_deployment, known=set(), timeout=settings.retrain_timeout_s)
    minutes = (time.monotonic() - asked) / 60
    record = next(r for r in read_records(params.paths.reports) if r["run"]["id"] == run["id"])
    if record["status"] != "completed":
        raise RuntimeError(f"the retraining run failed: {record.get('error')}")
    return {
        "retrain_minutes": minutes,
        "retrain_run": {
            "name": run["name"],
            "state": run["state_type"],
            "trigger": record["trigger"],
            "record": record["record"],
        },
        "retrained": record["result"],
    }


def _step(name: str) -> dict:
    """The demo stands in for a schedule here: its runs' records say which step they were."""
    return {"kind": "demo", "step": name}


def _commit(workspace: Path, message: str) -> None:
    git = ["git", "-c", "user.name=transferops", "-c", "user.email=transferops@localhost"]
    subprocess.run([*git, "commit", "-qam", message], cwd=workspace, check=True)


def _accuracy(run: dict, level: float) -> str:
    low, high = run["accuracy_ci"]
    interval = f"{100 * level:.0f}% interval {low:.3f}-{high:.3f}"
    return f"test accuracy {run['accuracy']:.3f} ({interval}), ECE {run['ece']:.3f}"


def _retrain_line(decision: dict) -> str:
    if not decision["retrain"]:
        return f"\nno retrain: {decision['reason']}"
    return (
        f"\nretrain ({decision['strategy']} strategy): drift in {decision['alarms']} of the "
        f"last {decision['considered']} checks"
    )


def summary_table(summary: dict, params: Params, workspace: Path) -> Table:
    table = Table(title=f"transferops demo (paths under {workspace})", show_lines=True)
    for column in ("step", "result", "where"):
        table.add_column(column, overflow="fold")
    first, retrained = summary["first_model"], summary.get("retrained")
    normal, shifted = summary["normal"], summary["shifted"]
    table.add_row(
        "first model (champion: none before it)",
        f"{first['model_tag']}\n{_accuracy(first, params.evaluate.confidence)}",
        f"{first['gate']['report']}",
    )
    table.add_row(
        "in-distribution traffic",
        f"served accuracy {summary['normal_accuracy']:.3f}\nverdict: {normal['status'].upper()}",
        str(normal.get("report_dir")),
    )
    retrained_at_once = summary["first_alarm"]["retrain"]
    which = "first check (urgent: estimated accuracy fell)" if retrained_at_once else "second check"
    if not retrained_at_once:
        table.add_row(
            f"shifted traffic ({summary['shift']}), first check",
            f"served accuracy {summary['shifted_accuracy_before']:.3f}\n"
            f"decision: {summary['first_alarm']['reason']}",
            str(summary["first_alarm"].get("check")),
        )
    table.add_row(
        f"shifted traffic ({summary['shift']}), {which}",
        f"verdict: {shifted['status'].upper()} (shift located "
        f"{shifted.get('shift_location') or 'nowhere'})\n"
        + "\n".join(shifted["reasons"])
        + _retrain_line(summary["decision"]),
        f"{shifted.get('report_dir')}/report.html\n"
        f"evidently ui --workspace {params.paths.reports}/drift/workspace",
    )
    requested, run = summary.get("requested"), summary.get("retrain_run")
    if requested and run:
        table.add_row(
            "retrain request -> Prefect automation -> training deployment",
            f"event {requested['event']} ({requested['id'][:8]})\n"
            f"started run {run['name']} of {TRAINING_DEPLOYMENT}: {run['state']}, "
            f"{summary['retrain_minutes']:.1f} min after the event",
            f"{run['record']}",
        )
    if retrained:
        gate, service = retrained["gate"], retrained.get("service") or {}
        table.add_row(
            "the candidate and the promotion gate",
            f"{retrained['model_tag']}\n{_accuracy(retrained, params.evaluate.confidence)}\n"
            f"gate: {'PROMOTED' if gate['promoted'] else 'CHAMPION KEPT'}\n"
            + "\n".join(gate["reasons"]),
            f"{gate['report']}\ndata version {retrained['data_version']}",
        )
        switched = (
            f"switched after {service['after_s']} s" if service.get("switched") else "no switch"
        )
        table.add_row(
            "the service (kept running throughout)",
            f"serves {summary.get('serving_after')} ({switched})\n"
            f"shifted traffic accuracy {summary['shifted_accuracy_before']:.3f} -> "
            f"{summary.get('shifted_accuracy_after', float('nan')):.3f}",
            f"{service.get('url')}/v1/metadata",
        )
    for row in _pointer_rows(summary, params):
        table.add_row(*row)
    return table


def _pointer_rows(summary: dict, params: Params) -> list[tuple[str, str, str]]:
    """Where to look next: the decision, validation, curves, models, the index, the time."""
    decision = json.loads((Path(params.paths.profile) / DECISION).read_text())
    return [
        (
            "freeze decision (what the last training applied)",
            f"{decision['strategy']} ({decision['size']} data, "
            f"{'similar' if decision['similar'] else 'different'} task): "
            f"trains {', '.join(decision['trainable_stages'])}",
            f"{params.paths.profile}/decision.txt, strategy.png",
        ),
        (
            "validation",
            "Great Expectations Data Docs",
            f"{params.paths.validation}/docs/index.html",
        ),
        ("training curves", "dvc plots show", f"{params.paths.train_log}/plots"),
        (
            "models and champion history",
            "transferops models [--history]",
            f"{params.paths.models}/history.jsonl",
        ),
        (
            "reviewers' index (drift, bias, models, validation, runs)",
            "transferops report",
            summary["index"],
        ),
        ("total time", f"{summary['minutes']:.1f} min", f"{params.paths.reports}/demo"),
    ]


def how_to_look(summary: dict, params: Params, workspace: Path) -> str:
    """Commands that open the UIs on what the demo left behind."""
    prefect = summary["prefect"]
    return f"""
[bold]Look at the results[/bold] (in {workspace}):
  Prefect UI (flow runs, task logs, the automation, each run's record):
    PREFECT_HOME={prefect["home"]} prefect server start --port {prefect["port"]}
    then open http://127.0.0.1:{prefect["port"]}
  Evidently UI (every drift check):
    evidently ui --workspace {params.paths.reports}/drift/workspace   then open http://127.0.0.1:8000
  Reviewers' index: open {workspace / summary["index"]}
  The loop for real: `prefect server start`, then `transferops deploy`: the check then runs
  on orchestrate.monitor_cron (every 30 min; the demo ran its checks itself). docs/orchestration.md
"""
