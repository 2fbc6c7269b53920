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


def label(url: str, request_ids: list[str], truth: dict[str, str]) -> int:
    """Send the true labels of these requests to ``/v1/feedback``, as annotators would;
    returns how many were recorded."""
    import httpx

    recorded = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for request_id in request_ids:
            back = {"request_id": request_id, "label": truth[request_id]}
            response = client.post("/v1/feedback", json=back)
            response.raise_for_status()
            recorded += response.json()["recorded"]
    return recorded


def send(
    url: str,
    items: list[tuple[Image.Image, str]],
    batch_size: int = 16,
    groups: tuple[str, ...] = (),
    feedback_every: int = 0,
    truth: dict[str, str] | None = None,
) -> float:
    """POST the images to ``/v1/classify``; return the accuracy of the answers.

    ``groups``: given, image i is sent as ``groups[i % len(groups)]`` (a store, a
    camera). ``feedback_every``: every such image's true label is sent back to
    ``/v1/feedback`` afterwards, as a labelling team would (0: none). ``truth``:
    filled with each answer's request id -> true label, what annotators will
    know when they label later (:func:`label`).
    """
    import httpx

    correct, sent = 0, 0
    with httpx.Client(base_url=url, timeout=60) as client:
        for chunk in batches(items, batch_size):
            files = [
                ("images", (f"{i}.png", png_bytes(image), "image/png"))
                for i, (image, _) in enumerate(chunk)
            ]
            names = [groups[(sent + i) % len(groups)] for i in range(len(chunk))] if groups else []
            form = {"group": names} if names else {}
            response = client.post("/v1/classify", files=files, data=form)
            response.raise_for_status()
            answers = response.json()
            for i, (answer, (_, true_label)) in enumerate(zip(answers, chunk, strict=True)):
                correct += answer["label"] == true_label
                if truth is not None:
                    truth[answer["request_id"]] = true_label
                if feedback_every and (sent + i) % feedback_every == 0:
                    back = {"request_id": answer["request_id"], "label": true_label}
                    client.post("/v1/feedback", json=back).raise_for_status()
            sent += len(chunk)
    return correct / max(len(items), 1)
