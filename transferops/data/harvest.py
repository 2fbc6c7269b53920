"""A harvest: kept production images whose labels came back, as the next data drop.

:func:`plan_harvest` is pure: from the kept images (``transferops/logs/kept.py``,
``read_kept``) it takes those with a feedback label and refuses, naming what is
wrong and before anything is written, a label outside the champion's classes
(:class:`HarvestRefused`) or fewer than ``min_per_class`` labels of any of its
classes (:class:`TooFewLabels`, which says have/need per class). It leaves out,
and says so, images harvested before (their request ids or content), images
already in the dataset (by sha256: leakage against the existing splits) and one
image sent twice with two labels. What stays gets its own train/val/test split,
seeded and stratified, so the gate can score the new domain on images no model
trained on. :func:`write_harvest` lays the plan out as a manifest drop
(``images/`` + ``manifest.csv`` with ``path,label,split,group``) for
``flows/data.py`` to check and snapshot like any other drop.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from transferops.data.datasets import DataSourceError
from transferops.data.preparation import DROP_MANIFEST

PROVENANCE = "provenance.json"  # inside a harvested drop: where each image came from
MIN_PER_CLASS = 3  # one image each for train, val and test


class HarvestRefused(DataSourceError):
    """The labels cannot become a drop as they are; nothing was written."""


class TooFewLabels(HarvestRefused):
    """Some class has fewer labels than asked; ``short`` maps it to (have, need)."""

    def __init__(self, short: dict[str, tuple[int, int]], counts: dict[str, int]) -> None:
        self.short, self.counts = short, counts
        listed = ", ".join(f"{c!r} {have}/{need}" for c, (have, need) in short.items())
        super().__init__(
            f"too few feedback labels to harvest: {len(short)} class(es) below the minimum "
            f"(have/need): {listed}. Label more of the kept images (`transferops data queue` "
            "says which first) and send them to POST /v1/feedback"
        )


@dataclass
class HarvestPlan:
    rows: pd.DataFrame  # request_id, file, sha256, label, group, split, time, model_tag
    counts: dict[str, int]  # labels per class that stay
    left_out: dict[str, list[str]] = field(default_factory=dict)  # reason -> request ids

    def provenance(self, name: str) -> dict:
        """What the drop records of where its images came from (and the summary of it)."""
        times = self.rows["time"]
        return {
            "name": name,
            "images": len(self.rows),
            "from": times.min().isoformat(),
            "until": times.max().isoformat(),
            "models": sorted(self.rows["model_tag"].unique()),
            "labels_per_class": self.counts,
            "left_out": {reason: len(ids) for reason, ids in self.left_out.items()},
            "request_ids": list(self.rows["request_id"]),
        }


def plan_harvest(
    kept: pd.DataFrame,
    classes: Sequence[str],
    *,
    min_per_class: int,
    known_sha256: set[str] = frozenset(),
    known_requests: set[str] = frozenset(),
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> HarvestPlan:
    """Which kept, labelled images become the drop; raises before anything is written.

    Args:
        kept: ``read_kept``'s rows (``label`` NaN where no feedback came back).
        classes: the champion's classes: every label must be one, and each
            needs ``min_per_class`` labels.
        known_sha256: content already in the dataset or an earlier drop.
        known_requests: request ids an earlier harvest took.
    """
    if min_per_class < MIN_PER_CLASS:
        raise ValueError(
            f"a harvest needs at least {MIN_PER_CLASS} labels per class (train, val and test "
            f"get one each), not {min_per_class}"
        )
    labelled = kept[kept["label"].notna()].copy()
    outside = labelled[~labelled["label"].isin(list(classes))]
    if len(outside):
        found = sorted(outside["label"].unique())
        ids = ", ".join(outside["request_id"].head(10))
        raise HarvestRefused(
            f"label(s) {found} are not classes of the champion {list(classes)} "
            f"(request ids: {ids}{', ...' if len(outside) > 10 else ''}); nothing harvested"
        )
    labelled["sha256"] = [Path(f).name.split(".")[0] for f in labelled["file"]]
    left_out: dict[str, list[str]] = {}

    def leave_out(mask: pd.Series, reason: str) -> None:
        nonlocal labelled
        if mask.any():
            left_out[reason] = list(labelled.loc[mask, "request_id"])
            labelled = labelled[~mask]

    leave_out(labelled["request_id"].isin(known_requests), "harvested before")
    leave_out(labelled["sha256"].isin(known_sha256), "already in the dataset (same sha256)")
    labels_per_image = labelled.groupby("sha256")["label"].nunique()
    conflicting = set(labels_per_image[labels_per_image > 1].index)
    leave_out(labelled["sha256"].isin(conflicting), "one image, two labels")
    leave_out(labelled["sha256"].duplicated(), "the same image again")
    counts = {c: int((labelled["label"] == c).sum()) for c in classes}
    short = {c: (n, min_per_class) for c, n in counts.items() if n < min_per_class}
    if short:
        raise TooFewLabels(short, counts)
    labelled = labelled.reset_index(drop=True)
    labelled["split"] = split_per_class(labelled["label"], fractions, seed)
    return HarvestPlan(labelled, {c: n for c, n in counts.items() if n}, left_out)


def split_per_class(
    labels: pd.Series, fractions: tuple[float, float, float], seed: int
) -> pd.Series:
    """A seeded train/val/test split within each class, at least one image each for val
    and test (a class of 3 splits 1/1/1): stratified even where a class has few labels."""
    rng = np.random.default_rng(seed)
    splits = pd.Series("train", index=labels.index, dtype=object)
    for label in sorted(labels.unique()):
        rows = rng.permutation(labels.index[labels == label].to_numpy())
        val = max(1, round(len(rows) * fractions[1]))
        test = max(1, round(len(rows) * fractions[2]))
        splits[rows[:test]] = "test"
        splits[rows[test : test + val]] = "val"
    return splits


def write_harvest(plan: HarvestPlan, folder: Path) -> Path:
    """Copy the plan's images into ``folder`` (new) with a drop manifest; returns it."""
    folder = Path(folder)
    if folder.exists():
        raise DataSourceError(f"{folder} already exists: choose a new folder")
    rows = []
    for row in plan.rows.itertuples():
        relative = Path("images") / row.label / Path(row.file).name
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.file, folder / relative)
        rows.append({"path": relative.as_posix(), "label": row.label, "split": row.split,
                     "group": row.group})  # fmt: skip
    pd.DataFrame(rows, columns=["path", "label", "split", "group"]).to_csv(
        folder / DROP_MANIFEST, index=False
    )
    return folder


def read_provenance(drop: Path) -> dict | None:
    """A harvested drop's provenance (None for a drop that came from elsewhere)."""
    path = Path(drop) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else None
