"""``transferops``: the command line over the flows, the service and monitoring."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from transferops.commands import add_override_option
from transferops.config import (
    DEFAULT_PARAMS,
    FORCEABLE_STRATEGIES,
    ParamsError,
    load_params,
    refuse_unlisted_changes,
)
from transferops.data.datasets import DataSourceError
from transferops.data.shifts import SHIFTS
from transferops.registry.champion import ChampionError
from transferops.runtime import configure_runtime

DESCRIPTION = """Continuous training for transfer learning of image classifiers.
Run from the project root (where params.yaml and dvc.yaml live)."""
EXIT_CODES = """exit codes: 0 done; 1 checked and found problems, or the champion kept (check,
data add, data harvest, gate, train); 2 a usage or input error, named (bad params, a
run key not allowed, a missing file); 3 busy (another training run holds the project);
4 an unexpected failure: one line names it and the file that holds the traceback."""
UNEXPECTED = 4


def build_parser() -> argparse.ArgumentParser:
    """The ``transferops`` command line: one small builder per command."""
    parser = argparse.ArgumentParser(
        prog="transferops",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {project_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    params_after_the_command(parser)
    return parser


def project_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transferops")
    except PackageNotFoundError:  # run from a tree that was never installed
        return "unknown (not installed)"


def params_after_the_command(parser: argparse.ArgumentParser) -> None:
    """``transferops train --params FILE`` as well as ``transferops --params FILE train``:
    every command (and data's actions) takes it; given there, it wins."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for command in action.choices.values():
            command.add_argument(
                "--params", type=Path, default=argparse.SUPPRESS, help="params file"
            )
            params_after_the_command(command)


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train",
        help="run the training flow (DVC snapshot + dvc repro)",
        description="Snapshot the data with DVC, run `dvc repro` stage by stage, push to the "
        "DVC remote, gate the candidate. --params and -S reach the stages through "
        ".transferops/run-params.yaml; params.yaml is never rewritten. They may change only "
        "the keys orchestrate.run_keys lists: any other exits 2 at once, named. One training "
        "run per project at a time: a second one exits 3 at once, naming the run in progress. "
        "Exit 1 when the gate keeps the champion.",
    )
    source = train.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="a labelled ImageFolder to add as a new data drop")
    source.add_argument(
        "--data-version",
        help="train on a recorded data version (a DVC hash, e.g. a model's data_version)",
    )
    train.add_argument(
        "--strategy",
        choices=FORCEABLE_STRATEGIES,
        help="force a freeze strategy (strategy.force) instead of the selector's choice",
    )
    add_override_option(train)


def _add_monitor(commands) -> None:
    monitor = commands.add_parser(
        "monitor",
        help="run the monitoring flow (drift and bias check, retrain decision)",
        description="Compare the latest traffic window with the serving model's reference "
        "(domain shift, where it sits, per-group bias) and write the report under "
        "reports/drift/; then decide whether to retrain (K of N alarms, cooldown) and, if so, "
        "emit the Prefect event transferops.retrain.requested (surgical strategy for an "
        "input-level shift). The training deployment of `transferops deploy` answers it. "
        "docs/monitoring.md, docs/orchestration.md",
    )
    monitor.add_argument(
        "--no-retrain",
        action="store_true",
        help="only check and report; no retrain decision, never request a retrain",
    )
    monitor.add_argument(
        "--new-data",
        help="labelled ImageFolder: checked and added as a drop when the check retrains; the "
        "retrain event names the drop",
    )
    add_override_option(monitor)


def _add_check(commands) -> None:
    add_path_command(
        commands,
        "check",
        help="validate an ImageFolder or manifest without training",
        description="Run the data checks on PATH (an ImageFolder or a CSV/Parquet manifest). "
        "Exit 0 when clean, 1 with a list of problems naming the files. Writes "
        "result.json, problems.txt and Data Docs HTML.",
        out_default="reports/check/<name>",
    )


def _add_data(commands) -> None:
    data = commands.add_parser(
        "data",
        help="dataset versions: add (check + DVC snapshot + push), harvest, queue, list",
        description="Manage labelled data drops, each versioned with DVC.",
    )
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    add = data_commands.add_parser(
        "add",
        help="check PATH; if clean, snapshot it with DVC as a drop and push it",
        description="Check an ImageFolder or manifest; when it passes, copy it under "
        "paths.incoming, `dvc add` and `dvc push` it, and record its version. A dataset that "
        "fails is recorded as failed and never reaches training.",
    )
    add.add_argument("path", type=Path, help="ImageFolder directory or manifest file")
    add.add_argument("--name", help="drop name (default: the folder or file name)")
    checkout = data_commands.add_parser(
        "checkout",
        help="restore a dataset version (e.g. a model's data_version) with DVC",
        description="Materialise the DVC-tracked folder with hash VERSION into a new folder.",
    )
    checkout.add_argument("version", help="DVC hash, e.g. 9aafb477f5aa4198c50a23a1017c2d21.dir")
    checkout.add_argument("--to", type=Path, required=True, help="new folder to restore into")
    data_commands.add_parser(
        "list",
        help="show recorded dataset versions",
        description="Every `data add`: name, DVC version, images, classes, size, status.",
    ).add_argument("--json", action="store_true", help="print the records as JSON")
    harvest = data_commands.add_parser(
        "harvest",
        help="kept production images whose labels came back -> a new drop (checked, DVC)",
        description="Take the images the service kept (serve.keep) that have a feedback "
        "label, give them their own train/val/test split, check them like any drop and "
        "snapshot them with DVC under paths.incoming, with their provenance (request ids, "
        "time range, the models that served them). Exit 1, writing nothing, when a label is "
        "not one of the champion's classes or a class has fewer than --min-per-class labels. "
        "Images harvested before or already in the dataset are left out. docs/flywheel.md",
    )
    harvest.add_argument(
        "--since", type=parse_time, help="only images served at or after this ISO time (UTC)"
    )
    queue = data_commands.add_parser(
        "queue",
        help="which kept, unlabelled production images to label first",
        description="Pick, among the current window's kept images that have no feedback "
        "label yet (and no harvest took), the N to label first: the candidates' embeddings "
        "are grouped with k-means into N groups, and each group gives its most typical image, "
        "the largest groups first (TypiClust). Writes queue.csv (rank, request_id, predicted, "
        "why, priority, unfamiliar, uncertain) and queue.html (the images). Send the labels "
        "to POST /v1/feedback. docs/flywheel.md",
    )
    queue.add_argument("--n", type=int, default=100, help="images to pick (default: %(default)s)")
    queue.add_argument(
        "--since", type=parse_time, help="the window: images served since this ISO time "
        "(default: the latest monitor.window predictions)",
    )  # fmt: skip
    queue.add_argument("--out", type=Path, help="output folder (default: reports/queue)")
    harvest.add_argument("--name", help="drop name (default: harvest-<UTC time>)")
    harvest.add_argument(
        "--min-per-class",
        type=int,
        metavar="K",
        help="labels each class needs (default: monitor.retrain.min_labels_per_class)",
    )


def _add_profile(commands) -> None:
    add_path_command(
        commands,
        "profile",
        help="measure transferability and print the freeze decision for any dataset",
        description="Profile an ImageFolder or manifest on the configured backbone (LogME, "
        "LEEP, k-NN probe, BatchNorm domain distance) and print the decision record, "
        "without training. Writes profile.json, decision.json, decision.txt, strategy.png.",
        out_default="reports/profile/<name>",
    )


def _add_gate(commands) -> None:
    gate = commands.add_parser(
        "gate",
        help="score a candidate against the champion; promote it if it is better",
        description="Score the candidate (default: the last packaged model) and the champion "
        "on the current test split. Promote when the candidate beats the champion by "
        "gate.min_improvement and no group drops more than gate.max_group_drop. "
        "Exit 0 when promoted, 1 when the champion is kept. The verdict goes to "
        "reports/gate/<version>.json.",
    )
    gate.add_argument("tag", nargs="?", help="candidate model tag (default: the last packaged)")
    add_override_option(gate)


def _add_promote(commands) -> None:
    promote = commands.add_parser(
        "promote",
        help="make a packaged model the champion by hand (logged)",
        description="Make TAG the champion without the gate. The change is atomic and "
        "logged in models/history.jsonl with who, what and why.",
    )
    promote.add_argument("tag", help="model tag, e.g. transferops-classifier:abc123")
    promote.add_argument("--reason", required=True, help="why (goes into the history)")


def _add_rollback(commands) -> None:
    rollback = commands.add_parser(
        "rollback",
        help="bring back the champion the current one replaced (logged)",
        description="Make the model that the current champion replaced the champion again.",
    )
    rollback.add_argument("--reason", required=True, help="why (goes into the history)")


def _add_models(commands) -> None:
    models = commands.add_parser(
        "models",
        help="list packaged models and the champion; one model's lineage; champion history",
        description="Without TAG: every packaged model with data version, git revision, "
        "strategy and accuracy, the champion starred. With TAG: that model's lineage "
        "(data version, commit, params, strategy, metrics) as JSON.",
    )
    models.add_argument("tag", nargs="?", help="a model tag: print its lineage")
    models.add_argument(
        "--history", action="store_true", help="every champion change: who, what, why"
    )
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_bento(commands) -> None:
    commands.add_parser(
        "bento",
        help="build a Bento of the service and the champion (offline `bentoml build`)",
        description="Run `bentoml build -f services/bentofile.yaml .`: the service code, "
        "params.yaml, the champion record and the champion model, ready for "
        "`bentoml serve BENTO_TAG` or `bentoml containerize`.",
    )


def _add_deploy(commands) -> None:
    deploy = commands.add_parser(
        "deploy",
        help="serve the Prefect deployments: scheduled checks, event-triggered retraining",
        description="Register and serve transferops-monitoring/check (on orchestrate."
        "monitor_cron) and transferops-training/retrain (answering transferops.retrain."
        "requested: orchestrate.trigger_threshold events within monitor.retrain."
        "cooldown_hours start one run; concurrency limit 1; and on orchestrate.retrain_cron "
        "when set). Runs until interrupted. Needs a Prefect server that stays up: "
        "`prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api.",
        epilog="The UI: http://127.0.0.1:4200 (deployments, runs, logs, each run's record). "
        "With --work-pool, the deployments are registered on that pool and the command "
        "returns; `prefect worker start --pool POOL` runs them (docs/scaling.md).",
    )
    deploy.add_argument(
        "--work-pool",
        metavar="POOL",
        help="register on this Prefect work pool (process, docker, kubernetes) instead of "
        "serving from this process; create it first: prefect work-pool create POOL --type process",
    )
    deploy.add_argument(
        "--image",
        help="with --work-pool of type docker or kubernetes: the image flow runs start in "
        "(build it from flows/infra/Dockerfile)",
    )


def _add_report(commands) -> None:
    report = commands.add_parser(
        "report",
        help="build the reviewers' HTML index (drift, bias, models, validation, runs)",
        description="Write one static HTML page linking the latest drift and bias reports, "
        "the model history (every champion change and why), the latest validation results "
        "and the recent runs with what triggered them. Open it in any browser.",
    )
    report.add_argument(
        "--out", type=Path, help="output file (default: <paths.reports>/index.html)"
    )


def _add_serve(commands) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve the champion with `bentoml serve`",
        description="Start the BentoML prediction service on "
        "localhost (a thin wrapper over `bentoml serve`).",
    )
    serve.add_argument("--port", type=int, default=3000, help="port (default: %(default)s)")
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s); beyond localhost the service needs "
        "an API key in $TRANSFEROPS_API_KEY (serve.api_key_env), or "
        "serve.allow_unauthenticated: true",
    )


def _add_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole loop on the bundled Fashion-MNIST",
        description="Train, serve, send normal then shifted traffic, "
        "detect drift, retrain, serve the new model; print a summary.",
    )
    demo.add_argument(
        "--shift",
        choices=SHIFTS,
        default="blur",
        help="how production traffic changes (default: %(default)s)",
    )


COMMANDS = (
    _add_train,
    _add_monitor,
    _add_check,
    _add_data,
    _add_profile,
    _add_gate,
    _add_promote,
    _add_rollback,
    _add_models,
    _add_bento,
    _add_deploy,
    _add_report,
    _add_serve,
    _add_demo,
)


def add_path_command(commands, name: str, *, help: str, description: str, out_default: str):
    """A command over one dataset: PATH, ``--out`` and ``-S`` overrides."""
    command = commands.add_parser(name, help=help, description=description)
    command.add_argument("path", type=Path, help="ImageFolder directory or manifest file")
    command.add_argument("--out", type=Path, help=f"output folder (default: {out_default})")
    add_override_option(command)
    return command


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        params = load_params(args.params, getattr(args, "overrides", []))
        if args.command == "train":  # what a run may change: refused before anything runs
            refuse_unlisted_changes(load_params(DEFAULT_PARAMS), params, "transferops train")
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_runtime(params.paths.bentoml_home)
    try:
        return run_command(args, params)
    # Named, expected failures: a source that cannot be read, a model not in the
    # store, a promotion that cannot happen, a run asking what it may not. Exit 2, one line.
    except (DataSourceError, FileNotFoundError, ChampionError, ParamsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # anything else: one line, the traceback kept in a file
        where = save_traceback(Path(params.paths.reports), args.command)
        named = f"{type(err).__name__}: {err}"
        print(f"error: unexpected {named} (traceback: {where})", file=sys.stderr)
        return UNEXPECTED


def save_traceback(reports: Path, command: str) -> Path:
    """The current exception's traceback under ``<paths.reports>/errors/``; its path."""
    import traceback

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = reports / "errors" / f"{stamp}-{command}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(traceback.format_exc())
    return path


def run_command(args: argparse.Namespace, params) -> int:
    if args.command == "serve":
        from flows.serving import bentoml_command

        command = bentoml_command(args.port, host=args.host)
        os.environ["TRANSFEROPS_PARAMS"] = str(Path(args.params).resolve())  # the service reads it
        os.execv(command[0], command)
    if args.command == "data":
        return run_data(args, params)
    if args.command == "profile":
        return run_profile(args.path, params, args.out)
    if args.command == "check":
        return run_check(args.path, params, args.out)
    if args.command in ("gate", "promote", "rollback", "models", "bento"):
        return run_models(args, params)
    if args.command == "deploy":
        from flows.deploy import NoServerError, deploy_to_work_pool, serve_deployments

        try:
            if args.work_pool:
                ids = deploy_to_work_pool(params, args.work_pool, args.image, args.params)
                print(f"registered {len(ids)} deployments on work pool {args.work_pool!r}: {ids}")
                print(f"run them with: prefect worker start --pool {args.work_pool}")
            else:
                serve_deployments(params, args.params)
        except (NoServerError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    if args.command == "report":
        from monitoring.index import build_index

        print(build_index(params, args.out))
        return 0
    if args.command == "train":
        from flows.training import TrainingBusy, refuse_when_busy, training_flow

        try:
            refuse_when_busy()
            result = training_flow(
                dataset=args.dataset,
                data_version=args.data_version,
                overrides=args.overrides,
                strategy=args.strategy,
                params_file=str(args.params),
            )
        except TrainingBusy as busy:
            print(f"error: {busy}", file=sys.stderr)
            return 3
    elif args.command == "monitor":
        from flows.monitoring import monitoring_flow

        result = monitoring_flow(
            retrain=not args.no_retrain,
            new_data=args.new_data,
            overrides=args.overrides,
            params_file=str(args.params),
        )
    else:
        from flows.demo import DemoSettings, run_demo

        result = run_demo(Path.cwd(), DemoSettings(shift=args.shift))
    if args.command != "demo":
        print(json.dumps(result, indent=2, default=str))
    if args.command == "train" and not result["gate"]["promoted"]:
        return 1  # trained and gated: the champion stays (the reasons are in the result)
    return 0


def run_profile(path: Path, params, out: Path | None) -> int:
    from transferops.models.strategy import profile_source

    out = out or Path(params.paths.reports) / "profile" / Path(path).resolve().name
    decision = profile_source(path, params, out)
    print(decision.reason)
    summary = {
        "strategy": decision.strategy,
        "numbers": decision.numbers,
        "learning_rates": decision.learning_rates,
    }
    print(json.dumps(summary, indent=2))
    print(f"record: {out / 'decision.json'}; picture: {out / 'strategy.png'}")
    return 0


def parse_time(text: str) -> datetime:
    """An ISO time for --since; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an ISO time: {text!r} ({err})") from err
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_data(args: argparse.Namespace, params) -> int:
    from rich.console import Console
    from rich.table import Table

    from flows.data import add_dataset, checkout_version, harvest_dataset, list_versions
    from transferops.data.harvest import HarvestRefused

    if args.data_command == "queue":
        from flows.data import harvested_before
        from monitoring.queue import QUEUE_HTML, label_queue

        out = args.out or Path(params.paths.reports) / "queue"
        exclude, _ = harvested_before(Path(params.paths.incoming))
        ranked = label_queue(params, out, args.n, since=args.since, exclude=exclude)
        print(f"{len(ranked)} image(s) to label first: {out / 'queue.csv'}, {out / QUEUE_HTML}")
        return 0
    if args.data_command == "harvest":
        try:
            record = harvest_dataset(
                params, since=args.since, name=args.name, min_per_class=args.min_per_class
            )
        except HarvestRefused as refused:
            print(f"error: {refused}", file=sys.stderr)
            return 1
        print(json.dumps(record.__dict__, indent=2))
        return 0 if record.status == "passed" else 1
    if args.data_command == "checkout":
        print(checkout_version(args.version, args.to))
        return 0
    if args.data_command == "add":
        record = add_dataset(args.path, params, args.name)
        print(json.dumps(record.__dict__, indent=2))
        return 0 if record.status == "passed" else 1
    if args.json:
        print(json.dumps([v.__dict__ for v in list_versions(params.paths.registry)], indent=2))
        return 0
    table = Table(title=f"dataset versions ({params.paths.registry})")
    for column in ("name", "version", "images", "classes", "MB", "status", "added"):
        table.add_column(column)
    for v in list_versions(params.paths.registry):
        table.add_row(
            v.name,
            (v.version or "-")[:12],
            str(v.images),
            str(v.classes),
            f"{v.bytes / 1e6:.1f}",
            v.status,
            v.added_at,
        )
    Console().print(table)
    return 0


def run_models(args: argparse.Namespace, params) -> int:
    """The champion and the model store: gate, promote, rollback, models, bento."""
    from rich.console import Console

    from flows.models import build_bento, history_table, lineage_of, model_rows, models_table
    from transferops.registry import champion
    from transferops.registry.store import resolve_tag, stored_model_dir

    models_dir = params.paths.models
    if args.command == "gate":
        from transferops.registry.gate import run_gate

        verdict = run_gate(params, args.tag)
        print(verdict.summary())
        if verdict.report:
            print(f"verdict: {verdict.report}")
        return 0 if verdict.promote else 1
    if args.command == "promote":
        record = champion.promote(
            models_dir,
            resolve_tag(args.tag),
            reason=args.reason,
            via="transferops promote",
            require=stored_model_dir,
        )
    elif args.command == "rollback":
        record = champion.rollback(
            models_dir, reason=args.reason, via="transferops rollback", require=stored_model_dir
        )
    elif args.command == "bento":
        print(build_bento(params, Path.cwd()))
        return 0
    elif args.tag:
        print(json.dumps(lineage_of(args.tag), indent=2))
        return 0
    elif args.json:
        rows = (
            [asdict(record) for record in champion.history(models_dir)]
            if args.history
            else model_rows(params)
        )
        print(json.dumps(rows, indent=2, default=str))
        return 0
    else:
        Console().print(history_table(params) if args.history else models_table(params))
        return 0
    print(f"champion: {record.tag} (was {record.previous}); logged in {models_dir}")
    return 0


def run_check(path: Path, params, out: Path | None) -> int:
    from transferops.data.checks import check_source

    out = out or Path(params.paths.reports) / "check" / Path(path).resolve().name
    report = check_source(path, params.validate_, out)
    verdict = "clean" if report.success else f"{len(report.problems)} problem(s)"
    print(f"{path}: {report.images} images, {report.classes} classes: {verdict}")
    if report.problems:
        print(report.text())
    print(f"report: {out / 'result.json'}, {out / 'problems.txt'}, {out / 'docs' / 'index.html'}")
    return 0 if report.success else 1


if __name__ == "__main__":
    sys.exit(main())
