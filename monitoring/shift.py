"""Domain-shift statistics and their calibration: the numbers the Evidently report shows.

One check compares a window of traffic with the serving model's reference
(its evaluation set) through a family of tests, each computed exactly as
Evidently computes it (``tests/test_monitoring.py`` checks they agree):

- ``embedding``: MMD² (unbiased; RBF kernel, bandwidth the median
  reference-to-window distance) on the reference's principal components,
  Evidently's ``MMDDriftMethod``. Higher = further apart.
- ``classifier``: how well a linear classifier tells the window from the
  reference on the raw embeddings (ROC AUC on a held-out half; Evidently's
  ``ModelDriftMethod``, its default method for embeddings). The MMD works on
  the reference's top principal components, where a subtle corruption (JPEG
  artefacts, mild pixelation) hardly moves; the classifier sees every
  direction of the embedding (docs/benchmarks.md). Higher = further apart.
- ``stat:<name>``: the Wasserstein distance between the window's and the
  reference's values of an image statistic (``transferops/data/imagestats.py``), in
  reference standard deviations: Evidently's ``wasserstein`` (its own default
  for large samples). An effect size, not a p-value: a fixed, finite
  reference is never exactly the population, so a p-value test against it
  fires on ever smaller differences as windows grow (measured: a K-S test
  alarmed on 29% of unshifted 500-image windows). A statistic that is
  constant in the reference (every image 28 px wide) is not tested.
- ``prediction``: chi-square p-value of the window's predicted-class counts
  against the reference's proportions, Evidently's ``chisquare``.

Evidently's default thresholds fire on unshifted data, so the thresholds are
calibrated on the reference itself: ``draws`` times, a random pseudo-window
of the window's size is held out of the reference and tested against the
rest. The thresholds are set jointly (on the smallest per-test tail rank of
each draw), so that *any* test firing on an unshifted window happens in a
``false_alarm_rate`` fraction of checks, not once per test. The MMD
threshold is rescaled from the draws' sizes to the real ones (its null
spread scales with 1/n + 1/m; the classifier's AUC above 0.5 with the
square root of that); an image-statistic threshold is never below
``min_effect`` reference SDs; the p-value threshold is never looser than
``false_alarm_rate`` itself.

The classifier is fitted in the first ``classifier_fits`` draws only; the
other draws shuffle the window/reference sides of those fits' held-out rows
(``relabelled_aucs``). With no shift the sides are exchangeable, so a shuffle
is a draw from the AUC's null distribution given that fit: the same
distribution at a tenth of the fits (the fits were most of a calibration's
time). The shuffled draws are independent of the other tests' values in the
same draw; where the tests move together on unusual draws, that makes the
family's thresholds slightly stricter, not looser.

The per-stage BatchNorm distances (``transferops/models/bnshift.py``) do not vote:
they say where a shift sits, early (input-level) or late (semantic).
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import chisquare, rankdata, wasserstein_distance
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

EMBEDDING, CLASSIFIER, PREDICTION, STAT = "embedding", "classifier", "prediction", "stat:"


@dataclass(frozen=True)
class Sample:
    """What one side of a comparison holds, row for row."""

    embeddings: np.ndarray  # (n, components): PCA coordinates
    stats: np.ndarray  # (n, len(stat_names))
    predictions: np.ndarray  # predicted class names
    bn: np.ndarray | None = None  # (n, stages) or None when not logged
    features: np.ndarray | None = None  # (n, dims): the raw embeddings, for the classifier

    def __len__(self) -> int:
        return len(self.predictions)

    def take(self, rows: np.ndarray) -> Sample:
        return Sample(
            self.embeddings[rows],
            self.stats[rows],
            self.predictions[rows],
            None if self.bn is None else self.bn[rows],
            None if self.features is None else self.features[rows],
        )


@dataclass
class Calibration:
    """Per-test thresholds for windows of one size, against one reference."""

    window: int  # rows in the windows it holds for
    reference: int
    draws: int
    false_alarm_rate: float
    # test -> threshold in the test's own scale: MMD fires above, p-values below
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def tested_stats(self) -> list[str]:
        return [t[len(STAT) :] for t in self.thresholds if t.startswith(STAT)]

    def for_window(self, rows: int) -> Calibration:
        """The same draws' thresholds for windows of ``rows`` against the whole reference
        (the MMD's and the classifier's move with the sizes; see ``rescaled``)."""
        if rows == self.window:
            return self
        ratio = (1 / rows + 1 / self.reference) / (1 / self.window + 1 / self.reference)
        thresholds = {t: rescaled(t, v, ratio) for t, v in self.thresholds.items()}
        return Calibration(rows, self.reference, self.draws, self.false_alarm_rate, thresholds)

    def against(self, rows: int) -> dict[str, float]:
        """The thresholds for comparing a window with ``rows`` of the reference, not all.

        Only the MMD's depends on the sizes (its null spread goes as 1/window +
        1/reference): compared with the held-in part of a calibration draw
        (``reference - window`` rows), it is the draws' own cut-off, unscaled.
        """
        ratio = (1 / self.window + 1 / rows) / (1 / self.window + 1 / self.reference)
        return {t: rescaled(t, v, ratio) for t, v in self.thresholds.items()}


def rescaled(test: str, threshold: float, ratio: float) -> float:
    """A threshold moved to other sample sizes; ``ratio``: the new 1/n + 1/m over the old.

    The MMD's null spread is proportional to 1/n + 1/m, the classifier's AUC
    above chance to its square root; the other tests' thresholds do not move.
    """
    if test == EMBEDDING:
        return max(threshold, 0.0) * ratio
    if test == CLASSIFIER:
        return 0.5 + max(threshold - 0.5, 0.0) * float(np.sqrt(ratio))
    return threshold


def held_out_rows(window: int, reference: int) -> int:
    """The size of a calibration draw's pseudo-window: the window's, at most half the reference."""
    return min(window, reference // 2)


def test_names(stat_names: list[str], classifier: bool = False) -> list[str]:
    """The family's tests, in the report's order (``classifier``: raw embeddings kept)."""
    return [
        EMBEDDING,
        *([CLASSIFIER] if classifier else []),
        *[STAT + name for name in stat_names],
        PREDICTION,
    ]


def relation(test: str) -> str:
    """How a test fires, as Evidently decides: MMD and AUC above, a distance at or above, a
    p-value below its threshold."""
    return {EMBEDDING: ">", CLASSIFIER: ">", PREDICTION: "<"}.get(test, ">=")


def fires(test: str, value: float, threshold: float) -> bool:
    return {">": operator.gt, ">=": operator.ge, "<": operator.lt}[relation(test)](value, threshold)


def tested_stats(stats: np.ndarray, stat_names: list[str]) -> list[str]:
    """The image statistics that vary in the reference (a constant one has no scale)."""
    return [name for i, name in enumerate(stat_names) if np.std(stats[:, i]) > 0]


# --- the statistics ---------------------------------------------------------


def sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return np.maximum(d, 0)


def _mmd2u_of_split(k: np.ndarray, held_in: np.ndarray) -> float:
    """MMD²_u of the ``held_in`` rows of kernel ``k`` (the reference) against the rest (the
    window): the blocks' sums from one matrix-vector product, not a reordered copy of ``k``."""
    inside = np.zeros(len(k))
    inside[held_in] = 1.0
    m, n = len(held_in), len(k) - len(held_in)
    k_inside = k @ inside
    xx = inside @ k_inside
    xy = k_inside.sum() - xx
    yy = k.sum() - xx - 2 * xy
    diagonal = np.diagonal(k)
    trace_in = diagonal[held_in].sum()
    return float(
        (xx - trace_in) / (m * (m - 1))
        + (yy - (diagonal.sum() - trace_in)) / (n * (n - 1))
        - 2 * xy / (m * n)
    )


def mmd2u(current: np.ndarray, reference: np.ndarray) -> float:
    """Evidently's MMD statistic (clipped at 0), for up to 1,000 rows a side."""
    sigma2 = np.median(np.sqrt(sq_dists(reference, current))) ** 2
    both = np.vstack([reference, current])
    kernel = np.exp(-sq_dists(both, both) / sigma2)
    return max(_mmd2u_of_split(kernel, np.arange(len(reference))), 0.0)


def classifier_scores(current: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evidently's ``ModelDriftMethod`` classifier: a logistic-loss SGD classifier told
    reference (1) from window (0), fitted on a seeded half of both; its scores on the
    other half, and which side each of those rows came from."""
    rows = np.vstack([reference, current]).astype(np.float64)
    target = np.r_[np.ones(len(reference), int), np.zeros(len(current), int)]
    fit_rows, held_rows, fit_target, held_target = train_test_split(
        rows, target, test_size=0.5, random_state=42, shuffle=True
    )
    model = SGDClassifier(loss="log_loss", random_state=42).fit(fit_rows, fit_target)
    return model.predict_proba(held_rows)[:, 1], held_target


def classifier_auc(current: np.ndarray, reference: np.ndarray) -> float:
    """Evidently's ``ModelDriftMethod`` statistic: the ROC AUC of ``classifier_scores``.

    0.5: the two look alike to a linear classifier; 1: told apart every time.
    """
    scores, sides = classifier_scores(current, reference)
    return float(roc_auc_score(sides, scores))


def relabelled_aucs(
    scores: np.ndarray, sides: np.ndarray, count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` AUCs of one fitted classifier's held-out ``scores`` with ``sides`` shuffled.

    With no shift, the held-out rows' sides are a random assignment, independent
    of a classifier fitted on the other half: shuffling them draws from the AUC's
    exact null distribution given that classifier. Ties count half, as in
    ``roc_auc_score`` (the SGD classifier saturates: often half its scores are
    exactly 1, which makes its AUC far less spread than the tie-free formula says).
    """
    ranks = rankdata(scores)
    positives, n = int(sides.sum()), len(sides)
    chosen = rng.random((count, n)).argsort(1)[:, :positives]
    return (ranks[chosen].sum(1) - positives * (positives + 1) / 2) / (positives * (n - positives))


def wasserstein_norm(current: np.ndarray, reference: np.ndarray) -> float:
    """Evidently's normed Wasserstein distance: W1 over the reference's standard deviation."""
    return float(wasserstein_distance(reference, current) / max(float(np.std(reference)), 0.001))


def chisquare_p(current: np.ndarray, reference: np.ndarray) -> float:
    """Window counts against reference proportions (a class the reference never saw: p = 0)."""
    keys = sorted(set(reference.tolist()) | set(current.tolist()))
    ref_counts = np.array([(reference == k).sum() for k in keys], dtype=float)
    cur_counts = np.array([(current == k).sum() for k in keys], dtype=float)
    expected = ref_counts * len(current) / len(reference)
    if np.any((expected == 0) & (cur_counts > 0)):
        return 0.0
    keep = expected > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(chisquare(cur_counts[keep], expected[keep]).pvalue)


def scores(
    current: Sample, reference: Sample, stat_names: list[str], tested: list[str]
) -> dict[str, float]:
    """Every test's value for one window (``tested``: the image statistics that are).

    The classifier runs when the reference kept raw embeddings (its calibration
    then has a threshold for it), and then the window must have them too.
    """
    values = {EMBEDDING: mmd2u(current.embeddings, reference.embeddings)}
    if reference.features is not None:
        if current.features is None:
            raise ValueError("the reference has raw embeddings for the classifier; the window not")
        values[CLASSIFIER] = classifier_auc(current.features, reference.features)
    for name in tested:
        i = stat_names.index(name)
        values[STAT + name] = wasserstein_norm(current.stats[:, i], reference.stats[:, i])
    values[PREDICTION] = chisquare_p(current.predictions, reference.predictions)
    return values


# --- calibration ------------------------------------------------------------


def _extremeness(test: str, value: float) -> float:
    """One direction for every test: larger = more shifted."""
    return -np.log10(max(value, 1e-300)) if test == PREDICTION else value


def calibrate(
    reference: Sample,
    window: int,
    stat_names: list[str],
    false_alarm_rate: float,
    draws: int,
    seed: int,
    min_effect: float = 0.1,
    classifier_fits: int | None = None,
) -> Calibration:
    """Thresholds under which an unshifted window of ``window`` rows alarms at the set rate.

    The classifier is fitted in the first ``classifier_fits`` draws only (all by
    default): its fits are nearly all of the calibration's time. Every later
    draw takes its classifier value from one of those fits, its held-out sides
    shuffled (``relabelled_aucs``): a draw from the same null distribution.
    """
    rng = np.random.default_rng(seed)
    total = len(reference)
    held_out = held_out_rows(window, total)
    tested = tested_stats(reference.stats, stat_names)
    classifier = reference.features is not None
    tests = test_names(tested, classifier)
    columns = [stat_names.index(name) for name in tested]
    sq = sq_dists(reference.embeddings, reference.embeddings)
    values = np.empty((draws, len(tests)))
    fits = min(classifier_fits or draws, draws) if classifier else 0
    fitted: list[tuple[np.ndarray, np.ndarray]] = []  # per fit: held-out scores, sides
    for d in range(draws):
        order = rng.permutation(total)
        held_in, out = order[held_out:], order[:held_out]
        sigma2 = np.median(np.sqrt(sq[np.ix_(held_in, out)])) ** 2
        row = [_mmd2u_of_split(np.exp(sq * (-1 / sigma2)), held_in)]
        if d < fits:
            scores, sides = classifier_scores(reference.features[out], reference.features[held_in])
            fitted.append((scores, sides))
            row.append(roc_auc_score(sides, scores))
        elif classifier:
            row.append(np.nan)  # drawn from the fits below
        ref_stats, cur_stats = reference.stats[held_in], reference.stats[out]
        row += [wasserstein_norm(cur_stats[:, i], ref_stats[:, i]) for i in columns]
        row.append(chisquare_p(reference.predictions[out], reference.predictions[held_in]))
        values[d] = [_extremeness(t, v) for t, v in zip(tests, row, strict=True)]
    if fits < draws and classifier:
        shuffles = np.random.default_rng([seed, 1])  # its own stream: the other draws unchanged
        later, column = np.arange(fits, draws), tests.index(CLASSIFIER)
        for j, (scores, sides) in enumerate(fitted):
            rows = later[later % fits == j]
            values[rows, column] = relabelled_aucs(scores, sides, len(rows), shuffles)
    # Tail rank of each draw within each test; the family fires on the smallest.
    ranks = (values[None, :, :] >= values[:, None, :]).sum(1) / draws  # (draws, tests)
    tau = np.quantile(ranks.min(1), false_alarm_rate, method="lower")
    k = int(np.floor(tau * draws))
    thresholds = {}
    ratio = (1 / window + 1 / total) / (1 / held_out + 1 / (total - held_out))
    for j, test in enumerate(tests):
        cut = np.sort(values[:, j])[::-1][min(k, draws - 1)]
        if test in (EMBEDDING, CLASSIFIER):
            thresholds[test] = float(rescaled(test, cut, ratio))
        elif test.startswith(STAT):
            thresholds[test] = float(max(cut, min_effect))
        else:
            thresholds[test] = float(min(10.0**-cut, false_alarm_rate))
    return Calibration(window, total, draws, false_alarm_rate, thresholds)


# --- where the shift sits ---------------------------------------------------


def input_level(location: str | None, fired: list[str]) -> bool:
    """An input-level shift: located in the early stages, and some image statistic moved.

    The location alone is not enough: the benchmark found a class-prior shift
    (semantic) located early and Gaussian noise (input-level) located late
    (docs/monitoring.md), so pixel-level evidence is required as well.
    """
    return location == "early" and any(test.startswith(STAT) for test in fired)


def stage_shift(current: np.ndarray, reference: np.ndarray, stages: list[str]) -> dict[str, float]:
    """Per stage: how far the window's mean BatchNorm distance moved, in reference SDs.

    ``pipelines.profile.shift_location`` on the absolute values then says
    early (input-level) or late (semantic), by the profile's own rule.
    """
    spread = reference.std(0) + 1e-6
    effect = (current.mean(0) - reference.mean(0)) / spread
    return {stage: float(value) for stage, value in zip(stages, effect, strict=True)}
