"""The linear probe: learns a separable problem; the folded head equals the trained one."""

import numpy as np
import pytest
import torch

from transferops.models.probe import fit_linear_probe


def separable(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centers = np.array([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    # Large offset and scale on purpose: the probe standardises, then folds it back.
    x = (centers[labels] + rng.normal(size=(n, 4))) * 30 + 100
    return x.astype(np.float32), labels


def test_probe_learns_and_folded_weights_predict_on_raw_features() -> None:
    x, y = separable(300, 0)
    vx, vy = separable(100, 1)
    weight, bias, best = fit_linear_probe(
        x, y, vx, vy, num_classes=3, epochs=20, lr=0.05, weight_decay=0.0, batch_size=64, seed=0
    )
    assert best["val_accuracy"] > 0.95
    raw_predictions = (torch.from_numpy(vx) @ weight.T + bias).argmax(1).numpy()
    assert (raw_predictions == vy).mean() == best["val_accuracy"]


def test_zero_epochs_is_an_untrained_baseline() -> None:
    x, y = separable(300, 0)
    vx, vy = separable(100, 1)
    weight, bias, best = fit_linear_probe(
        x, y, vx, vy, num_classes=3, epochs=0, lr=0.05, weight_decay=0.0, batch_size=64, seed=0
    )
    assert best["epoch"] == 0
    raw_predictions = (torch.from_numpy(vx) @ weight.T + bias).argmax(1).numpy()
    assert (raw_predictions == vy).mean() == pytest.approx(best["val_accuracy"]), "as returned"
    assert best["val_accuracy"] < 0.9, "untrained: far from the 0.95 that 20 epochs reach"


def test_probe_is_seeded() -> None:
    x, y = separable(200, 0)
    runs = [
        fit_linear_probe(
            x, y, x, y, num_classes=3, epochs=3, lr=0.05, weight_decay=0.0, batch_size=32, seed=7
        )[0]
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])


def test_a_warm_start_begins_at_the_given_head_and_keeps_a_trained_epoch() -> None:
    x, y = separable(300, 0)
    vx, vy = separable(100, 1)
    fit = dict(num_classes=3, lr=0.05, weight_decay=0.0, batch_size=64, seed=0)
    head = fit_linear_probe(x, y, vx, vy, epochs=20, **fit)[:2]
    # No epochs: the start comes back as it went in (unfolded for training, folded again).
    weight, bias, best = fit_linear_probe(x, y, vx, vy, epochs=0, start_head=head, **fit)
    assert torch.allclose(weight, head[0], atol=1e-5) and torch.allclose(bias, head[1], atol=1e-3)
    assert best["val_accuracy"] > 0.95, "the start's own accuracy, not a random head's"
    # With epochs, the start (already perfect on val) is not a result: a trained epoch is.
    weight, bias, best = fit_linear_probe(x, y, vx, vy, epochs=3, start_head=head, **fit)
    assert best["epoch"] >= 1 and best["start_val_accuracy"] > 0.95
    assert not torch.equal(weight, head[0])
