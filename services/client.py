"""A small client of the service: send labelled images, count the right answers.

The demo, the tests and the load benchmarks call the service through it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from PIL import Image


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
