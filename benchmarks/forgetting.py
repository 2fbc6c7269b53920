"""Does a drift retrain forget the original domain? Three ways to retrain, measured.

For each task and shift, what a drift retrain does in the flywheel demo:

- the champion: the engine's linear probe (``transferops.models.probe``) on
  the frozen backbone's 64-px features of the task's own images;
- a harvest: K labelled shifted images, split per class as ``data harvest``
  splits them (70/15/15, ``transferops.data.harvest.split_per_class``);
- **from zero** (the retrain before ``train.warm_start``): the probe refitted
  on base + harvest training images (val: both), from a random head; this is
  the demo's surgical retrain whenever its probe wins the learning-rate race
  (it did in the demo);
- **blend**: the champion's and from-zero's heads averaged (WiSE-FT,
  Wortsman et al. 2022, at their default one half: on one backbone, the two
  models' logits averaged);
- **warm** (shipped, ``train.warm_start``): the same probe started from the
  champion's head; its best epoch is one that trained, never the start.

Each model is scored on held-out base images and on held-out shifted images,
and the real gate (``transferops.registry.gate.compare``, params.yaml's
``gate``) judges each against the champion on what the real gate sees: the
base test split and the harvest's own test split.

In sample: Fashion-MNIST blur is the demo's task and shift. The suite's tasks
(``benchmarks/tasks.py``; ``make bench-data``) and the other shifts were not
looked at before the first run of this table; the "never the start" rule was
added after it (scripts invert: the warm probe's best epoch was the start).

    .venv/bin/python benchmarks/forgetting.py
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from queue_vs_random import SIDE, TASKS, features  # noqa: E402

from transferops.config import load_params  # noqa: E402
from transferops.data.harvest import split_per_class  # noqa: E402
from transferops.data.shifts import apply_shift  # noqa: E402
from transferops.models.backbones import load_backbone, transform_for  # noqa: E402
from transferops.models.evaluation import NO_GROUP  # noqa: E402
from transferops.models.probe import fit_linear_probe  # noqa: E402
from transferops.registry.gate import compare  # noqa: E402
from transferops.runtime import set_threads  # noqa: E402

# Of the held-out images (the task's own split, not its train images): base val, base
# test, the harvest's pool, shifted test.
PARTS = {"base_val": 0.15, "base_test": 0.3, "harvest": 0.3, "shifted_test": 0.25}


def deal(data: dict, rng: np.random.Generator) -> dict[str, tuple[list, np.ndarray]]:
    """The task's base images train; the rest, shuffled, go to PARTS."""
    images = data["pool"][0] + data["test"][0]
    labels = np.concatenate([data["pool"][1], data["test"][1]])
    order = rng.permutation(len(labels))
    parts, start = {"base_train": data["base"]}, 0
    for name, share in PARTS.items():
        rows = order[start : start + round(share * len(order))]
        parts[name] = ([images[i] for i in rows], labels[rows])
        start += len(rows)
    return parts


def probe(x, y, vx, vy, classes: int, params, start=None) -> torch.nn.Linear:
    cfg = params.train
    weight, bias, _ = fit_linear_probe(
        x, y, vx, vy, num_classes=classes, epochs=cfg.probe_epochs, lr=cfg.lr,
        weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, seed=params.seed,
        start_head=None if start is None else (start.weight.detach(), start.bias.detach()),
    )  # fmt: skip
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    head.load_state_dict({"weight": weight, "bias": bias})
    return head


@torch.inference_mode()
def predict(head: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    return head(torch.from_numpy(x).float()).argmax(1).numpy()


def answers(labels: np.ndarray, predictions: np.ndarray) -> SimpleNamespace:
    """What the gate reads of a model's answers (labels, predictions, groups)."""
    return SimpleNamespace(
        labels=labels.astype(str),
        predictions=predictions.astype(str),
        groups=np.full(len(labels), NO_GROUP),
    )


def verdict(params, champion, model, x: np.ndarray, y: np.ndarray, domains) -> str:
    promote, reasons, numbers = compare(
        answers(y, predict(champion, x)), answers(y, predict(model, x)),
        params.gate, params.evaluate, params.seed, domains, {"base"},
    )  # fmt: skip
    base = next(d for d in numbers["domains"] if d["domain"] == "base")
    low, high = base["change_ci"]
    why = "forgets" if any(r.startswith("forgetting") for r in reasons) else "no gain"
    return f"{'PROMOTE' if promote else why} (base {base['change']:+.3f}, {low:+.3f}..{high:+.3f})"


def cell(parts: dict, shift: str, k: int, extract, params, classes: int) -> dict:
    shifted = lambda name: [apply_shift(i, shift) for i in parts[name][0]]  # noqa: E731
    x = {name: extract(parts[name][0]) for name in ("base_train", "base_val", "base_test")}
    harvest_x, shifted_x = extract(shifted("harvest")[:k]), extract(shifted("shifted_test"))
    harvest_y, y = parts["harvest"][1][:k], {name: part[1] for name, part in parts.items()}
    split = split_per_class(pd.Series(harvest_y), (0.7, 0.15, 0.15), params.seed).to_numpy()
    champion = probe(x["base_train"], y["base_train"], x["base_val"], y["base_val"], classes,
                     params)  # fmt: skip
    on = lambda s: (harvest_x[split == s], harvest_y[split == s])  # noqa: E731
    merged = (
        np.concatenate([x["base_train"], on("train")[0]]),
        np.concatenate([y["base_train"], on("train")[1]]),
        np.concatenate([x["base_val"], on("val")[0]]),
        np.concatenate([y["base_val"], on("val")[1]]),
    )
    retrain = probe(*merged, classes, params)
    warm = probe(*merged, classes, params, start=champion)
    blend = torch.nn.Linear(retrain.in_features, retrain.out_features)
    blend.load_state_dict(
        {k: (v + retrain.state_dict()[k]) / 2 for k, v in champion.state_dict().items()}
    )
    gate_x = np.concatenate([x["base_test"], on("test")[0]])
    gate_y = np.concatenate([y["base_test"], on("test")[1]])
    domains = ["base"] * len(y["base_test"]) + ["harvest"] * int((split == "test").sum())
    row = {}
    models = {"champion": champion, "retrain": retrain, "blend": blend, "warm": warm}
    for name, model in models.items():
        row[name] = (
            float((predict(model, x["base_test"]) == y["base_test"]).mean()),
            float((predict(model, shifted_x) == y["shifted_test"]).mean()),
        )
    for name in ("retrain", "blend", "warm"):
        model = models[name]
        row[f"gate {name}"] = verdict(params, champion, model, gate_x, gate_y, domains)
    row["sizes"] = (len(y["base_test"]), len(y["shifted_test"]), int((split == "test").sum()))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS),
                        default=["fashion-mnist", "scripts", "letters", "photos"])  # fmt: skip
    parser.add_argument("--shifts", nargs="+", default=["blur", "invert"])
    parser.add_argument("--k", type=int, default=300, help="labelled shifted images harvested")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    set_threads(params.threads)
    backbone = load_backbone(params.model.backbone, params.model.weights)
    transform = transform_for(backbone, SIDE)
    extract = lambda images: features(backbone, transform, images)  # noqa: E731
    table = Table(
        title=f"a drift retrain from zero, blended, or from the champion's head (warm), "
        f"K = {args.k} harvested labels ({platform.node()}, {date.today()}): "
        "accuracy base / shifted"
    )
    for column in ("task", "sample", "shift", "n base/shifted/harvest test", "champion",
                   "from zero", "blend", "warm", "gate: from zero", "gate: blend",
                   "gate: warm"):  # fmt: skip
        table.add_column(column)
    for name in args.tasks:
        data = TASKS[name](np.random.default_rng(0))
        parts = deal(data, np.random.default_rng(1))
        classes = int(max(part[1].max() for part in parts.values())) + 1
        for shift in args.shifts:
            k = min(args.k, len(parts["harvest"][1]))
            row = cell(parts, shift, k, extract, params, classes)
            sample = "in" if (name, shift) == ("fashion-mnist", "blur") else "out"
            shown = lambda pair: f"{pair[0]:.3f} / {pair[1]:.3f}"  # noqa: E731
            table.add_row(
                name, sample, shift, "/".join(map(str, row["sizes"])), shown(row["champion"]),
                shown(row["retrain"]), shown(row["blend"]), shown(row["warm"]), row["gate retrain"],
                row["gate blend"], row["gate warm"],
            )  # fmt: skip
            print(name, shift, row, flush=True)
    Console(width=200).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
