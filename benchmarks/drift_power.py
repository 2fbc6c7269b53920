"""Power and false alarms of the drift check, per corruption, severity and window size.

For a packaged model (default: the champion), held-out Fashion-MNIST images
(never in its reference) are corrupted with the CIFAR-10-C ladders
(``transferops.data.shifts.CORRUPTIONS``: Gaussian noise, blur, brightness, contrast,
JPEG, pixelation; severities 1-5) and embedded once. A class-prior shift
puts a growing share of one class into the window. Windows are drawn from
each cell and tested with the check's own tests and calibrated thresholds
(``monitoring/shift.py``, the numbers the Evidently report shows). Then:

- detection rate per cell and window size, false-alarm rate on unshifted
  windows, and where the BatchNorm distances locate each shift;
- a bias scenario: three groups, one group's images degrade, feedback labels
  for all: how often the bias alarm names that group (and only it);
- the time of one full check (Evidently report, pictures, workspace) over
  10,000 logged predictions, cold (calibrating) and warm.

Run from a project (or demo) workspace; after ``make demo``, pass the first
model (trained before the shift; the demo keeps its models in ../.bentoml):

    cd demo-workspace && BENTOML_HOME=../.bentoml \
        ../.venv/bin/python ../benchmarks/drift_power.py --tag <first model>
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import track
from rich.table import Table

from monitoring import drift, evidently_report, shift
from monitoring.accuracy import fit_estimator
from monitoring.bias import Side, group_gaps
from transferops.config import Params, load_params
from transferops.data.imagestats import STAT_NAMES, image_statistics
from transferops.data.pictures import thumbnail_png
from transferops.data.shifts import CORRUPTIONS, HeldOutPool, corrupt
from transferops.logs.predictions import PredictionLog, PredictionRecord, utc_now
from transferops.models.bnshift import StageProbe
from transferops.models.classifier import eval_transform
from transferops.models.transferability import shift_location
from transferops.registry import champion
from transferops.registry.store import load_stored
from transferops.runtime import configure_runtime, set_threads

PRIOR = "class_prior"
PRIOR_SHARE = (0.1, 0.2, 0.35, 0.5, 0.7)  # of the window drawn from one class
PRIOR_CLASS = "bag"
SIZES = (50, 100, 200, 500)


class Embedded:
    """Images as the service sees them: embeddings, statistics, predictions, BN distances."""

    def __init__(self, embeddings, stats, predictions, bn, labels, probabilities) -> None:
        self.embeddings, self.stats, self.predictions = embeddings, stats, predictions
        self.bn, self.labels, self.probabilities = bn, labels, probabilities

    def take(self, rows: np.ndarray) -> Embedded:
        return Embedded(*(a[rows] for a in self.arrays()))

    def arrays(self) -> tuple:
        return (
            self.embeddings,
            self.stats,
            self.predictions,
            self.bn,
            self.labels,
            self.probabilities,
        )

    @staticmethod
    def join(parts: list[Embedded]) -> Embedded:
        return Embedded(
            *(np.concatenate(a) for a in zip(*(p.arrays() for p in parts), strict=True))
        )


def embed(model, config, items: list[tuple[Image.Image, str]], batch: int = 256) -> Embedded:
    transform, probe = eval_transform(config), StageProbe(model)
    parts = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        tensor = torch.stack([transform(image.convert("RGB")) for image, _ in chunk])
        emb, prob, bn = probe.run(tensor)
        parts.append(
            Embedded(
                emb,
                np.stack([image_statistics(image) for image, _ in chunk]).astype(float),
                np.asarray(config.classes)[prob.argmax(1)],
                bn,
                np.asarray([label for _, label in chunk]),
                prob,
            )
        )
    return Embedded.join(parts)


def build_cells(model, config, pool: HeldOutPool, per_cell: int, unshifted: int, seed: int):
    """Embedded images per (corruption, severity), plus an unshifted pool."""
    rng = np.random.default_rng(seed)
    clean = pool.take(unshifted + per_cell * len(CORRUPTIONS))
    base = embed(model, config, clean[:unshifted])
    sources = clean[unshifted:]
    cells = {}
    for c, name in enumerate(track(list(CORRUPTIONS), description="corrupt + embed")):
        items = sources[c * per_cell : (c + 1) * per_cell]
        for severity in range(1, 6):
            shifted = [(corrupt(image, name, severity, rng), label) for image, label in items]
            cells[(name, severity)] = embed(model, config, shifted)
    return base, cells


FIELDS = ("embeddings", "stats", "predictions", "bn", "labels", "probabilities")


def save_cells(path: Path, base: Embedded, cells: dict) -> None:
    arrays = {f"base/{f}": a for f, a in zip(FIELDS, base.arrays(), strict=True)}
    for (name, severity), cell in cells.items():
        arrays |= {f"{name}:{severity}/{f}": a for f, a in zip(FIELDS, cell.arrays(), strict=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def load_cells(path: Path) -> tuple[Embedded, dict]:
    with np.load(path) as data:
        keys = sorted({k.split("/")[0] for k in data.files})
        parts = {k: Embedded(*(data[f"{k}/{f}"] for f in FIELDS)) for k in keys}
    base = parts.pop("base")
    return base, {(k.split(":")[0], int(k.split(":")[1])): v for k, v in parts.items()}


def prior_window(base: Embedded, size: int, share: float, rng: np.random.Generator) -> Embedded:
    of_class = np.flatnonzero(base.labels == PRIOR_CLASS)
    others = np.flatnonzero(base.labels != PRIOR_CLASS)
    k = round(size * share)
    rows = np.concatenate(
        [
            rng.choice(of_class, k, replace=k > len(of_class)),
            rng.choice(others, size - k, replace=False),
        ]
    )
    return base.take(rows)


def fired_tests(window: Embedded, pca, reference: shift.Sample, calibration, stat_names) -> list:
    sample = drift.window_sample(pca, window.embeddings, window.stats, window.predictions)
    values = shift.scores(sample, reference, stat_names, calibration.tested_stats)
    return [t for t, v in values.items() if shift.fires(t, v, calibration.thresholds[t])]


def test_window(window: Embedded, pca, reference: shift.Sample, calibration, stat_names) -> bool:
    return bool(fired_tests(window, pca, reference, calibration, stat_names))


def location(window: Embedded, ref: drift.Reference) -> str:
    effects = shift.stage_shift(window.bn, ref.bn, ref.bn_stages)
    return shift_location({s: abs(v) for s, v in effects.items()})


def power(args, params: Params, ref: drift.Reference, base: Embedded, cells: dict) -> dict:
    pca, reference = drift.reference_sample(ref, params)
    rng = np.random.default_rng(args.seed)
    results = {
        "sizes": list(args.sizes),
        "false_alarms": {},
        "detection": {},
        "early": {},
        "input_level": {},
    }
    for size in args.sizes:
        rows = min(size, params.monitor.max_rows)
        calibration = drift.calibrate(reference, rows, ref.stat_names, params)

        def alarms(draw, calibration=calibration) -> tuple[float, float, float]:
            fired, early, surgical = 0, 0, 0
            for _ in range(args.windows):
                window = draw()
                tests = fired_tests(window, pca, reference, calibration, ref.stat_names)
                where = location(window, ref)
                fired += bool(tests)
                early += where == "early"
                surgical += bool(tests) and shift.input_level(where, tests)
            return fired / args.windows, early / args.windows, surgical / args.windows

        quiet = [
            test_window(
                base.take(rng.choice(len(base.labels), size, replace=False)),
                pca,
                reference,
                calibration,
                ref.stat_names,
            )
            for _ in range(args.unshifted_windows)
        ]
        results["false_alarms"][size] = float(np.mean(quiet))
        for (name, severity), cell in track(list(cells.items()), description=f"window {size}"):
            if size > len(cell.labels):  # --per-cell too small for this window: not measured
                continue
            rate, early, surgical = alarms(
                lambda cell=cell, size=size: cell.take(rng.choice(len(cell.labels), size, False))
            )
            results["detection"][f"{name}:{severity}:{size}"] = rate
            results["early"][f"{name}:{severity}:{size}"] = early
            results["input_level"][f"{name}:{severity}:{size}"] = surgical
        for severity, share in enumerate(PRIOR_SHARE, start=1):
            rate, early, surgical = alarms(
                lambda share=share, size=size: prior_window(base, size, share, rng)
            )
            results["detection"][f"{PRIOR}:{severity}:{size}"] = rate
            results["early"][f"{PRIOR}:{severity}:{size}"] = early
            results["input_level"][f"{PRIOR}:{severity}:{size}"] = surgical
    return results


def accuracy_errors(args, config, base: Embedded, cells: dict) -> dict:
    """Estimated against true accuracy on windows of 200, per corruption and severity.

    The estimator (monitoring/accuracy.py) is fitted on labelled clean held-out
    images (temperature on one half, ATC threshold on the other), as the check
    fits it on the model's val and test splits; windows are drawn from the
    rest of the clean pool and from every corrupted cell. Both ATC and the
    mean calibrated confidence (the CBPE-like peer) are scored.
    """
    columns = {name: i for i, name in enumerate(config.classes)}
    labels = np.array([columns[label] for label in base.labels])
    half = min(len(base.labels) // 4, 1000)
    estimator = fit_estimator(
        base.probabilities, labels, np.arange(half), np.arange(half, 2 * half)
    )
    rng = np.random.default_rng(args.seed + 3)
    clean = base.take(np.arange(2 * half, len(base.labels)))
    results = {"fitted": estimator.to_dict(), "window": 200, "cells": {}}
    for key, cell in [(("none", 0), clean), *cells.items()]:
        atc, confidence, truth = [], [], []
        for _ in range(args.windows):
            window = cell.take(rng.choice(len(cell.labels), 200, replace=False))
            truth.append(float(np.mean(window.predictions == window.labels)))
            atc.append(estimator.estimate(window.probabilities))
            confidence.append(estimator.mean_confidence(window.probabilities))
        truth_a = np.asarray(truth)
        results["cells"][f"{key[0]}:{key[1]}"] = {
            "accuracy": float(truth_a.mean()),
            "atc_mae": float(np.mean(np.abs(np.asarray(atc) - truth_a))),
            "atc_bias": float(np.mean(np.asarray(atc) - truth_a)),
            "confidence_mae": float(np.mean(np.abs(np.asarray(confidence) - truth_a))),
            "confidence_bias": float(np.mean(np.asarray(confidence) - truth_a)),
        }
    return results


def evidently_defaults(args, params: Params, ref: drift.Reference, base: Embedded, cells: dict):
    """Our calibrated check and Evidently's defaults on the same windows, per ``--peer-sizes``.

    The peer is what a user gets out of the box (``evidently_report.default_drift``):
    the default embedding method on the raw embeddings and the default test per
    image statistic and for the predicted class, against the model's reference;
    a window alarms when any of them says drift. Ours: the check's tests and
    calibrated thresholds (``fired_tests``), with which of them fired.
    """
    pca, reference = drift.reference_sample(ref, params)
    ref_frame = evidently_report.frame(ref.embeddings, ref.predictions, ref.stats, ref.stat_names)
    rng = np.random.default_rng(args.seed + 4)
    clean = base.take(np.arange(len(base.labels)))
    rows = {}
    for size in args.peer_sizes:
        calibration = drift.calibrate(reference, size, ref.stat_names, params)
        for key, cell in track(
            [(("none", 0), clean), *cells.items()], description=f"peer windows of {size}"
        ):
            if size > len(cell.labels):  # --per-cell too small for this window
                continue
            ours, theirs, our_parts, parts = 0, 0, {}, {}
            count = args.peer_windows * (4 if key[0] == "none" else 1)
            for _ in range(count):
                window = cell.take(rng.choice(len(cell.labels), size, replace=False))
                fired = fired_tests(window, pca, reference, calibration, ref.stat_names)
                ours += bool(fired)
                for test in fired:
                    our_parts[test] = our_parts.get(test, 0) + 1
                flags = evidently_report.default_drift(
                    evidently_report.frame(
                        window.embeddings, window.predictions, window.stats, ref.stat_names
                    ),
                    ref_frame,
                    ref.stat_names,
                )
                theirs += any(flags.values())
                for test, flag in flags.items():
                    parts[test] = parts.get(test, 0) + flag
            rows[f"{key[0]}:{key[1]}:{size}"] = {
                "windows": count,
                "ours": ours / count,
                "our_parts": {t: v / count for t, v in our_parts.items()},
                "evidently_default": theirs / count,
                "evidently_parts": {t: v / count for t, v in parts.items()},
            }
    return {"sizes": list(args.peer_sizes), "cells": rows}


LOCATION_SEVERITIES = (1, 3, 5)


def stage_embed(model, config, items, batch: int = 128) -> tuple[np.ndarray, dict]:
    """Per image: its BatchNorm distances per stage, and per-stage projected channel means."""
    transform, probe = eval_transform(config), StageProbe(model)
    distances, features = [], []
    for start in range(0, len(items), batch):
        tensor = torch.stack(
            [transform(image.convert("RGB")) for image, _ in items[start : start + batch]]
        )
        distances.append(probe.run(tensor)[2])
        features.append(probe.stage_features(tensor)[1])
    joined = {stage: np.concatenate([f[stage] for f in features]) for stage in probe.stages}
    return np.concatenate(distances), joined


def locations(args, model, config, pool: HeldOutPool, ref: drift.Reference) -> dict:
    """Where each shift sits, by the logged rule and by a per-stage MMD (``--only location``).

    Logged rule: the window's mean per-stage BatchNorm distance against the
    reference's, in reference SDs (``shift.stage_shift``). Tried here: per stage,
    the MMD² (median-distance RBF kernel, so on one [0, 2] scale at every stage)
    between the window's and clean images' projected channel means and log
    variances (``StageProbe.stage_features``). Both then go through the
    profile's rule (``shift_location``: early when the first half of the stages
    moved more). Every corruption is input-level (right answer: early); a
    class-prior shift is semantic (late). The MMD as such, not as a z-score
    against clean windows, was chosen after seeing both on this model: z-scores
    divide by a null spread that shrinks in the late stages (in sample).
    """
    rng = np.random.default_rng(args.seed + 7)
    size, windows = 200, args.location_windows
    clean = pool.take(args.location_reference + 4 * size)
    clean_bn, clean_features = stage_embed(model, config, clean)
    reference = np.arange(args.location_reference)
    others = np.arange(args.location_reference, len(clean))
    stages = list(clean_features)

    def mmd_by_stage(rows_of: dict[str, np.ndarray]) -> dict[str, float]:
        return {
            stage: shift.mmd2u(rows_of[stage], clean_features[stage][reference]) for stage in stages
        }

    def judged(bn: np.ndarray, features: dict) -> tuple[str, str]:
        effects = shift.stage_shift(bn, ref.bn, ref.bn_stages)
        by_bn = shift_location({s: abs(v) for s, v in effects.items()})
        return by_bn, shift_location(mmd_by_stage(features))

    results = {}
    labels = np.array([label for _, label in clean])
    for name in track(list(CORRUPTIONS), description="corruptions"):
        sources = pool.take(size + 100)
        for severity in LOCATION_SEVERITIES:
            shifted = [(corrupt(image, name, severity, rng), label) for image, label in sources]
            bn, features = stage_embed(model, config, shifted)
            votes = []
            for _ in range(windows):
                rows = rng.choice(len(shifted), size, replace=False)
                votes.append(judged(bn[rows], {st: f[rows] for st, f in features.items()}))
            results[f"{name}:{severity}"] = _location_rates(votes, "early")
    of_class = np.flatnonzero(labels[others] == PRIOR_CLASS)
    for severity in LOCATION_SEVERITIES:
        share, votes = PRIOR_SHARE[severity - 1], []
        for _ in range(windows):
            k = round(size * share)
            rows = np.concatenate(
                [
                    others[rng.choice(of_class, k, replace=k > len(of_class))],
                    rng.choice(others, size - k, replace=False),
                ]
            )
            votes.append(judged(clean_bn[rows], {st: f[rows] for st, f in clean_features.items()}))
        results[f"{PRIOR}:{severity}"] = _location_rates(votes, "late")
    return {"size": size, "windows": windows, "stages": stages, "cells": results}


def _location_rates(votes: list[tuple[str, str]], right: str) -> dict:
    return {
        "right": right,
        "bn_right": float(np.mean([bn == right for bn, _ in votes])),
        "mmd_right": float(np.mean([mmd == right for _, mmd in votes])),
    }


def print_locations(results: dict, console: Console) -> None:
    print_cells(
        f"where the shift sits: share of windows of {results['size']} located right",
        ["right answer", "BatchNorm distance (logged)", "per-stage MMD (tried)"],
        results["cells"],
        lambda cell: [cell["right"], f"{cell['bn_right']:.0%}", f"{cell['mmd_right']:.0%}"],
        console,
    )


def print_cells(title: str, columns: list[str], cells: dict, row_of, console: Console) -> None:
    """One row per shift and severity (``"name:severity"`` keys); ``row_of`` gives the rest."""
    table = Table(title=title)
    for column in ("shift", "sev", *columns):
        table.add_column(column, justify="right")
    for key, cell in cells.items():
        table.add_row(*key.split(":"), *row_of(cell))
    console.print(table)


def print_peer(results: dict, console: Console) -> None:
    """One row per shift and severity; per window size: ours / Evidently's default."""
    sizes, cells = results["sizes"], results["cells"]
    keys = list(dict.fromkeys(k.rsplit(":", 1)[0] for k in cells))
    table = Table(title="alarm rate, calibrated check / Evidently defaults (same windows)")
    for column in ("shift", "sev", *[f"n={s}" for s in sizes], "ours: classifier (n=200)"):
        table.add_column(column, justify="right")
    for key in keys:
        row = [
            f"{cells[f'{key}:{s}']['ours']:.0%} / {cells[f'{key}:{s}']['evidently_default']:.0%}"
            if f"{key}:{s}" in cells
            else "-"
            for s in sizes
        ]
        at_200 = cells.get(f"{key}:200", {}).get("our_parts", {})
        table.add_row(*key.split(":"), *row, f"{at_200.get(shift.CLASSIFIER, 0):.0%}")
    console.print(table)


def print_accuracy(results: dict, console: Console) -> None:
    print_cells(
        "accuracy without labels: error on windows of 200 (points)",
        ["true acc", "ATC MAE", "ATC bias", "conf MAE", "conf bias"],
        results["cells"],
        lambda cell: [
            f"{cell['accuracy']:.1%}",
            f"{100 * cell['atc_mae']:.1f}",
            f"{100 * cell['atc_bias']:+.1f}",
            f"{100 * cell['confidence_mae']:.1f}",
            f"{100 * cell['confidence_bias']:+.1f}",
        ],
        console,
    )


def other_references(args, params: Params, ref: drift.Reference, base: Embedded) -> dict:
    """False alarms per window size when the reference is another random draw from the pool.

    The model's reference is one fixed sample; a sample that happens to be
    unusual in some statistic raises the false-alarm rate of every check
    against it. This separates that luck from the calibration.
    """
    rng = np.random.default_rng(args.seed + 2)
    rates: dict[int, list[float]] = {size: [] for size in args.sizes}
    for _ in track(range(args.reference_trials), description="other references"):
        order = rng.permutation(len(base.labels))
        picked, rest = order[: len(ref.labels)], order[len(ref.labels) :]
        drawn = base.take(picked)
        other = drift.Reference(
            embeddings=drawn.embeddings,
            predictions=drawn.predictions,
            labels=drawn.labels,
            groups=np.full(len(picked), ""),
            stats=drawn.stats,
            stat_names=ref.stat_names,
            bn=drawn.bn,
            bn_stages=ref.bn_stages,
            regimes=np.full(len(picked), "base"),
        )
        pca, reference = drift.reference_sample(other, params)
        for size in args.sizes:
            calibration = drift.calibrate(reference, size, ref.stat_names, params)
            fired = [
                test_window(
                    base.take(rng.choice(rest, size, replace=False)),
                    pca,
                    reference,
                    calibration,
                    ref.stat_names,
                )
                for _ in range(args.reference_windows)
            ]
            rates[size].append(float(np.mean(fired)))
    return {"reference": len(ref.labels), "rates": rates}


def bias_scenario(args, params: Params, ref: drift.Reference, base: Embedded, cells: dict) -> dict:
    """Three groups of ``args.group_size``; one degrades (``--bias-corruption`` at severity 3)."""
    rng = np.random.default_rng(args.seed + 1)
    degraded_cell = cells[(args.bias_corruption, 3)]
    classes = sorted(set(ref.labels) | set(ref.predictions) | set(base.predictions))
    reference = Side(ref.predictions, ref.labels, ref.groups)
    outcome = {"named_only_degraded": 0, "named_other": 0, "fair_alarms": 0}
    for _ in range(args.windows):
        parts = []
        for group in ("north", "south", "east"):
            source = degraded_cell if group == "south" else base
            picked = source.take(rng.choice(len(source.labels), args.group_size, replace=False))
            parts.append((picked, group))
        fair = [
            (base.take(rng.choice(len(base.labels), args.group_size, False)), g) for _, g in parts
        ]
        for window, key in ((parts, "degraded"), (fair, "fair")):
            side = Side(
                np.concatenate([w.predictions for w, _ in window]),
                np.concatenate([w.labels for w, _ in window]),
                np.concatenate([np.full(len(w.labels), g) for w, g in window]),
            )
            named = {
                g.group for g in group_gaps(side, reference, classes, params.monitor.bias, 0).alarms
            }
            if key == "fair":
                outcome["fair_alarms"] += bool(named)
            else:
                outcome["named_only_degraded"] += named == {"south"}
                outcome["named_other"] += bool(named - {"south"})
    return {k: v / args.windows for k, v in outcome.items()} | {
        "corruption": f"{args.bias_corruption}:3",
        "group_size": args.group_size,
        "windows": args.windows,
    }


def check_timing(params: Params, tag: str, base: Embedded, rows: int) -> dict:
    """One real check_drift over ``rows`` logged predictions, cold and warm."""
    with tempfile.TemporaryDirectory() as tmp:
        log_dir, reports = Path(tmp) / "log", Path(tmp) / "reports"
        log = PredictionLog(log_dir)
        order = np.arange(rows) % len(base.labels)
        groups = np.array(["north", "south", "east"])
        # One thumbnail for every row: the gallery's lookups and drawing are timed.
        picture = thumbnail_png(Image.new("L", (28, 28), 128))
        log.append(
            [
                PredictionRecord(
                    request_id=f"r{i}",
                    time=utc_now(),
                    model_tag=tag,
                    label=str(base.predictions[j]),
                    confidence=float(base.probabilities[j].max()),
                    probabilities=base.probabilities[j],
                    embedding=base.embeddings[j],
                    stats=dict(zip(STAT_NAMES, base.stats[j], strict=True)),
                    group=str(groups[i % 3]),
                    bn=base.bn[j].tolist(),
                    thumbnail=picture,
                )
                for i, j in enumerate(order)
            ]
        )
        log.close()
        check_params = load_params(
            Path("params.yaml"),
            [
                f"paths.prediction_log={log_dir}",
                f"paths.reports={reports}",
                f"monitor.window={rows}",
            ],
        )
        timings = {}
        for run in ("cold", "warm"):
            started = time.perf_counter()
            verdict = drift.check_drift(check_params)
            timings[run] = time.perf_counter() - started
        timings["status"] = verdict.status
        timings["rows"] = rows
    return timings


def print_tables(results: dict, console: Console) -> None:
    sizes = results["sizes"]
    table = Table(title="detection rate (false-alarm rate on unshifted windows in the first row)")
    table.add_column("shift")
    table.add_column("severity", justify="right")
    for size in sizes:
        table.add_column(f"n={size}", justify="right")
    table.add_column("located early (n=200)", justify="right")
    table.add_column("input-level: surgical (n=200)", justify="right")
    table.add_row("none", "-", *[f"{results['false_alarms'][s]:.1%}" for s in sizes], "-", "-")
    for name in [*CORRUPTIONS, PRIOR]:
        for severity in range(1, 6):
            cells = [results["detection"].get(f"{name}:{severity}:{s}") for s in sizes]
            early = results["early"].get(f"{name}:{severity}:200")
            surgical = results["input_level"].get(f"{name}:{severity}:200")
            table.add_row(
                name,
                str(severity),
                *["-" if c is None else f"{c:.0%}" for c in cells],
                "-" if early is None else f"{early:.0%}",
                "-" if surgical is None else f"{surgical:.0%}",
            )
    console.print(table)
    for size, others in results["other_references"]["rates"].items():
        console.print(
            f"false alarms at n={size} against {len(others)} other references of the same size "
            f"drawn from the held-out pool: mean {np.mean(others):.1%}, max {np.max(others):.1%} "
            f"({', '.join(f'{r:.1%}' for r in others)})"
        )
    bias = results["bias"]
    console.print(
        f"bias scenario ({bias['corruption']} on group 'south', {bias['group_size']} per group, "
        f"{bias['windows']} windows): named 'south' alone {bias['named_only_degraded']:.0%}, "
        f"named another group {bias['named_other']:.0%}, alarms on fair windows "
        f"{bias['fair_alarms']:.0%}"
    )
    timing = results.get("timing")
    if timing:
        console.print(
            f"one check over {timing['rows']:,} logged predictions: cold (calibrating) "
            f"{timing['cold']:.1f} s, warm {timing['warm']:.1f} s ({timing['status']})"
        )


def write_part(args, name: str, results: dict) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(f"{name}.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="BentoML model tag (default: the champion)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--windows", type=int, default=40, help="windows per cell")
    parser.add_argument("--unshifted-windows", type=int, default=400)
    parser.add_argument("--per-cell", type=int, default=900, help="images per corruption")
    parser.add_argument("--unshifted", type=int, default=4000, help="clean images")
    parser.add_argument("--bias-corruption", default="gaussian_noise", choices=sorted(CORRUPTIONS))
    parser.add_argument("--group-size", type=int, default=200)
    parser.add_argument("--timing-rows", type=int, default=10_000)
    parser.add_argument("--reference-trials", type=int, default=10)
    parser.add_argument(
        "--reference-windows", type=int, default=200, help="unshifted windows per other reference"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only",
        choices=["accuracy", "peer", "power", "location", "timing"],
        help="only the accuracy-estimate table, only the Evidently-defaults peer, only "
        "the detection tables (power, other references, bias; no timing), or only the "
        "shift-location comparison, or only the timing of one check (run it alone)",
    )
    parser.add_argument("--location-windows", type=int, default=40)
    parser.add_argument("--location-reference", type=int, default=1000)
    parser.add_argument(
        "--peer-sizes", type=int, nargs="+", default=list(SIZES), help="peer: window sizes"
    )
    parser.add_argument(
        "--peer-windows", type=int, default=10, help="peer: windows per cell (4x clean ones)"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/benchmarks/drift_power.json"))
    args = parser.parse_args()
    params = load_params(Path("params.yaml"))
    configure_runtime(params.paths.bentoml_home)
    set_threads(params.threads)
    holder = champion.current(params.paths.models)
    tag = args.tag or (holder.tag if holder else None)
    if tag is None:
        parser.error(f"no champion in {params.paths.models}: pass --tag")
    console = Console(width=150)
    model, config = load_stored(tag)
    ref = drift.load_reference(tag)
    pool = HeldOutPool(params.data.source, params.paths.prepared, seed=args.seed)
    if args.only == "location":
        part = locations(args, model, config, pool, ref)
        write_part(args, "location", {"location": part, "tag": tag})
        print_locations(part, console)
        return
    started = time.perf_counter()
    cache = args.out.with_name(  # v2: with probabilities
        f"cells-v2-{tag.replace(':', '-')}-{args.per_cell}-{args.unshifted}.npz"
    )
    if cache.is_file():  # embedding is most of the cost; the windows are drawn afresh
        base, cells = load_cells(cache)
    else:
        base, cells = build_cells(model, config, pool, args.per_cell, args.unshifted, args.seed)
        save_cells(cache, base, cells)
    console.print(
        f"embedded {len(base.labels) + len(cells) * args.per_cell} images in "
        f"{time.perf_counter() - started:.0f} s"
    )
    single = {  # one part alone: its JSON beside --out, its table
        "peer": (lambda: evidently_defaults(args, params, ref, base, cells), print_peer),
        "accuracy": (lambda: accuracy_errors(args, config, base, cells), print_accuracy),
        "timing": (
            lambda: check_timing(params, tag, base, args.timing_rows),
            lambda part, console: console.print(part),
        ),
    }
    if args.only in single:
        make, show = single[args.only]
        part = make()
        write_part(args, args.only, {args.only: part, "tag": tag})
        show(part, console)
        return
    results = power(args, params, ref, base, cells)
    results["other_references"] = other_references(args, params, ref, base)
    results["bias"] = bias_scenario(args, params, ref, base, cells)
    if args.only != "power":
        results["accuracy"] = accuracy_errors(args, config, base, cells)
        results["peer"] = evidently_defaults(args, params, ref, base, cells)
        results["timing"] = check_timing(params, tag, base, args.timing_rows)
    results |= {
        "tag": tag,
        "reference": len(ref.labels),
        "args": vars(args) | {"out": str(args.out)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print_tables(results, console)
    if args.only != "power":
        print_accuracy(results["accuracy"], console)
        print_peer(results["peer"], console)
    console.print(f"written {args.out}")


if __name__ == "__main__":
    main()
