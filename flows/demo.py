"""The end-to-end demo on the bundled Fashion-MNIST.

It runs in ``demo-workspace/``, a fresh git + DVC copy of the project made at
each start, so the checkout stays clean and every demo starts from the default.

1. The training flow trains and packages the first model.
2. ``bentoml serve`` serves it on localhost.
3. In-distribution traffic; the monitoring flow finds no drift.
4. Shifted traffic (blurred images by default); the monitoring flow finds
   drift, but one alarm does not retrain (K of N checks must).
5. More shifted traffic; the second alarm retrains: the training flow adds a
   labelled drop of shifted images (as annotators would label a sample of
   production traffic), surgically when the shift is input-level. The
   retrained candidate faces the promotion gate against the first model.
6. The service restarts on the champion; the shifted traffic is scored again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows.monitoring import monitoring_flow
from flows.serving import running_service
from flows.traffic import HeldOutPool, send, write_labelled_drop
from flows.training import training_flow
from flows.workspace import create_workspace
from pipelines.config import Params, load_params
from pipelines.strategy import DECISION

log = logging.getLogger(__name__)


@dataclass
class DemoSettings:
    shift: str = "blur"  # see flows.traffic.SHIFTS
    window: int = 200  # images per traffic phase
    labelled_drop: int = 600  # shifted images that "annotators" label for retraining
    workspace: Path = Path("demo-workspace")


def run_demo(
    root: Path, settings: DemoSettings | None = None, console: Console | None = None
) -> dict:
    """Run the whole loop once in a fresh workspace; return what happened.

    The outcome is also printed as a table and saved as JSON.
    """
    settings, console = settings or DemoSettings(), console or Console()
    started = time.monotonic()
    workspace = create_workspace(Path(root), Path(settings.workspace).resolve())
    console.print(f"demo workspace: {workspace} (a fresh git + DVC copy of the project)")
    os.chdir(workspace)
    params = load_params(workspace / "params.yaml")
    if params.data.format != "fashion_mnist":
        raise ValueError(
            "the demo simulates traffic from Fashion-MNIST: set data.format = fashion_mnist"
        )
    runs = Path(params.paths.reports) / "demo"
    runs.mkdir(parents=True, exist_ok=True)

    console.rule("1. train the first model (Prefect flow -> dvc repro)")
    first = training_flow()
    pool = HeldOutPool(params.data.source, params.paths.prepared, params.seed)
    summary: dict = {"first_model": first}

    console.rule(f"2. serve {first['model_tag']} (bentoml serve on localhost)")
    drop = write_labelled_drop(
        pool.take(settings.labelled_drop, settings.shift),
        runs / f"labelled-{settings.shift}",
    )
    with running_service(log_file=runs / "serve-1.log") as url:
        console.rule("3. in-distribution traffic")
        summary["normal_accuracy"] = send(url, pool.take(settings.window))
        summary["normal"] = monitoring_flow(retrain=False)["verdict"]
        console.rule(f"4. shifted traffic ({settings.shift}): one alarm is not enough")
        summary["shifted_accuracy_before"] = send(url, pool.take(settings.window, settings.shift))
        summary["first_alarm"] = monitoring_flow(retrain=True, new_data=str(drop))["decision"]
        send(url, pool.take(settings.window, settings.shift))
    console.rule("5. the alarm persists: the monitoring flow retrains")
    shifted_run = monitoring_flow(retrain=True, new_data=str(drop))
    summary["shifted"], summary["retrained"] = shifted_run["verdict"], shifted_run["retrained"]
    summary["decision"] = shifted_run["decision"]

    if summary["retrained"]:
        console.rule(f"6. serving the champion {summary['retrained']['champion']}")
        with running_service(log_file=runs / "serve-2.log") as url:
            summary["shifted_accuracy_after"] = send(
                url, pool.take(settings.window, settings.shift)
            )
    summary["shift"] = settings.shift
    summary["minutes"] = (time.monotonic() - started) / 60
    (runs / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    console.print(summary_table(summary, params, workspace))
    return summary


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
    table.add_row(
        f"shifted traffic ({summary['shift']}), first check",
        f"served accuracy {summary['shifted_accuracy_before']:.3f}\n"
        f"decision: {summary['first_alarm']['reason']}",
        str(summary["first_alarm"].get("check")),
    )
    table.add_row(
        f"shifted traffic ({summary['shift']}), second check",
        f"verdict: {shifted['status'].upper()} (shift located "
        f"{shifted.get('shift_location') or 'nowhere'})\n"
        + "\n".join(shifted["reasons"])
        + _retrain_line(summary["decision"]),
        f"{shifted.get('report_dir')}/report.html\n"
        f"evidently ui --workspace {params.paths.reports}/drift/workspace",
    )
    if retrained:
        gate = retrained["gate"]
        table.add_row(
            "retraining (triggered by drift) and the promotion gate",
            f"{retrained['model_tag']}\n{_accuracy(retrained, params.evaluate.confidence)}\n"
            f"gate: {'PROMOTED' if gate['promoted'] else 'CHAMPION KEPT'}\n"
            + "\n".join(gate["reasons"])
            + f"\nshifted traffic accuracy now "
            f"{summary.get('shifted_accuracy_after', float('nan')):.3f}",
            f"{gate['report']}\ndata version {retrained['data_version']}",
        )
    decision = json.loads((Path(params.paths.profile) / DECISION).read_text())
    table.add_row(
        "freeze decision (what the last training applied)",
        f"{decision['strategy']} ({decision['size']} data, "
        f"{'similar' if decision['similar'] else 'different'} task): "
        f"trains {', '.join(decision['trainable_stages'])}",
        f"{params.paths.profile}/decision.txt, strategy.png",
    )
    table.add_row(
        "validation", "Great Expectations Data Docs", f"{params.paths.validation}/docs/index.html"
    )
    table.add_row("training curves", "dvc plots show", f"{params.paths.train_log}/plots")
    table.add_row(
        "models and champion history",
        "transferops models [--history]",
        f"{params.paths.models}/history.jsonl",
    )
    table.add_row("total time", f"{summary['minutes']:.1f} min", f"{params.paths.reports}/demo")
    return table
