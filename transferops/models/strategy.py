"""The freeze strategy: from size and similarity to what to freeze, and why.

Regions of the size x similarity plane (thresholds and the strategy of each
region in ``params.yaml``). The classic table, which the oracle benchmark fits
thresholds for (``CLASSIC_REGIONS``):

============  ============  ============
labels/class  similar       different
============  ============  ============
small         linear_probe  most_blocks
medium        top_blocks    most_blocks
large         most_blocks   full
============  ============  ============

What ships is the rule with the lowest held-out regret over the oracle suite:
the linear probe under ``strategy.small_per_class`` (5) labels per class, full
fine-tuning (with the learning-rate race and early stopping) from there on;
docs/strategy.md gives the numbers, including those of the tables that let
k-NN, LogME, LEEP or the BatchNorm distance decide.

"Similar" means the frozen features already nearly solve the task: the
similarity measure ``strategy.similarity`` (k-NN by default; LogME, LEEP or
the BatchNorm distance to ImageNet can stand in) at or above
``strategy.similar_at``. Learning rates decay by ``strategy.layer_decay``
per stage away from the head.
A decision is written as ``decision.json``, ``decision.txt`` and ``strategy.png``.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from transferops.config import Params, StrategyParams, TrainParams
from transferops.figures import new_figure, save_figure
from transferops.models.recipe import epochs_for

log = logging.getLogger(__name__)
STRATEGIES = ("linear_probe", "top_blocks", "most_blocks", "full")  # what the plane chooses from
DECISION = "decision.json"
# What each similarity measure is, for the decision's paragraph and the plot.
MEASURES = {
    "knn": "10-NN similarity (0 chance, 1 perfect)",
    "logme": "LogME (per sample; higher: more linearly usable)",
    "leep": "LEEP, normalised (0 uninformative source, 1 perfect)",
    "bn": "minus the mean BatchNorm distance to ImageNet",
}


@dataclass
class Decision:
    strategy: str
    forced: bool
    size: str
    similar: bool
    trainable_stages: list[str]
    learning_rates: dict[str, float]
    schedule: list[dict]
    numbers: dict
    reason: str = ""
    thresholds: dict = field(default_factory=dict)


def similarity_of(numbers: dict, measure: str) -> float:
    """A profile's similarity to the source by ``measure`` (higher: more similar)."""
    if measure == "knn":
        return float(numbers["knn_similarity"])
    if measure == "logme":
        return float(numbers["logme"])
    if measure == "leep":  # LEEP of an uninformative source is -log(classes)
        return 1 + float(numbers["leep"]) / math.log(max(numbers["classes"], 2))
    if measure == "bn":
        return -float(np.mean(list(numbers["bn_distance"].values())))
    raise ValueError(f"strategy.similarity = {measure!r}: not one of {list(MEASURES)}")


def region_of(numbers: dict, cfg: StrategyParams) -> tuple[str, bool]:
    """(size class, similar?) of a profile under ``cfg``'s thresholds."""
    similar = similarity_of(numbers, cfg.similarity) >= cfg.similar_at
    return size_class(numbers["per_class_min"], cfg), similar


def region_key(size: str, similar: bool) -> str:
    return f"{size}/{'similar' if similar else 'different'}"


def size_class(per_class: float, cfg: StrategyParams) -> str:
    if per_class < cfg.small_per_class:
        return "small"
    return "large" if per_class >= cfg.large_per_class else "medium"


def trainable_stages(strategy: str, stages: list[str], surgical_stages: int = 2) -> list[str]:
    """Which stages train; ``stages`` runs from the input (stem) to the head.

    ``surgical`` (Lee et al., ICLR 2023) trains the first ``surgical_stages``
    stages: the remedy for an input-level shift (noise, blur, light), usually
    from the champion's own weights (``model.weights``), which the retrain
    decision sets (monitoring/decision.py).
    """
    blocks = [s for s in stages if s.startswith("block")]
    chosen = {
        "linear_probe": [],
        "top_blocks": [*blocks[-2:], "head"],
        "most_blocks": [*blocks[2:], "head"],
        "full": stages,
        "surgical": stages[:surgical_stages],
    }[strategy]
    return [*chosen, "classifier"]


def learning_rates(trainable: list[str], head_lr: float, decay: float) -> dict[str, float]:
    """Layer-wise decay: the classifier gets ``head_lr``, each stage below ``decay`` times less."""
    return {stage: head_lr * decay**depth for depth, stage in enumerate(reversed(trainable))}


def decide(numbers: dict, stages: list[str], cfg: StrategyParams, train: TrainParams) -> Decision:
    """The decision record for a profiled dataset."""
    size, similar = region_of(numbers, cfg)
    strategy = cfg.force or cfg.regions[region_key(size, similar)]
    trainable = trainable_stages(strategy, stages, cfg.surgical_stages)
    head_rates = {True: train.lr, False: train.finetune_lr}  # probe's, fine-tuning's
    schedule = [
        {"phase": "linear_probe", "epochs": train.probe_epochs, "trainable": ["classifier"]}
    ]
    if strategy != "linear_probe":
        epochs = epochs_for(numbers["images"], train.batch_size, train.epochs, train.min_steps)
        phase = {"phase": "fine_tune", "epochs": epochs, "trainable": trainable}
        if train.gradual_unfreeze:
            phase["gradual_unfreeze"] = "one more stage per epoch, from the top"
        schedule.append(phase)
    decision = Decision(
        strategy=strategy,
        forced=cfg.force is not None,
        size=size,
        similar=similar,
        trainable_stages=trainable,
        learning_rates=learning_rates(
            trainable, head_rates[strategy == "linear_probe"], cfg.layer_decay
        ),
        schedule=schedule,
        numbers=numbers,
        thresholds={
            "small_per_class": cfg.small_per_class,
            "large_per_class": cfg.large_per_class,
            "similarity": cfg.similarity,
            "similar_at": cfg.similar_at,
            "regions": dict(cfg.regions),
        },
    )
    decision.reason = explain(decision)
    return decision


def explain(d: Decision) -> str:
    """One paragraph a reviewer can read."""
    n = d.numbers
    closest = min(n["bn_distance"], key=n["bn_distance"].get)
    furthest = max(n["bn_distance"], key=n["bn_distance"].get)
    location = (
        "early: an input-level shift (colour, resolution, texture)"
        if n["shift_location"] == "early"
        else "late: a semantic shift"
    )
    region = region_key(d.size, d.similar)
    default = d.thresholds["regions"][region]
    measure = d.thresholds["similarity"]
    choice = (
        f"strategy.force sets {d.strategy} (the {region} region would choose {default})"
        if d.forced
        else f"the {region} region's strategy: {d.strategy}"
    )
    phases = " then ".join(
        f"{p['phase'].replace('_', ' ')} for {p['epochs']} epochs" for p in d.schedule
    )
    lrs = ", ".join(f"{stage} {lr:.2g}" for stage, lr in d.learning_rates.items())
    return (
        f"{n['images']} labelled training images in {n['classes']} classes (at least "
        f"{n['per_class_min']} per class: {d.size}, thresholds {d.thresholds['small_per_class']}"
        f"/{d.thresholds['large_per_class']}). On frozen {n['backbone']} features a 10-NN "
        f"probe reaches {n['knn_accuracy']:.1%} (k-NN similarity {n['knn_similarity']:.2f}); "
        f"LogME {n['logme']:.3f}, LEEP {n['leep']:.3f}. By {MEASURES[measure]}, "
        f"{similarity_of(n, measure):.3f}: {'similar' if d.similar else 'different'} "
        f"(threshold {d.thresholds['similar_at']:g}). BatchNorm statistics are furthest "
        f"from ImageNet's in {furthest} and closest in {closest}; the shift sits {location}. "
        f"Hence {choice}. Train {', '.join(d.trainable_stages)}; learning rates {lrs}; "
        f"{phases}{' (LP-FT, Kumar et al. 2022)' if len(d.schedule) > 1 else ''}."
    )


def plot_plane(d: Decision, cfg: StrategyParams, path: Path) -> None:
    """The size x similarity plane, its regions, and this dataset's position."""
    figure, axes = new_figure(figsize=(7, 5))
    x_edges = [1, cfg.small_per_class, cfg.large_per_class, 20_000]
    value = similarity_of(d.numbers, cfg.similarity)
    low, high = _axis(cfg.similarity, value, cfg.similar_at)
    for key, strategy in cfg.regions.items():
        size, kind = key.split("/")
        i = ["small", "medium", "large"].index(size)
        y0, y1 = (cfg.similar_at, high) if kind == "similar" else (low, cfg.similar_at)
        chosen = strategy == d.strategy
        axes.fill_between(
            [x_edges[i], x_edges[i + 1]],
            y0,
            y1,
            alpha=0.35 if chosen else 0.1,
            color="tab:orange" if chosen else "tab:blue",
            linewidth=0,
        )
        axes.text(
            (x_edges[i] * x_edges[i + 1]) ** 0.5,
            (y0 + y1) / 2,
            strategy.replace("_", " "),
            ha="center",
            va="center",
            fontsize=9,
        )
    axes.scatter(
        [max(d.numbers["per_class_min"], 1)],
        [value],
        s=90,
        color="black",
        zorder=5,
        label="this dataset",
    )
    axes.set_xscale("log")
    axes.set(
        xlim=(1, 20_000),
        ylim=(low, high),
        xlabel="labelled images per class (min)",
        ylabel=MEASURES[cfg.similarity],
        title=f"Freeze strategy: {d.strategy}",
    )
    axes.legend(loc="lower right")
    save_figure(figure, path)


def _axis(measure: str, value: float, threshold: float) -> tuple[float, float]:
    """The plot's similarity range: [0, 1] for the bounded measures, else around the points."""
    if measure == "knn":
        return 0.0, 1.0
    low, high = min(value, threshold), max(value, threshold)
    margin = max(0.1, 0.5 * (high - low))
    return low - margin, min(high + margin, 1.0) if measure == "leep" else high + margin


def write_decision(d: Decision, cfg: StrategyParams, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DECISION).write_text(json.dumps(asdict(d), indent=2))
    (out_dir / "decision.txt").write_text(d.reason + "\n")
    plot_plane(d, cfg, out_dir / "strategy.png")


def decide_and_record(numbers: dict, params: Params, out_dir: Path) -> Decision:
    """Decide from profile numbers (stages in the order the profile measured them)
    and write the record, paragraph and picture to ``out_dir``."""
    decision = decide(numbers, list(numbers["bn_distance"]), params.strategy, params.train)
    write_decision(decision, params.strategy, out_dir)
    return decision


def profile_source(source: Path, params: Params, out_dir: Path) -> Decision:
    """Profile any ImageFolder or manifest and decide, without preparing or training.

    Uses up to ``profile.max_per_class`` images per class; given val/test
    splits are the probe's validation set, otherwise a stratified 20%.
    """
    from sklearn.model_selection import train_test_split

    from transferops.data.pictures import header_size
    from transferops.data.sources import list_source
    from transferops.models.backbones import load_backbone, transform_for
    from transferops.models.profiling import bn_sample_loader, features_at, measure, write_profile
    from transferops.models.recipe import choose_input_side, native_side
    from transferops.runtime import select_device, set_threads

    set_threads(params.threads)
    device = select_device(params.device)
    listing = list_source(source)
    rows = listing.rows[listing.rows["problem"].isna()]
    rows = rows.groupby("label").head(params.profile.max_per_class).reset_index(drop=True)
    classes = sorted(rows["label"].unique())
    held_out = rows["split"].isin(["val", "test"])
    if held_out.any() and (~held_out).any():
        train_rows, val_rows = rows[~held_out], rows[held_out]
    else:
        train_rows, val_rows = train_test_split(
            rows, test_size=0.2, stratify=rows["label"], random_state=params.seed
        )
    backbone = load_backbone(params.model.backbone, params.model.weights)
    sizes = pd.DataFrame([header_size(Path(f)) for f in train_rows["file"]], columns=["w", "h"])
    training = choose_input_side(
        params,
        native=native_side(sizes["w"], sizes["h"]),
        n_train=len(train_rows),
        backbone_side=backbone.native_side,
        device=device,
    )
    log.info("training would use %s", training.reason)
    transform = transform_for(backbone, params.profile.side)

    def features(frame) -> tuple:
        return features_at(backbone, frame, listing.root, classes, transform, params, device)

    bn_loader = bn_sample_loader(train_rows, listing.root, classes, transform, params, device)
    numbers = measure(
        backbone,
        features(train_rows),
        features(val_rows),
        bn_loader,
        len(classes),
        device,
        params.profile.side,
    )
    numbers["train_side"] = training.side
    write_profile(numbers, out_dir)
    return decide_and_record(numbers, params, out_dir)
