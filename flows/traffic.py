"""Simulated production traffic for the demo and the integration tests.

Images come from Fashion-MNIST's test part, minus those in the prepared test
split (so the reference never sees them); a shift is applied on the way.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from pipelines.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist, read_manifest

SHIFTS = ("none", "invert", "blur")


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


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def send(url: str, items: list[tuple[Image.Image, str]], batch_size: int = 16) -> float:
    """POST the images to ``/v1/classify``; return the accuracy of the answers."""
    import httpx

    correct = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for chunk in batches(items, batch_size):
            files = [
                ("images", (f"{i}.png", png_bytes(image), "image/png"))
                for i, (image, _) in enumerate(chunk)
            ]
            response = client.post("/v1/classify", files=files)
            response.raise_for_status()
            correct += sum(
                r["label"] == label for r, (_, label) in zip(response.json(), chunk, strict=True)
            )
    return correct / max(len(items), 1)


def write_labelled_drop(items: list[tuple[Image.Image, str]], folder: Path) -> Path:
    """Save images as an ImageFolder, as annotators would hand back labelled traffic."""
    for index, (image, label) in enumerate(items):
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / label / f"{index:05d}.png")
    return folder
