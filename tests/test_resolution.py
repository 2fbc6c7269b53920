"""``image_size: auto``: the input side follows the images, the backbone and the budget."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from transferops.config import load_params
from transferops.models.recipe import choose_input_side, planned_images
from transferops.models.resolution import choose_side

RATE = 140.0  # full fine-tuning images per second at 64 px (the CPU default)


def side(native: float, planned: int = 10_000, budget: float = 360, backbone: int = 224) -> int:
    return choose_side(
        native=native,
        backbone_side=backbone,
        planned_images=planned,
        budget_s=budget,
        images_per_s_at_64=RATE,
        max_upsample=4,
    ).side


def test_small_images_are_enlarged_at_most_four_times() -> None:
    assert side(28) == 96, "Fashion-MNIST: 4 x 28 = 112 -> 96"
    assert side(8) == 64, "never below 64 px"
    assert side(40, planned=2_000) == 160 > side(28, planned=2_000)


def test_large_images_get_what_the_budget_affords_up_to_the_backbone_side() -> None:
    assert side(256) == 128, "10,000 images at 160 px would need 446 s > 360 s"
    assert side(256, planned=2_000) == 224, "a short run affords the backbone's side"
    assert side(1000, planned=2_000, backbone=260) == 256
    assert side(256, budget=100_000) == 224, "never above the backbone's own side"


def test_over_budget_even_at_the_smallest_side_says_so() -> None:
    choice = choose_side(
        native=300,
        backbone_side=224,
        planned_images=100_000,
        budget_s=10,
        images_per_s_at_64=RATE,
        max_upsample=4,
    )
    assert choice.side == 64 and "over the budget" in choice.reason


@pytest.mark.parametrize(("device", "expected"), [("cpu", 128), ("cuda", 224)])
def test_the_device_budget_decides(device: str, expected: int) -> None:
    params = load_params(ROOT / "params.yaml")
    choice = choose_input_side(params, native=500, n_train=840, backbone_side=224, device=device)
    assert choice.side == expected, choice.reason
    assert choice.planned_images == planned_images(840, params.train)


def test_a_fixed_image_size_is_kept() -> None:
    params = load_params(ROOT / "params.yaml", ["model.image_size=48"])
    assert (
        choose_input_side(params, native=500, n_train=100, backbone_side=224, device="cpu").side
        == 48
    )
    native = load_params(ROOT / "params.yaml", ["model.image_size=null"])
    assert (
        choose_input_side(native, native=20, n_train=100, backbone_side=224, device="cpu").side
        == 224
    )
