"""The end-to-end demo on the bundled Fashion-MNIST, run the way a team runs it.

It runs in ``demo-workspace/``, a fresh git + DVC copy of the project made at
each start, so the checkout stays clean and every demo starts from the default.

0. A Prefect server (``prefect server start``, its database in the
   workspace) and ``transferops deploy``: the scheduled check and the
   training deployment that answers retrain requests.
1. The training flow trains and packages the first model.
2. ``bentoml serve`` serves it on localhost.
3. In-distribution traffic; the monitoring flow finds no drift.
4. Shifted traffic (blurred images by default), which nobody has labelled;
   the service keeps the images (``serve.keep``); the monitoring flow finds
   drift. One alarm does not retrain (K of N checks must), unless the
   accuracy estimated without labels fell ``monitor.retrain.urgent_drop`` or
   more below the reference's.
5. More shifted traffic; the second alarm would retrain, but the drifted
   traffic has no labels yet: **waiting for labels**, with a label queue
   beside the report. An annotator labels the queue's picks through
   ``POST /v1/feedback`` (the demo knows the true labels); the next check
   harvests them into a checked DVC drop and its retrain request (a Prefect
   event) carries it. The automation starts the training deployment, which
   trains on the base data and the harvest, surgically when the shift is
   input-level; the gate scores the original and the new domain apart.
6. The running service switches to the new champion by itself; the shifted
   traffic is scored again.
7. The reviewers' index page; a summary table, where to look, and the commands
   that open the rest, runnable from the workspace as printed.

The terminal shows each step, a live line of what it is doing and its outcome
(``flows/story.py``); the libraries' logs go to ``reports/demo/logs/`` and the
servers' to ``reports/demo/``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
from rich.console import Console
from rich.table import Table

from flows.deploy import MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT
from flows.monitoring import monitoring_flow
from flows.prefect_server import (
    AUTH_FILE,
    running_deployments,
    running_prefect_server,
    server_auth,
    wait_for_run,
)
from flows.serving import free_port, running_service
from flows.story import Step, Story
from flows.training import training_flow
from flows.workspace import create_workspace
from monitoring.index import build_index
from services.client import label
from services.client import send as send_images
from transferops.config import Params, RetrainParams, load_params, write_overrides
from transferops.data.shifts import HeldOutPool
from transferops.logs.runs import read_records
from transferops.models.strategy import DECISION

log = logging.getLogger(__name__)

PREFECT_UI_PORT = 4200  # the usual port; another one when it is taken


@dataclass
class DemoSettings:
    shift: str = "blur"  # see transferops.data.shifts.SHIFTS
    window: int = 200  # images per traffic phase
    shifted_windows: int = 3  # of shifted traffic before each of the first two checks
    label_rounds: int = 3  # at most this many rounds (a queue labelled, or more traffic)
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

    The terminal tells the steps and their outcomes; the libraries' logs go to
    ``reports/demo/logs/``. The outcome is also printed as a table and saved as JSON.
    """
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    settings, console = settings or DemoSettings(), console or Console()
    started = time.monotonic()
    store = Path(os.environ.get("BENTOML_HOME", Path(root) / ".bentoml")).resolve()
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
    # The models live in the project's store; the workspace's params point there, so
    # `transferops serve` in the workspace finds them after the demo.
    write_overrides(
        workspace / "params.yaml",
        [
            f"orchestrate.service_url={service_url}",
            "orchestrate.monitor_cron=null",
            "model.auto.budget_s.cpu=150",
            f"paths.bentoml_home={os.path.relpath(store, workspace)}",
            # 10 classes x 30 labels: the harvest's own test split holds about 90 images,
            # enough for the gate's interval on the new domain.
            "monitor.retrain.min_labels_per_class=30",
        ],
    )
    _commit(
        workspace,
        "demo: the service's URL; checks at the demo's steps, not on cron; "
        "a demo-sized budget for image_size: auto; the project's model store; "
        "30 labels a class before a retrain",
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
    servers = {
        "Prefect server": runs / "prefect-server.log",
        "transferops deploy (the retraining run)": runs / "deploy.log",
        "bentoml serve": runs / "serve.log",
    }
    with Story(console, runs / "logs") as story, contextlib.ExitStack() as servers_up:
        console.print(f"logs: {runs / 'logs'}/ (libraries), {runs}/ (servers)", highlight=False)
        with story.step("a Prefect server and `transferops deploy`") as step:
            api = servers_up.enter_context(
                running_prefect_server(home, port=port, log_file=servers["Prefect server"])
            )
            # This process talks to it too (the flows, the API calls): with its auth string.
            client = {PREFECT_API_URL: api, PREFECT_API_AUTH_STRING: server_auth(home)}
            servers_up.enter_context(temporary_settings(updates=client))
            deployments = servers_up.enter_context(
                running_deployments(
                    workspace,
                    api,
                    home,
                    [MONITORING_DEPLOYMENT, TRAINING_DEPLOYMENT],
                    log_file=servers["transferops deploy (the retraining run)"],
                )
            )
            step.say(
                f"Prefect API {api}; deployments: {', '.join(d['name'] for d in deployments)} "
                "(the drift check, and the training run a retrain event starts)"
            )
        summary = _loop(
            params, settings, story, runs, service_port, api, deployments[1]["id"], servers
        )
    summary["prefect"] = {"api": api, "home": str(home), "port": port}
    summary["index"] = str(build_index(params))
    summary["shift"] = settings.shift
    summary["freeze"] = freeze_line(Path(params.paths.profile))
    summary["minutes"] = (time.monotonic() - started) / 60
    summary["logs"] = {
        **{f"{name}.log": str(path) for name, path in story.files.items()},
        **{name: str(path) for name, path in servers.items()},
    }
    (runs / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(summary_table(summary))
    console.print(
        where_to_look(summary, params, workspace, Path(root)), highlight=False, soft_wrap=True
    )
    return summary


def _loop(
    params: Params,
    settings: DemoSettings,
    story: Story,
    runs: Path,
    service_port: int,
    api: str,
    training_deployment: str,
    servers: dict[str, Path],
) -> dict:
    with story.step(
        "train the first model (the training flow: DVC stages as Prefect tasks)"
    ) as step:
        first = training_flow(trigger=_step("first model"))
        step.say(f"{first['model_tag']}: {_accuracy(first, params.evaluate.confidence)}")
        step.say(
            f"gate: {'PROMOTED' if first['gate']['promoted'] else 'KEPT THE CHAMPION'}: "
            + "; ".join(first["gate"]["reasons"])
        )
        pool = HeldOutPool(params.data.source, params.paths.prepared, params.seed)
    summary: dict = {"first_model": first}
    truth: dict[str, str] = {}  # request id -> true label of the shifted traffic

    def send(url: str, items: list, labelled: bool = True) -> float:
        """Traffic from the stores; in-distribution traffic has some labels come back,
        shifted traffic none (the annotator labels what the queue asks for)."""
        every = settings.feedback_every if labelled else 0
        return send_images(url, items, groups=settings.groups, feedback_every=every, truth=truth)

    def check(step: Step, name: str) -> dict:
        result = monitoring_flow(retrain=True, trigger=_step(name))
        step.say(f"check: {_verdict_line(result['verdict'])}")
        if result["decision"]:
            step.say(f"decision: {_decision_line(result['decision'], params.monitor.retrain)}")
        return result

    def shifted(count: int) -> float:
        return send(url, pool.take(count, settings.shift), labelled=False)

    traffic = (
        f"{settings.window} images from {len(settings.groups)} stores, "
        f"every {_ordinal(settings.feedback_every)} labelled"
    )
    with contextlib.ExitStack() as serving:
        with story.step(f"serve {first['model_tag']} (bentoml serve on localhost)") as step:
            url = serving.enter_context(
                running_service(port=service_port, log_file=servers["bentoml serve"])
            )
            step.say(f"serving at {url}")
        with story.step(f"in-distribution traffic ({traffic})") as step:
            summary["normal_accuracy"] = send(url, pool.take(settings.window))
            step.say(f"served accuracy {summary['normal_accuracy']:.3f}")
            summary["normal"] = check(step, "check of normal traffic")["verdict"]
        shifted_traffic = settings.shifted_windows * settings.window
        with story.step(
            f"shifted traffic ({settings.shift}, {shifted_traffic} images, none labelled)"
        ) as step:
            summary["shifted_accuracy_before"] = shifted(shifted_traffic)
            step.say(f"served accuracy {summary['shifted_accuracy_before']:.3f}")
            result = check(step, "first check of shifted traffic")
        summary["first_alarm"] = result["decision"]
        if not (result["decision"] or {}).get("waiting"):  # K of N: one alarm is not enough
            with story.step("more shifted traffic: the alarm persists") as step:
                shifted(shifted_traffic)
                result = check(step, "second check of shifted traffic")
        summary["waiting"] = result["decision"]
        summary["labelled"] = []
        for _ in range(settings.label_rounds):  # each: a queue labelled, or more traffic
            if not (result["decision"] or {}).get("waiting"):
                break
            queue = Path(result["verdict"]["report_dir"]) / "queue"
            picks = list(pd.read_csv(queue / "queue.csv")["request_id"])
            if not picks:  # every kept image of the shift is labelled: more traffic first
                with story.step("more shifted traffic: the queue has run dry") as step:
                    shifted(settings.window)
                    result = check(step, "check after more shifted traffic")
                continue
            with story.step("an annotator labels the label queue's picks") as step:
                summary["labelled"].append(label(url, picks, truth))
                step.say(
                    f"{summary['labelled'][-1]} labels sent to POST /v1/feedback for the "
                    f"queue's picks ({queue / 'queue.html'})"
                )
                result = check(step, "check after the labels came back")
        summary["shifted"], summary["decision"] = result["verdict"], result["decision"]
        summary["requested"] = result["requested"]
        if result["requested"]:
            with story.step(
                "the retrain event: Prefect's automation starts the training deployment"
            ) as step:
                summary |= _await_retrain(
                    result["requested"], params, settings, step, api, training_deployment, servers
                )
            promoted = summary["retrained"]["gate"]["promoted"]
            title = "follows the new champion" if promoted else "keeps the champion"
            with story.step(f"the running service {title}") as step:
                summary["serving_after"] = httpx.get(f"{url}/v1/metadata", timeout=10).json()[
                    "model"
                ]
                summary["shifted_accuracy_after"] = send(
                    url, pool.take(settings.window, settings.shift)
                )
                step.say(
                    f"serves {summary['serving_after']}; accuracy on shifted traffic "
                    f"{summary['shifted_accuracy_before']:.3f} -> "
                    f"{summary['shifted_accuracy_after']:.3f}"
                )
    return summary


def _await_retrain(
    requested: dict,
    params: Params,
    settings: DemoSettings,
    step: Step,
    api: str,
    training_deployment: str,
    servers: dict[str, Path],
) -> dict:
    """Wait for the run the event starts; what it was and what it produced."""
    asked = time.monotonic()
    step.say(
        f"event {requested['event']} ({requested['id'][:8]}) sent; the run logs to "
        f"{servers['transferops deploy (the retraining run)']}"
    )
    run = wait_for_run(api, training_deployment, known=set(), timeout=settings.retrain_timeout_s)
    minutes = (time.monotonic() - asked) / 60
    record = next(r for r in read_records(params.paths.reports) if r["run"]["id"] == run["id"])
    if record["status"] != "completed":
        raise RuntimeError(f"the retraining run failed: {record.get('error')}")
    retrained = record["result"]
    gate, service = retrained["gate"], retrained.get("service") or {}
    step.say(f"run {run['name']}: {run['state_type']}, {minutes:.1f} min after the event")
    step.say(f"{retrained['model_tag']}: {_accuracy(retrained, params.evaluate.confidence)}")
    step.say(
        f"gate: {'PROMOTED' if gate['promoted'] else 'KEPT THE CHAMPION'}: "
        + "; ".join(gate["reasons"])
    )
    if gate["promoted"] and service.get("switched"):
        step.say(f"the service switched {service['after_s']} s after the promotion")
    verdict = json.loads(Path(gate["report"]).read_text())
    return {
        "domains": verdict.get("domains", []),
        "retrain_minutes": minutes,
        "retrain_run": {
            "name": run["name"],
            "state": run["state_type"],
            "trigger": record["trigger"],
            "record": record["record"],
        },
        "retrained": retrained,
    }


def _step(name: str) -> dict:
    """The demo stands in for a schedule here: its runs' records say which step they were."""
    return {"kind": "demo", "step": name}


def _commit(workspace: Path, message: str) -> None:
    git = ["git", "-c", "user.name=transferops", "-c", "user.email=transferops@localhost"]
    subprocess.run([*git, "commit", "-qam", message], cwd=workspace, check=True)


def _ordinal(n: int) -> str:
    return {1: "", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def _accuracy(run: dict, level: float) -> str:
    low, high = run["accuracy_ci"]
    interval = f"{100 * level:.0f}% interval {low:.3f}-{high:.3f}"
    return f"test accuracy {run['accuracy']:.3f} ({interval}), ECE {run['ece']:.3f}"


def _verdict_line(verdict: dict) -> str:
    """``DRIFT (early): embedding, classifier, ...; estimated accuracy 0.73 (reference 0.87)``."""
    fired = [name for name, test in verdict.get("tests", {}).items() if test["fired"]]
    drift = verdict["status"] == "drift"
    where = f" ({verdict['shift_location']})" if drift and verdict.get("shift_location") else ""
    line = verdict["status"].upper() + where + (f": {', '.join(fired)} moved" if fired else "")
    accuracy = verdict.get("accuracy") or {}
    if accuracy.get("estimated") is not None:
        line += (
            f"; estimated accuracy {accuracy['estimated']:.2f} "
            f"(reference {accuracy['reference']:.2f})"
        )
    return line


def _decision_line(decision: dict, cfg: RetrainParams) -> str:
    if not decision["retrain"]:
        return f"no retrain: {decision['reason']}"
    if decision["alarms"] < cfg.alarms:
        why = (
            f"the accuracy estimated without labels fell {100 * decision['estimated_drop']:.1f} "
            f"points (monitor.retrain.urgent_drop: {100 * cfg.urgent_drop:g}): "
            "no need to wait for a second alarm"
        )
    else:
        why = f"drift in {decision['alarms']} of the last {decision['considered']} checks"
    return f"RETRAIN ({decision['strategy']} strategy): {why}"


def freeze_line(profile_dir: Path) -> str:
    """The freeze decision the last training applied, in one line."""
    decision = json.loads((Path(profile_dir) / DECISION).read_text())
    similar = "similar" if decision["similar"] else "different"
    return (
        f"{decision['strategy']} ({decision['size']} data, {similar} task): "
        f"trains {', '.join(decision['trainable_stages'])}"
    )


def summary_table(summary: dict) -> Table:
    """What happened, a row per step, in short lines (the paths follow it, unwrapped)."""
    table = Table(title="transferops demo", show_lines=True)
    table.add_column("step", max_width=22)
    table.add_column("outcome", overflow="fold")
    first, retrained = summary["first_model"], summary.get("retrained")
    table.add_row(
        "first model",
        f"{first['model_tag']}: test accuracy {first['accuracy']:.3f}, "
        f"gate: {'PROMOTED' if first['gate']['promoted'] else 'KEPT THE CHAMPION'}",
    )
    table.add_row(
        "in-distribution traffic",
        f"served accuracy {summary['normal_accuracy']:.3f}; "
        f"check: {_verdict_line(summary['normal'])}",
    )
    table.add_row(
        f"shifted traffic ({summary['shift']})",
        f"served accuracy {summary['shifted_accuracy_before']:.3f}; "
        f"check: {_verdict_line(summary['shifted'])}",
    )
    short = (summary.get("waiting") or {}).get("waiting") or {}
    if short:
        shown = ", ".join(f"{c} {have}/{need}" for c, (have, need) in list(short.items())[:2])
        table.add_row("waiting for labels", f"{len(short)} classes short ({shown}, ...)")
    if summary.get("labelled"):
        rounds = len(summary["labelled"])
        table.add_row(
            "the annotator",
            f"{sum(summary['labelled'])} labels for the label queue's picks "
            f"({rounds} round{'s' if rounds > 1 else ''})",
        )
    decision = summary["decision"]
    if decision["retrain"]:
        outcome = f"RETRAIN ({decision['strategy']} strategy) on {decision['harvest']}"
    else:
        outcome = f"no retrain: {decision['reason']}"
    table.add_row("retrain decision", outcome)
    run = summary.get("retrain_run")
    if run:
        table.add_row(
            "event -> automation -> training run",
            f"{run['name']}: {run['state']}, {summary['retrain_minutes']:.1f} min after the event",
        )
    if retrained:
        gate, service = retrained["gate"], retrained.get("service") or {}
        table.add_row(
            "candidate and gate",
            f"{retrained['model_tag']}: test accuracy {retrained['accuracy']:.3f}, "
            f"gate: {'PROMOTED' if gate['promoted'] else 'KEPT THE CHAMPION'}",
        )
        for domain in summary.get("domains", []):
            name = "original" if domain["known"] else "shifted (harvest)"
            table.add_row(
                f"{name} domain",
                f"{domain['champion']:.3f} -> {domain['challenger']:.3f} on its "
                f"{domain['n']} test images (champion -> candidate)",
            )
        switched = (
            f"switched in {service['after_s']} s"
            if gate["promoted"] and service.get("switched")
            else "no promotion, no switch"
        )
        table.add_row(
            "the running service",
            f"serves {summary.get('serving_after')} ({switched}); shifted traffic accuracy "
            f"{summary['shifted_accuracy_before']:.3f} -> "
            f"{summary.get('shifted_accuracy_after', float('nan')):.3f}",
        )
    table.add_row("freeze decision (last training)", summary["freeze"])
    table.add_row("total", f"{summary['minutes']:.1f} min")
    return table


def where_to_look(summary: dict, params: Params, workspace: Path, root: Path) -> str:
    """The files worth opening and the commands that open the rest, runnable as printed."""
    venv = os.path.relpath(Path(sys.executable).parent, workspace)
    shifted = summary["shifted"].get("report_dir")
    retrained = summary.get("retrained") or summary["first_model"]
    logs = summary["logs"]
    prefect = summary["prefect"]
    here = os.path.relpath(workspace, root)
    lines = [
        "",
        f"[bold]Where to look[/bold] (paths under {here}/):",
        f"  reviewers' index      {summary['index']}",
        f"  the drift report      {shifted}/report.html",
        f"  the promotion gate    {retrained['gate']['report']}",
        f"  validation            {params.paths.validation}/docs/index.html",
        f"  freeze decision       {params.paths.profile}/decision.txt, strategy.png",
        f"  training curves       {params.paths.train_log}/plots (dvc plots show)",
        "  logs",
        *[f"    {path}" for path in logs.values()],
        "",
        "[bold]Commands[/bold], from the project folder, after",
        f"  cd {here} && source {venv}/activate",
        "  transferops serve                   the champion on http://127.0.0.1:3000",
        "  transferops monitor --no-retrain    a drift check of the logged traffic",
        "  transferops report                  rebuild the reviewers' index",
        "  transferops models --history        the models and every champion change",
        f"  export PREFECT_SERVER_API_AUTH_STRING=$(cat .prefect/{AUTH_FILE})",
        f"  PREFECT_HOME=.prefect prefect server start --port {prefect['port']}",
        "                                      the Prefect UI: runs, logs, automation",
        "                                      (it asks for that string)",
        f"  evidently ui --workspace {params.paths.reports}/drift/workspace",
        "                                      the Evidently UI (http://127.0.0.1:8000)",
        "The loop for real: `prefect server start`, then `transferops deploy`; the",
        "check then runs on orchestrate.monitor_cron (docs/orchestration.md).",
    ]
    return "\n".join(lines)
