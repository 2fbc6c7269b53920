"""Simulated production traffic: held-out images and the shifts applied to them.

Images come from Fashion-MNIST's test part, minus those in the prepared test
split (so the reference never sees them); a shift is applied on the way.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from transferops.data.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, read_manifest

SHIFTS = ("none", "invert", "blur")


# Severity ladders 1-5 of the CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019),
# which were set for 32-px images; Fashion-MNIST's are 28 px.
CORRUPTIONS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # noise SD, grey levels in [0, 1]
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # kernel SD, px
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to grey levels in [0, 1]
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # distance from the mean grey level, x
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # down-scale factor (box filter both ways)
}


def corrupt(image: Image.Image, name: str, severity: int, rng: np.random.Generator) -> Image.Image:
    """``image`` (grey) under corruption ``name`` at ``severity`` 1-5, as a grey PIL image."""
    level = CORRUPTIONS[name][severity - 1]
    grey = image.convert("L")
    if name == "gaussian_blur":
        return grey.filter(ImageFilter.GaussianBlur(radius=level))
    if name == "jpeg":
        buffer = io.BytesIO()
        grey.save(buffer, format="JPEG", quality=level)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("L")
    if name == "pixelate":
        width, height = grey.size
        small = grey.resize((int(width * level), int(height * level)), Image.Resampling.BOX)
        return small.resize((width, height), Image.Resampling.BOX)
    x = np.asarray(grey, dtype=np.float32) / 255
    if name == "gaussian_noise":
        x = x + rng.normal(0, level, x.shape)
    elif name == "brightness":
        x = x + level
    elif name == "contrast":
        x = (x - x.mean()) * level + x.mean()
    else:
        raise ValueError(f"unknown corruption {name!r}; choose one of {sorted(CORRUPTIONS)}")
    return Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))


def apply_shift(image: Image.Image, shift: str) -> Image.Image:
    """The same image as production might deliver it after a change upstream."""
    if shift == "invert":  # e.g. a new camera pipeline with inverted polarity
        return ImageOps.invert(image.convert("L"))
    if shift == "blur":  # e.g. out-of-focus capture
        return image.filter(ImageFilter.GaussianBlur(radius=1.5))
    if shift == "none":
        return image
    raise ValueError(f"unknown shift {shift!r}; choose one of {SHIFTS}")


class HeldOutPool:
    """Labelled Fashion-MNIST test images the model has never been scored on."""

    def __init__(self, source: Path, prepared: Path, seed: int) -> None:
        self.images, self.labels = load_fashion_mnist(source, "t10k")
        used = {
            int(s.rsplit(":", 1)[1])
            for s in read_manifest(prepared)["source"]
            if str(s).startswith("fashion_mnist:t10k:")
        }
        free = np.array([i for i in range(len(self.labels)) if i not in used])
        self.order = np.random.default_rng(seed).permutation(free)
        self.position = 0

    def take(self, count: int, shift: str = "none") -> list[tuple[Image.Image, str]]:
        """The next ``count`` unused images (never repeated), shifted, with labels."""
        if self.position + count > len(self.order):
            raise ValueError(
                f"held-out pool has {len(self.order) - self.position} images "
                f"left, {count} asked for"
            )
        picked = self.order[self.position : self.position + count]
        self.position += count
        return [
            (
                apply_shift(Image.fromarray(self.images[i]), shift),
                FASHION_MNIST_CLASSES[self.labels[i]],
            )
            for i in picked
        ]


def write_labelled_drop(items: list[tuple[Image.Image, str]], folder: Path) -> Path:
    """Save images as an ImageFolder, as annotators would hand back labelled traffic."""
    for index, (image, label) in enumerate(items):
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / label / f"{index:05d}.png")
    return folder
