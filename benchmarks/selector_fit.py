"""Decision rules for the freeze strategy, fitted in sample and leave-one-task-out.

A rule maps a task's profile numbers to a strategy. Families:

- ``table/<measure>``: the size x similarity table of ``pipelines/strategy.py``
  (its regions fixed), with the size thresholds and a similarity threshold on
  ``<measure>`` fitted: ``knn`` (10-NN similarity, what ships), ``logme``,
  ``leep`` (normalised: 0 uninformative, 1 perfect), ``bn`` (minus the mean
  BatchNorm distance to ImageNet);
- ``learned/<measure>``: the same thresholds, and the strategy of each region
  fitted too;
- ``probe_else_full/<measure>``: the linear probe for small, similar tasks,
  full fine-tuning for everything else (two thresholds fitted);
- ``nearest``: the strategy that was best for the most similar other task
  (standardised log size, k-NN, LogME, LEEP); meaningful held out only;
- baselines: ``always_full``, ``always_linear_probe``, ``size_only`` (small:
  probe, medium: top blocks, large: full; thresholds fitted).

Fitting = exhaustive search for the thresholds (and regions) with the lowest
mean regret on the fitting tasks, ties to the cheaper, then to the first in
grid order. A rule's result on a task is the default recipe's run of the
strategy it picks; regret is the oracle's test accuracy minus that.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
from rich.console import Console
from rich.table import Table

from transferops.config import CLASSIC_REGIONS
from transferops.models.strategy import STRATEGIES, region_key, similarity_of

SIZE_ONLY = {"small": "linear_probe", "medium": "top_blocks", "large": "full"}
SMALL = (5, 10, 15, 20, 30, 40, 50, 75, 100, 150)
LARGE = (100, 200, 300, 500, 750, 1000, 2000, math.inf)
MEASURES = ("knn", "logme", "leep", "bn")
SHIPPED = "probe_else_full/knn"  # the rule params.yaml ships (docs/strategy.md says why)
FAMILIES = (
    "table/knn",
    "table/logme",
    "table/leep",
    "table/bn",
    "learned/knn",
    "learned/leep",
    "probe_else_full/knn",
    "probe_else_full/leep",
    "nearest",
    "size_only",
    "always_full",
    "always_linear_probe",
)


def measure_of(result: dict, name: str) -> float:
    return similarity_of(result["numbers"], name)


def oracle(result: dict) -> dict:
    """The grid's best cell on validation; on a tie (small validation sets tie often),
    the mean test accuracy of the tied cells: what picking any of them is worth."""
    best = max(cell["val"] for cell in result["grid"])
    tied = [cell for cell in result["grid"] if cell["val"] == best]
    names = " | ".join(f"{c['strategy']} @ {c['lr']:g}" for c in tied)
    return {"name": names, "val": best, "test": float(np.mean([c["test"] for c in tied]))}


def regret(result: dict, strategy: str) -> float:
    return 100 * (oracle(result)["test"] - result["recipe"][strategy]["test"])


def grid_seconds(result: dict) -> float:
    return result["features_seconds"] + sum(cell["seconds"] for cell in result["grid"])


def cost_share(result: dict, strategy: str) -> float:
    spent = result["features_seconds"] + result["metric_seconds"]
    return (spent + result["recipe"][strategy]["seconds"]) / grid_seconds(result)


def size_of(per_class: float, small: float, large: float) -> str:
    return "small" if per_class < small else "large" if per_class >= large else "medium"


def _thresholds(results: list[dict], measure: str | None) -> list[tuple]:
    cuts = [math.inf]
    if measure is not None:
        values = sorted({measure_of(r, measure) for r in results})
        cuts = [-math.inf, *[(a + b) / 2 for a, b in itertools.pairwise(values)], math.inf]
    return [(s, lg, c) for s in SMALL for lg in LARGE if lg > s for c in cuts]


def _region(result: dict, small: float, large: float, cut: float, measure: str) -> str:
    size = size_of(result["numbers"]["per_class_min"], small, large)
    return region_key(size, measure_of(result, measure) >= cut)


def _objective(results: list[dict], pick: Callable[[dict], str]) -> tuple[float, float]:
    return (
        float(np.mean([regret(r, pick(r)) for r in results])),
        float(np.mean([cost_share(r, pick(r)) for r in results])),
    )


def fit(family: str, results: list[dict]) -> Callable[[dict], str]:
    """The rule of ``family`` with the lowest mean regret on ``results``."""
    if family.startswith("always_"):
        strategy = family.removeprefix("always_")
        return lambda r: strategy
    if family == "nearest":
        return _nearest(results)
    kind, _, measure = family.partition("/")
    best, best_key = None, None
    for small, large, cut in _thresholds(results, measure or None):
        if kind == "size_only":
            table = SIZE_ONLY

            def pick(r, s=small, lg=large, t=table):
                return t[size_of(r["numbers"]["per_class_min"], s, lg)]

        else:
            table = dict(CLASSIC_REGIONS)
            if kind == "learned":
                table |= _fitted_regions(results, small, large, cut, measure)
            elif kind == "probe_else_full":
                if large != math.inf:
                    continue  # two regions only: small and similar, or not
                table = dict.fromkeys(CLASSIC_REGIONS, "full") | {"small/similar": "linear_probe"}

            def pick(r, s=small, lg=large, c=cut, t=table, m=measure):
                return t[_region(r, s, lg, c, m)]

        key = _objective(results, pick)
        if best_key is None or key < best_key:
            best, best_key = pick, key
            best.__dict__["setting"] = {"small": small, "large": large, "cut": cut, "table": table}
    return best


def _fitted_regions(results: list[dict], small, large, cut, measure) -> dict:
    """Per region, the strategy with the least total regret over the tasks in it."""
    chosen = {}
    for region in CLASSIC_REGIONS:
        inside = [r for r in results if _region(r, small, large, cut, measure) == region]
        if inside:
            chosen[region] = min(STRATEGIES, key=lambda s: sum(regret(r, s) for r in inside))
    return chosen


def _describe(result: dict) -> np.ndarray:
    per_class = math.log(result["numbers"]["per_class_min"])
    return np.array([per_class, *[measure_of(result, m) for m in ("knn", "logme", "leep")]])


def _nearest(results: list[dict]) -> Callable[[dict], str]:
    points = np.stack([_describe(r) for r in results])
    std = points.std(0) + 1e-9

    def pick(result: dict) -> str:
        distance = np.linalg.norm((points - _describe(result)) / std, axis=1)
        distance[[r["task"] == result["task"] for r in results]] = np.inf
        closest = results[int(distance.argmin())]
        return min(STRATEGIES, key=lambda s: regret(closest, s))

    return pick


def score_policies(results: list[dict], families=FAMILIES, loo: bool = False) -> dict:
    """Per family: each task's choice, regret and cost, in sample and (``loo``) held out."""
    scores: dict = {"tasks": [_task_row(r) for r in results], "families": {}}
    for family in families:
        in_sample = fit(family, results)
        entry = {"in_sample": [_row(r, in_sample(r)) for r in results]}
        if loo and len(results) > 2:
            entry["held_out"] = [
                _row(r, fit(family, [o for o in results if o is not r])(r)) for r in results
            ]
        if getattr(in_sample, "setting", None):
            entry["setting"] = _readable(in_sample.setting) | {"measure": family.partition("/")[2]}
        scores["families"][family] = entry
    scores["recipe_check"] = [_recipe_check(r) for r in results]
    shipped = scores["families"][SHIPPED]
    rows = shipped.get("held_out", shipped["in_sample"])
    scores["default_run"] = [_default_run(r, row) for r, row in zip(results, rows, strict=True)]
    return scores


def _default_run(result: dict, row: dict) -> dict:
    """The default run (the shipped rule's pick, trained by the recipe) against the grid's
    best cell on test, where that cell beats the probe by 3 points or more."""
    probe = result["recipe"]["linear_probe"]["test"]
    top = max(result["grid"], key=lambda c: c["test"])
    return {
        "task": result["task"],
        "best_cell": f"{top['strategy']} @ {top['lr']:g}",
        "best_cell_test": top["test"],
        "gain_over_probe": 100 * (top["test"] - probe),
        "default": row["strategy"],
        "default_test": row["test"],
        "gap": 100 * (top["test"] - row["test"]),
    }


def _readable(setting: dict) -> dict:
    """Thresholds and table as JSON (infinite thresholds as strings)."""
    return {
        k: (str(v) if isinstance(v, float) and math.isinf(v) else v) for k, v in setting.items()
    }


def _row(result: dict, strategy: str) -> dict:
    return {
        "task": result["task"],
        "strategy": strategy,
        "test": result["recipe"][strategy]["test"],
        "regret": regret(result, strategy),
        "cost_share": cost_share(result, strategy),
    }


def _task_row(result: dict) -> dict:
    best = oracle(result)
    n = result["numbers"]
    return {
        "task": result["task"],
        "classes": result["classes"],
        "per_class": n["per_class_min"],
        "native_side": result["native_side"],
        "knn_similarity": n["knn_similarity"],
        "logme": n["logme"],
        "leep": measure_of(result, "leep"),
        "oracle": best["name"],
        "oracle_test": best["test"],
        "grid_seconds": grid_seconds(result),
        "recipe_test": {s: result["recipe"][s]["test"] for s in STRATEGIES},
    }


def _recipe_check(result: dict) -> dict:
    """Item 2 of issue 17: where a grid cell beats the probe by 3+ test points,
    how far below it is the default recipe of the same strategy?"""
    probe = result["recipe"]["linear_probe"]["test"]
    rows = []
    for strategy in STRATEGIES[1:]:
        cells = [c for c in result["grid"] if c["strategy"] == strategy]
        top = max(cells, key=lambda c: c["test"])
        rows.append(
            {
                "strategy": strategy,
                "best_cell_lr": top["lr"],
                "best_cell_test": top["test"],
                "gain_over_probe": 100 * (top["test"] - probe),
                "recipe_test": result["recipe"][strategy]["test"],
                "gap": 100 * (top["test"] - result["recipe"][strategy]["test"]),
                "cells_that_fell_back": sum(
                    c["finetune"]["kept"] == "probe" for c in cells if "finetune" in c
                ),
            }
        )
    return {"task": result["task"], "probe_test": probe, "strategies": rows}


def render_tables(scores: dict, console: Console) -> None:
    families = scores["families"]
    held = "held_out" in families[SHIPPED]
    summary = Table(title="Regret in test-accuracy points (oracle: the grid's val-best cell)")
    for column in ("rule", "in-sample mean", "in-sample worst"):
        summary.add_column(column)
    if held:
        for column in ("held-out mean", "held-out worst", "held-out cost share"):
            summary.add_column(column)
    for family, entry in families.items():
        cells = [family, *_mean_worst(entry["in_sample"])]
        if held:
            rows = entry["held_out"]
            share = np.mean([r["cost_share"] for r in rows])
            cells += [*_mean_worst(rows), f"{100 * share:.1f}%"]
        summary.add_row(*cells)
    console.print(summary)
    per_task = Table(title=f"Per task: oracle against the shipped rule ({SHIPPED})")
    for column in (
        "task",
        "classes x per class",
        "native px",
        "kNN sim",
        "oracle cell",
        "oracle",
        "rule picks (held out)" if held else "rule picks",
        "its test",
        "regret",
        "cost / grid",
    ):
        per_task.add_column(column)
    rows = families[SHIPPED]["held_out" if held else "in_sample"]
    for task, row in zip(scores["tasks"], rows, strict=True):
        per_task.add_row(
            task["task"],
            f"{task['classes']} x {task['per_class']}",
            f"{task['native_side']:.0f}",
            f"{task['knn_similarity']:.2f}",
            task["oracle"],
            f"{task['oracle_test']:.3f}",
            row["strategy"],
            f"{row['test']:.3f}",
            f"{row['regret']:.1f}",
            f"{100 * row['cost_share']:.1f}%",
        )
    console.print(per_task)
    check = Table(title="Default recipe against the best grid cell of the same strategy (test)")
    for column in ("task", "strategy", "probe", "best cell", "gain", "recipe", "gap", "fell back"):
        check.add_column(column)
    for task in scores["recipe_check"]:
        for row in task["strategies"]:
            check.add_row(
                task["task"],
                row["strategy"],
                f"{task['probe_test']:.3f}",
                f"{row['best_cell_test']:.3f} @ {row['best_cell_lr']:g}",
                f"{row['gain_over_probe']:+.1f}",
                f"{row['recipe_test']:.3f}",
                f"{row['gap']:+.1f}",
                f"{row['cells_that_fell_back']}/4",
            )
    console.print(check)
    default = Table(title="The default run (held-out rule + recipe) against the grid's best cell")
    for column in ("task", "best cell (test)", "gain over probe", "default run", "its test", "gap"):
        default.add_column(column)
    for row in scores["default_run"]:
        default.add_row(
            row["task"],
            f"{row['best_cell_test']:.3f} {row['best_cell']}",
            f"{row['gain_over_probe']:+.1f}",
            row["default"],
            f"{row['default_test']:.3f}",
            f"{row['gap']:+.1f}" + ("" if row["gain_over_probe"] >= 3 else " (cell < probe + 3)"),
        )
    console.print(default)


def _mean_worst(rows: list[dict]) -> list[str]:
    values = [r["regret"] for r in rows]
    return [f"{np.mean(values):.2f}", f"{np.max(values):.2f}"]
