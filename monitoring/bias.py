"""Bias drift: per-group gaps in a window of traffic, against the reference's.

For every group with enough traffic, three gaps between the group and the
rest of the window (group minus rest):

- ``parity``: the rate at which a class is predicted (demographic parity
  difference), for the class whose gap moved most;
- ``accuracy``: on requests whose true label came back as feedback;
- ``tpr``: a class's true-positive rate (recall; equal opportunity), for the
  class whose gap moved most, on labelled requests.

The reference value is the same gap on the evaluation set when it has that
group (``min_group_size`` images or more), else parity (0): the reference
data carried no groups, so no gap is expected. A gap alarms when it moved at
least ``max_gap_change`` from the reference, the reference lies outside its
bootstrap interval (``confidence``; group and rest resampled separately),
and the group's own value moved more than the rest's, so a group that merely
stood still while another degraded is not blamed. The intervals are normal
intervals from the bootstrap's standard error, widened for every comparison
the check makes (Bonferroni over groups, metrics and the classes each
maximum was taken over), so ``confidence`` holds for the whole check: with
three groups and ten classes that is some sixty comparisons, and per-test
99% intervals alarmed on a fifth of fair windows. Sample guards skip a
group with fewer than ``min_group_size`` predictions, ``min_labelled``
labelled predictions (accuracy), or ``min_class_labelled`` per class (tpr).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import norm

from transferops.config import BiasParams

PARITY, ACCURACY, TPR = "parity", "accuracy", "tpr"
NO_REFERENCE = "the reference has no such group: parity (0) expected"


@dataclass(frozen=True)
class Side:
    """Predictions (and true labels where known; "" where not) of some rows."""

    predictions: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def where(self, mask: np.ndarray) -> Side:
        return Side(self.predictions[mask], self.labels[mask], self.groups[mask])

    @property
    def labelled(self) -> Side:
        return self.where(self.labels != "")


@dataclass
class Gap:
    group: str
    metric: str  # parity | accuracy | tpr
    detail: str  # the class, for parity and tpr
    n: int  # the group's rows behind the current value
    current: float
    interval: tuple[float, float]
    reference: float
    reference_source: str
    group_change: float  # the group's own value, current minus reference
    rest_change: float
    alarm: bool = False

    def sentence(self) -> str:
        what = {
            PARITY: f"rate of predicting {self.detail!r}",
            ACCURACY: "accuracy",
            TPR: f"true-positive rate of {self.detail!r}",
        }[self.metric]
        low, high = self.interval
        return (
            f"group {self.group!r}: {what} gap to the other groups {self.current:+.3f} "
            f"(interval {low:+.3f} to {high:+.3f}, n = {self.n}) vs {self.reference:+.3f} "
            f"in the reference"
        )

    def to_dict(self) -> dict:
        return asdict(self) | {"sentence": self.sentence()}


@dataclass
class BiasResult:
    gaps: list[Gap]
    skipped: list[str]  # why a group or metric was not judged

    @property
    def alarms(self) -> list[Gap]:
        return sorted(
            (g for g in self.gaps if g.alarm), key=lambda g: -abs(g.current - g.reference)
        )

    def to_dict(self) -> dict:
        return {
            "alarms": [g.to_dict() for g in self.alarms],
            "gaps": [g.to_dict() for g in self.gaps],
            "skipped": self.skipped,
        }


# --- the per-metric values, vectorised over bootstrap resamples -------------


def _rates(predictions: np.ndarray, classes: list[str], draws: np.ndarray) -> np.ndarray:
    """Class rates for each resample: (resamples, classes)."""
    codes = np.searchsorted(classes, predictions)
    picked = codes[draws] + np.arange(len(draws))[:, None] * len(classes)
    counts = np.bincount(picked.ravel(), minlength=len(draws) * len(classes))
    return counts.reshape(len(draws), len(classes)) / draws.shape[1]


def _values(side: Side, metric: str, classes: list[str], draws: np.ndarray) -> np.ndarray:
    """The metric per resample (rows of ``draws`` index ``side``): (resamples, classes|1)."""
    if metric == PARITY:
        return _rates(side.predictions, classes, draws)
    correct = side.predictions == side.labels
    if metric == ACCURACY:
        return correct[draws].mean(1, keepdims=True)
    # tpr: per class, the share of its labelled rows predicted right
    codes = np.searchsorted(classes, side.labels)
    hits = np.zeros((len(draws), len(classes)))
    totals = np.zeros((len(draws), len(classes)))
    for c in range(len(classes)):
        of_class = (codes == c)[draws]
        totals[:, c] = of_class.sum(1)
        hits[:, c] = (of_class & correct[draws]).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / totals


def _point(side: Side, metric: str, classes: list[str]) -> np.ndarray:
    return _values(side, metric, classes, np.arange(len(side.predictions))[None, :])[0]


def _usable(side: Side, metric: str, classes: list[str], cfg: BiasParams) -> np.ndarray:
    """Which classes (columns) have enough rows for ``metric``."""
    if metric != TPR:
        return np.ones(len(classes) if metric == PARITY else 1, dtype=bool)
    counts = np.array([(side.labels == c).sum() for c in classes])
    return counts >= cfg.min_class_labelled


def _reference_gap(
    reference: Side, group: str, metric: str, classes: list[str], cfg: BiasParams
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(gap, group value, rest value) in the reference, and where they came from."""
    inside = reference.groups == group
    if inside.sum() >= cfg.min_group_size and (~inside).sum() >= cfg.min_group_size:
        g = _point(reference.where(inside), metric, classes)
        r = _point(reference.where(~inside), metric, classes)
        return g - r, g, r, "the reference's own group"
    overall = _point(reference, metric, classes)
    return np.zeros_like(overall), overall, overall, NO_REFERENCE


def group_gaps(
    window: Side, reference: Side, classes: list[str], cfg: BiasParams, seed: int
) -> BiasResult:
    """Every judged gap of every group in ``window``; ``reference`` has full labels."""
    rng = np.random.default_rng(seed)
    gaps, spreads, skipped, comparisons = [], [], [], 0
    for group in sorted(set(window.groups.tolist()) - {""}):
        inside = window.groups == group
        if inside.sum() < cfg.min_group_size or (~inside).sum() < cfg.min_group_size:
            skipped.append(
                f"group {group!r}: {int(inside.sum())} predictions vs {int((~inside).sum())} "
                f"for the rest; each needs monitor.bias.min_group_size = {cfg.min_group_size}"
            )
            continue
        for metric in (PARITY, ACCURACY, TPR):
            base = window if metric == PARITY else window.labelled
            g_side, r_side = base.where(base.groups == group), base.where(base.groups != group)
            if metric != PARITY and min(len(g_side.labels), len(r_side.labels)) < cfg.min_labelled:
                skipped.append(
                    f"group {group!r} {metric}: {len(g_side.labels)} labelled predictions vs "
                    f"{len(r_side.labels)} for the rest; each needs monitor.bias.min_labelled "
                    f"= {cfg.min_labelled}"
                )
                continue
            usable = _usable(g_side, metric, classes, cfg) & _usable(r_side, metric, classes, cfg)
            if not usable.any():
                skipped.append(
                    f"group {group!r} tpr: no class has monitor.bias.min_class_labelled = "
                    f"{cfg.min_class_labelled} labelled predictions in the group and the rest"
                )
                continue
            comparisons += int(usable.sum())
            ref_gap, ref_g, ref_r, source = _reference_gap(reference, group, metric, classes, cfg)
            g_now, r_now = _point(g_side, metric, classes), _point(r_side, metric, classes)
            change = np.where(usable, np.abs((g_now - r_now) - ref_gap), -np.inf)
            c = int(np.nanargmax(change))
            boot = (
                _values(g_side, metric, classes, _resample(rng, len(g_side.labels), cfg))[:, c]
                - _values(r_side, metric, classes, _resample(rng, len(r_side.labels), cfg))[:, c]
            )
            spreads.append(float(np.nanstd(boot)))
            gap = Gap(
                group=group,
                metric=metric,
                detail=str(classes[c]) if metric != ACCURACY else "",
                n=len(g_side.labels),
                current=float(g_now[c] - r_now[c]),
                interval=(0.0, 0.0),  # set below, once the comparisons are counted
                reference=float(ref_gap[c]),
                reference_source=source,
                group_change=float(g_now[c] - ref_g[c]),
                rest_change=float(r_now[c] - ref_r[c]),
            )
            gaps.append(gap)
    z = norm.ppf(1 - (1 - cfg.confidence) / (2 * max(comparisons, 1)))
    for gap, spread in zip(gaps, spreads, strict=True):
        low, high = gap.current - z * spread, gap.current + z * spread
        gap.interval = (float(low), float(high))
        gap.alarm = bool(
            abs(gap.current - gap.reference) >= cfg.max_gap_change
            and not low <= gap.reference <= high
            and abs(gap.group_change) > abs(gap.rest_change)
        )
    return BiasResult(gaps, skipped)


def _resample(rng: np.random.Generator, n: int, cfg: BiasParams) -> np.ndarray:
    return rng.integers(0, n, size=(cfg.bootstrap, n))
