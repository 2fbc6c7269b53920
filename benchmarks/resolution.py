"""Does ``image_size: auto`` pick a side close to the best one the budget affords?

For each task of the suite and each input side (multiples of 32 from 64 px
up to the backbone's 224), the default run as the pipeline makes it: frozen
features at that side, the selector's decision from the profile (measured at
``profile.side``, as the pipeline does), then the default recipe of that
strategy (probe, learning-rate race, early stopping). Recorded per side: test
accuracy, the fine-tuning time ``auto`` estimates, the measured wall and CPU
seconds, and whether the estimate fits ``model.auto.budget_s``. The verdict
per task: auto's side against the best side whose estimate fits the budget.

    .venv/bin/python benchmarks/resolution.py                  # ~1 h on 2 vCPUs
    .venv/bin/python benchmarks/resolution.py --tasks icons --sides 64 128 224

Per-task results are kept in ``--out`` and reused unless ``--fresh``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from strategy_oracle import Runner, start
from tasks import TaskUnavailable, build

from transferops.commands import add_override_option
from transferops.models.recipe import choose_input_side, planned_images
from transferops.models.resolution import estimated_seconds
from transferops.models.strategy import decide

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("resolution")
TASKS = ("fmnist-1000", "letters", "scripts", "photos", "icons", "clipart", "clipart-small")


def run_side(task, params, device: str, side: int, numbers: dict) -> dict:
    """The default run at ``side``: the selector's strategy, trained by the default recipe."""
    runner = Runner(task, params, device, side)
    wall, cpu = time.perf_counter(), time.process_time()
    runner.train_features, runner.val_features = runner.features("train"), runner.features("val")
    decision = decide(numbers, runner.stages, params.strategy, params.train)
    record = runner.train(decision.strategy, None)
    planned = planned_images(len(task.part("train")[1]), params.train)
    rate = params.model.auto.images_per_s.on(device)
    return {
        "side": side,
        "strategy": decision.strategy,
        "test": record["test"],
        "val": record["val"],
        "estimated_s": estimated_seconds(planned, side, rate),
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "finetune": record.get("finetune"),
    }


def run_task(name: str, params, device: str, sides: list[int], saved: dict | None) -> dict:
    task = build(name, params.seed)
    n_train = len(task.part("train")[1])
    profile = Runner(task, params, device, params.profile.side).profile()[0]
    auto = choose_input_side(
        params, native=task.native_side(), n_train=n_train, backbone_side=224, device=device
    )
    result = saved or {"task": name, "native_side": task.native_side(), "rows": []}
    result |= {"auto": auto.to_dict(), "numbers": profile}
    done = {row["side"] for row in result["rows"]}
    for side in sides:
        if side not in done:
            result["rows"].append(run_side(task, params, device, side, profile))
            log.info("%s at %d px: %s", name, side, result["rows"][-1])
    result["rows"].sort(key=lambda row: row["side"])
    return result


def verdict(result: dict, budget_s: float) -> dict:
    fitting = [r for r in result["rows"] if r["estimated_s"] <= budget_s]
    best = max(fitting or result["rows"], key=lambda r: r["test"])
    auto_side = result["auto"]["side"]
    auto = next((r for r in result["rows"] if r["side"] == auto_side), None)
    return {
        "best_side": best["side"],
        "best_test": best["test"],
        "auto_side": auto_side,
        "auto_test": None if auto is None else auto["test"],
        "gap": None if auto is None else 100 * (best["test"] - auto["test"]),
    }


def render(results: list[dict], budget_s: float, console: Console) -> None:
    table = Table(title=f"Test accuracy per input side (budget {budget_s:.0f} s of fine-tuning)")
    for column in ("task", "native px", "side", "strategy", "test", "est. s", "wall s", "cpu s"):
        table.add_column(column)
    for result in results:
        for row in result["rows"]:
            marks = (" auto" if row["side"] == result["auto"]["side"] else "") + (
                "" if row["estimated_s"] <= budget_s else " (over budget)"
            )
            table.add_row(
                result["task"],
                f"{result['native_side']:.0f}",
                f"{row['side']}{marks}",
                row["strategy"],
                f"{row['test']:.3f}",
                f"{row['estimated_s']:.0f}",
                f"{row['wall_s']:.0f}",
                f"{row['cpu_s']:.0f}",
            )
    console.print(table)
    summary = Table(title="auto against the best side within the budget")
    for column in ("task", "auto", "auto test", "best side", "best test", "gap (pts)"):
        summary.add_column(column)
    gaps = []
    for result in results:
        v = verdict(result, budget_s)
        gaps += [] if v["gap"] is None else [v["gap"]]
        summary.add_row(
            result["task"],
            str(v["auto_side"]),
            "-" if v["auto_test"] is None else f"{v['auto_test']:.3f}",
            str(v["best_side"]),
            f"{v['best_test']:.3f}",
            "-" if v["gap"] is None else f"{v['gap']:.1f}",
        )
    console.print(summary)
    if gaps:
        console.print(f"mean gap {np.mean(gaps):.2f} points, worst {np.max(gaps):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--sides", nargs="*", type=int, default=[64, 96, 128, 160])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "resolution")
    parser.add_argument("--fresh", action="store_true")
    add_override_option(parser)
    args = parser.parse_args(argv)
    params, device = start(args)
    results = []
    for name in args.tasks:
        path = args.out / f"{name}.json"
        saved = None if args.fresh or not path.is_file() else json.loads(path.read_text())
        try:
            result = run_task(name, params, device, args.sides, saved)
        except TaskUnavailable as err:
            log.warning("skipping %s: %s", name, err)
            continue
        path.write_text(json.dumps(result, indent=1, default=float))
        results.append(result)
    render(results, params.model.auto.budget_s.on(device), Console(width=150))
    return 0


if __name__ == "__main__":
    sys.exit(main())
