"""Each transferability metric against a case with a known answer."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from transferops.models.transferability import (
    bn_domain_distance,
    gaussian_kl,
    knn_probe_accuracy,
    leep,
    logme,
    logme_evidence,
)

RNG = np.random.default_rng(0)


def direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """Marginal likelihood of Bayesian linear regression, computed the slow, obvious way:
    w ~ N(0, I/alpha), y | w ~ N(F w, I/beta)  =>  y ~ N(0, I/beta + F F^T / alpha)."""
    covariance = np.eye(len(y)) / beta + f @ f.T / alpha
    return float(multivariate_normal(mean=np.zeros(len(y)), cov=covariance).logpdf(y))


@pytest.mark.parametrize(("n", "d"), [(60, 5), (30, 50)])  # n > d and n < d (as with 1280-d)
def test_logme_evidence_equals_the_gaussian_marginal_likelihood(n: int, d: int) -> None:
    f = RNG.normal(size=(n, d))
    y = (f @ RNG.normal(size=d) + 0.5 * RNG.normal(size=n) > 0).astype(float)
    evidence, alpha, beta = logme_evidence(f, y)
    assert evidence == pytest.approx(direct_log_evidence(f, y, alpha, beta), rel=1e-6)


def test_logme_fixed_point_maximises_the_evidence() -> None:
    f = RNG.normal(size=(80, 6))
    y = (f[:, 0] > 0).astype(float)
    best, alpha, beta = logme_evidence(f, y)
    for a_scale in (0.5, 2.0):
        for b_scale in (0.5, 2.0):
            other = direct_log_evidence(f, y, alpha * a_scale, beta * b_scale)
            assert other <= best + 1e-6


def test_logme_ranks_informative_features_above_noise() -> None:
    labels = RNG.integers(0, 3, 150)
    informative = np.eye(3)[labels] * 3 + RNG.normal(size=(150, 3))
    noise = RNG.normal(size=(150, 3))
    assert logme(informative, labels) > logme(noise, labels) + 0.1


def test_leep_is_zero_when_source_classes_determine_the_labels() -> None:
    z = RNG.integers(0, 6, 200)
    theta = np.eye(6)[z]
    labels = z // 2  # each source class maps to one target label
    assert leep(theta, labels) == pytest.approx(0.0, abs=1e-12)


def test_leep_of_an_uninformative_source_is_the_label_log_prior() -> None:
    labels = np.array([0] * 30 + [1] * 10)
    theta = np.full((40, 5), 0.2)
    prior = np.array([0.75, 0.25])
    assert leep(theta, labels) == pytest.approx(np.mean(np.log(prior[labels])))


def test_knn_probe_separates_clusters_and_is_at_chance_on_noise() -> None:
    centers = np.eye(4) * 10
    y_train, y_val = RNG.integers(0, 4, 200), RNG.integers(0, 4, 100)
    x_train = centers[y_train] + RNG.normal(size=(200, 4))
    x_val = centers[y_val] + RNG.normal(size=(100, 4))
    assert knn_probe_accuracy(x_train, y_train, x_val, y_val) == 1.0
    noise = knn_probe_accuracy(RNG.normal(size=(200, 4)), y_train, RNG.normal(size=(100, 4)), y_val)
    assert noise < 0.45


def test_gaussian_kl_matches_the_closed_form() -> None:
    kl = gaussian_kl(np.array([2.0]), np.array([1.0]), np.array([0.0]), np.array([1.0]))
    assert kl[0] == pytest.approx(2.0)  # (mean difference)^2 / (2 var)
    same = gaussian_kl(np.array([0.3]), np.array([2.0]), np.array([0.3]), np.array([2.0]))
    assert same[0] == pytest.approx(0.0)


def test_bn_distance_is_zero_in_domain_and_grows_where_the_shift_is() -> None:
    source = {"early": (np.zeros(8), np.ones(8)), "late": (np.ones(8), np.full(8, 4.0))}
    stages = {"early": "stem", "late": "head"}
    in_domain = bn_domain_distance(source, source, stages)
    assert in_domain == {"stem": 0.0, "head": 0.0}
    shifted = {"early": (np.full(8, 2.0), np.ones(8)), "late": source["late"]}
    distance = bn_domain_distance(shifted, source, stages)
    assert distance["stem"] == pytest.approx(2.0) and distance["head"] == 0.0
