"""``model.image_size: auto``: the input side from the data, the backbone and a time budget.

The rule (docs/training.md; measured by ``benchmarks/resolution.py``):

1. The sides considered are multiples of 32 (EfficientNets downsample by 32)
   from 64 px up to the backbone's own side (224 for EfficientNet-Lite0).
2. Enlarging an image past ``model.auto.max_upsample`` times its native side
   (median shorter side of the training images) buys little and costs the
   square of the side: 28-px Fashion-MNIST stops at 96 px, 256-px photos may
   go to the backbone's side.
3. Of what is left, the largest side whose estimated fine-tuning time fits the
   device's budget (``model.auto.budget_s``): planned training images x
   (side / 64)^2 / the device's full fine-tuning throughput at 64 px.
4. Never below 64 px: smaller inputs leave the last stages a 1x1 map.

The function is pure (no timing at run time), so every stage that asks gets
the same answer, and ``dvc repro`` stays reproducible on one machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

STEP = 32  # px between sides considered
SMALLEST = 64  # px


@dataclass(frozen=True)
class SideChoice:
    side: int
    native: float  # median shorter side of the training images (px)
    cap: int  # the largest side the data and backbone justify
    planned_images: int  # images the fine-tuning run plans to process
    estimated_s: float  # estimated fine-tuning time at ``side``
    budget_s: float
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def estimated_seconds(planned_images: int, side: int, images_per_s_at_64: float) -> float:
    """Fine-tuning time: cost per image grows with the number of pixels."""
    return planned_images * (side / SMALLEST) ** 2 / images_per_s_at_64


def choose_side(
    *,
    native: float,
    backbone_side: int,
    planned_images: int,
    budget_s: float,
    images_per_s_at_64: float,
    max_upsample: float,
) -> SideChoice:
    """The input side for ``image_size: auto`` and why (see the module docstring)."""
    cap = max(SMALLEST, min(backbone_side, int(max_upsample * native)))
    ladder = list(range(SMALLEST, cap + 1, STEP)) or [SMALLEST]
    fitting = [
        s for s in ladder if estimated_seconds(planned_images, s, images_per_s_at_64) <= budget_s
    ]
    side = fitting[-1] if fitting else SMALLEST
    estimate = estimated_seconds(planned_images, side, images_per_s_at_64)
    if not fitting:
        reason = (
            f"even {SMALLEST} px needs an estimated {estimate:.0f} s of fine-tuning, over the "
            f"budget of {budget_s:.0f} s: {SMALLEST} px, the smallest side considered"
        )
    elif side == ladder[-1]:
        limit = (
            "the backbone's own side"
            if cap == backbone_side
            else (f"{max_upsample:g} x the images' native {native:.0f} px")
        )
        reason = f"{side} px: the largest multiple of {STEP} up to {limit} ({cap} px)"
        reason += f"; estimated {estimate:.0f} s of fine-tuning, budget {budget_s:.0f} s"
    else:
        larger = ladder[ladder.index(side) + 1]
        reason = (
            f"{side} px: the largest side within the budget of {budget_s:.0f} s "
            f"(estimated {estimate:.0f} s; {larger} px would need "
            f"{estimated_seconds(planned_images, larger, images_per_s_at_64):.0f} s)"
        )
    return SideChoice(side, float(native), cap, planned_images, estimate, budget_s, reason)
