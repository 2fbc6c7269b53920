"""Does the label queue pick better images to label than chance? Queue vs random, measured.

For each task and shift: a "champion" (a linear probe on the frozen backbone's
features of the task's own images) serves a pool of shifted images; K of them
are labelled, picked by the label queue (``monitoring.queue.rank_queue``, as
shipped: the most typical image of each k-means group of the candidates) or
at random (``--seeds`` draws); the probe is refitted on the base
images plus the K labelled ones and scored on held-out shifted images. The
table gives both accuracies and the queue's gain over the random draws' mean,
with a 95% bootstrap interval over the test images (paired: the same
resampled images for both).

In sample: Fashion-MNIST (Debian ``dataset-fashion-mnist``) and
scikit-learn's digits, where the queue's first rule (most unfamiliar and
uncertain first) lost to random, and the shipped rule (TypiClust's
typicality, Hacohen et al. 2022, no parameter tuned) was chosen after seeing
that table. Out of sample (``--tasks scripts letters photos``, from the
benchmark suite, ``benchmarks/tasks.py``; ``make bench-data``): tasks the
rule was never looked at on; the suite task's train split is the base, its
val and test splits, pooled and halved, are the pool and the test images.
The "sample" column says which is which. Shifts: blur and invert
(``transferops.data.shifts``), the same for both. The probe (scikit-learn's
logistic regression on standardised features) stands in for the retrain so
that each cell takes seconds.

    .venv/bin/python benchmarks/queue_vs_random.py
    .venv/bin/python benchmarks/queue_vs_random.py --tasks scripts letters photos
"""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks import build as build_task  # noqa: E402

from monitoring.queue import rank_queue  # noqa: E402
from transferops.config import load_params  # noqa: E402
from transferops.data.datasets import load_fashion_mnist  # noqa: E402
from transferops.data.shifts import apply_shift  # noqa: E402
from transferops.models.backbones import load_backbone, pooled_features, transform_for  # noqa: E402
from transferops.runtime import set_threads  # noqa: E402

SIDE = 64  # px the backbone sees (the demo's CPU side class)


def fashion(rng: np.random.Generator) -> dict[str, tuple[list[Image.Image], np.ndarray]]:
    images, labels = load_fashion_mnist(load_params(ROOT / "params.yaml").data.source, "train")
    test_images, test_labels = load_fashion_mnist(
        load_params(ROOT / "params.yaml").data.source, "t10k"
    )
    order = rng.permutation(len(labels))
    base, pool = order[:1000], order[1000:2000]
    test = rng.permutation(len(test_labels))[:1000]
    pick = lambda idx, imgs, labs: ([Image.fromarray(imgs[i]) for i in idx], labs[idx])  # noqa: E731
    return {
        "base": pick(base, images, labels),
        "pool": pick(pool, images, labels),
        "test": pick(test, test_images, test_labels),
    }


def digits(rng: np.random.Generator) -> dict[str, tuple[list[Image.Image], np.ndarray]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    grey = (data.images * (255 / 16)).astype(np.uint8)
    order = rng.permutation(len(data.target))
    parts = {"base": order[:600], "pool": order[600:1200], "test": order[1200:]}
    return {
        name: ([Image.fromarray(grey[i]) for i in idx], data.target[idx])
        for name, idx in parts.items()
    }


def suite_task(name: str):
    """A benchmark-suite task as base (its train split), pool and test (its val and test
    splits pooled, shuffled and halved): tasks the queue's rule was not chosen on."""

    def build(rng: np.random.Generator) -> dict[str, tuple[list[Image.Image], np.ndarray]]:
        task = build_task(name, seed=0)
        held = rng.permutation(np.flatnonzero(task.splits != "train"))
        half = len(held) // 2
        pick = lambda idx: ([task.images[i] for i in idx], task.labels[idx])  # noqa: E731
        return {
            "base": pick(np.flatnonzero(task.splits == "train")),
            "pool": pick(held[:half]),
            "test": pick(held[half:]),
        }

    return build


IN_SAMPLE = {"fashion-mnist": fashion, "digits": digits}
OUT_OF_SAMPLE = ("scripts", "letters", "photos", "clipart", "icons")
TASKS = IN_SAMPLE | {name: suite_task(name) for name in OUT_OF_SAMPLE}


@torch.inference_mode()
def features(backbone, transform, images: list[Image.Image]) -> np.ndarray:
    out = []
    for start in range(0, len(images), 128):
        batch = torch.stack([transform(i.convert("RGB")) for i in images[start : start + 128]])
        out.append(pooled_features(backbone.model, batch).float().numpy())
    return np.concatenate(out)


def fit(x: np.ndarray, y: np.ndarray):
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(max_iter=300, C=0.5).fit(scaler.transform(x), y)
    return lambda z: model.predict_proba(scaler.transform(z)), model.classes_


def correct_after(base, pool, picked: np.ndarray, test) -> np.ndarray:
    """Per test image: right (1) or not, for the probe refitted on base + the picked."""
    x = np.concatenate([base[0], pool[0][picked]])
    y = np.concatenate([base[1], pool[1][picked]])
    predict, classes = fit(x, y)
    return (classes[predict(test[0]).argmax(1)] == test[1]).astype(float)


def paired_gain(queue: np.ndarray, randoms: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Queue accuracy minus the random draws' mean, with a 95% bootstrap interval."""
    rng = np.random.default_rng(seed)
    n = len(queue)
    gains = []
    for _ in range(1000):
        rows = rng.integers(0, n, n)
        gains.append(queue[rows].mean() - randoms[:, rows].mean())
    low, high = np.quantile(gains, [0.025, 0.975])
    return queue.mean() - randoms.mean(), float(low), float(high)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seeds", type=int, default=5, help="random draws per cell")
    parser.add_argument("--shifts", nargs="+", default=["blur", "invert"])
    parser.add_argument(
        "--tasks", nargs="+", choices=sorted(TASKS), default=sorted(IN_SAMPLE),
        help="the two in-sample tasks by default; the suite's tasks are out of sample",
    )  # fmt: skip
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")
    set_threads(params.threads)
    backbone = load_backbone(params.model.backbone, params.model.weights)
    backbone.model.eval()
    transform = transform_for(backbone, SIDE)
    table = Table(
        title=f"label queue vs random labelling: accuracy on held-out shifted images after "
        f"refitting on base + K labels ({platform.node()}, {date.today()}, "
        f"{args.seeds} random draws a cell)"
    )
    for column in ("task", "sample", "shift", "K", "pool", "before", "queue", "random (mean)",
                   "queue - random (95% interval)"):  # fmt: skip
        table.add_column(column)
    for name in args.tasks:
        data = TASKS[name](np.random.default_rng(0))
        sample = "in" if name in IN_SAMPLE else "out"
        base = (features(backbone, transform, data["base"][0]), data["base"][1])
        for shift in args.shifts:
            pool_images = [apply_shift(i, shift) for i in data["pool"][0]]
            test_images = [apply_shift(i, shift) for i in data["test"][0]]
            pool = (features(backbone, transform, pool_images), data["pool"][1])
            test = (features(backbone, transform, test_images), data["test"][1])
            predict, classes = fit(*base)
            probabilities = predict(pool[0])
            before = (classes[predict(test[0]).argmax(1)] == test[1]).mean()
            candidates = pd.DataFrame(
                {
                    "request_id": [str(i) for i in range(len(pool[1]))],
                    "predicted": classes[probabilities.argmax(1)].astype(str),
                    "confidence": probabilities.max(1),
                    "embedding": list(pool[0]),
                }
            )
            for k in [k for k in args.ks if k < len(pool[1])]:
                ranked = rank_queue(candidates, base[0], k)
                picked = ranked["request_id"].astype(int).to_numpy()
                queue = correct_after(base, pool, picked, test)
                draws = np.random.default_rng(k)
                randoms = np.stack([
                    correct_after(base, pool, draws.choice(len(pool[1]), k, replace=False), test)
                    for _ in range(args.seeds)
                ])  # fmt: skip
                gain, low, high = paired_gain(queue, randoms, seed=k)
                table.add_row(name, sample, shift, str(k), str(len(pool[1])), f"{before:.3f}",
                              f"{queue.mean():.3f}",
                              f"{randoms.mean():.3f}",
                              f"{gain:+.3f} ({low:+.3f} to {high:+.3f})")  # fmt: skip
                print(f"{name} {shift} K={k}: queue {queue.mean():.3f} random {randoms.mean():.3f}",
                      flush=True)  # fmt: skip
    Console(width=160).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
