"""The drift report's gallery: the window's least familiar images beside typical reference ones.

A reviewer should see a blurred camera or a new product line at a glance.
Each window image is scored by how unlike the reference it is: the mean
distance from its embedding to its ``NEIGHBOURS`` nearest reference
embeddings (the raw embeddings the classifier test uses), as a multiple of
the same distance among reference images themselves (1 = as familiar as a
typical reference image). The most unfamiliar images that have a logged
thumbnail (``serve.log_thumbnails``) are shown, each beside the reference's
typical images of the class the model gave it (``evaluation.typical_rows``).
When the bias check alarms, each alarmed group gets a gallery of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from monitoring.shift import sq_dists
from transferops.figures import new_figure, save_figure

NEIGHBOURS = 5  # reference images an image's familiarity is measured against
SHOWN_TYPICAL = 3  # typical reference images beside each odd one
CANDIDATES = 4  # times the gallery size: the odd images whose thumbnails are looked up


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(sq_dists(np.asarray(a, np.float64), np.asarray(b, np.float64)))


def unfamiliarity(window: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per window row: mean distance to its nearest reference rows, in units of the
    reference's own (leave-one-out) median of that distance."""
    k = max(1, min(NEIGHBOURS, len(reference) - 1))
    own = np.sort(_distances(reference, reference), axis=1)[:, 1 : k + 1].mean(1)
    scale = max(float(np.median(own)), 1e-12)
    return np.sort(_distances(window, reference), axis=1)[:, :k].mean(1) / scale


@dataclass
class Gallery:
    """One gallery of a report: its title, the images shown, and what they are shown beside."""

    title: str
    entries: list[dict] = field(default_factory=list)  # request_id, predicted, group, score
    pictures: list[np.ndarray] = field(default_factory=list)  # the entries' thumbnails
    typical: dict[str, list[np.ndarray]] = field(default_factory=dict)  # class -> thumbnails

    def to_dict(self) -> dict:
        return {"title": self.title, "images": self.entries}


def build(
    title: str,
    scores: np.ndarray,
    request_ids: np.ndarray,
    predicted: np.ndarray,
    groups: np.ndarray,
    thumbnails_of,
    typical: dict[str, list[np.ndarray]],
    count: int,
) -> Gallery | None:
    """The ``count`` least familiar rows that have a thumbnail (None: none has one).

    ``thumbnails_of(request_ids) -> {request_id: png array}`` looks the
    thumbnails up; only the ``CANDIDATES * count`` least familiar are asked for.
    A row scored ``-inf`` is not a candidate (a group's gallery leaves the rest out).
    """
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    order = order[np.isfinite(scores[order])][: CANDIDATES * count]
    found = thumbnails_of([str(request_ids[i]) for i in order])
    shown = [i for i in order if str(request_ids[i]) in found][:count]
    if not shown:
        return None
    gallery = Gallery(title)
    for i in shown:
        gallery.entries.append(
            {
                "request_id": str(request_ids[i]),
                "predicted": str(predicted[i]),
                "group": str(groups[i]),
                "unfamiliarity": float(scores[i]),
            }
        )
        gallery.pictures.append(found[str(request_ids[i])])
    gallery.typical = {
        e["predicted"]: typical.get(e["predicted"], [])[:SHOWN_TYPICAL] for e in gallery.entries
    }
    return gallery


FRAME = 3  # px around every image: red around the window's, white around the reference's
GAP = 8  # px between images; three times that between the window's and the reference's


def _framed(picture: np.ndarray, side: int, colour: tuple[int, int, int]) -> np.ndarray:
    """``picture`` centred on a white ``side`` x ``side`` square, in a ``FRAME`` of ``colour``."""
    rgb = np.asarray(Image.fromarray(np.asarray(picture, np.uint8)).convert("RGB"))
    cell = np.full((side + 2 * FRAME, side + 2 * FRAME, 3), 255, np.uint8)
    cell[:FRAME], cell[-FRAME:], cell[:, :FRAME], cell[:, -FRAME:] = colour, colour, colour, colour
    h, w = min(rgb.shape[0], side), min(rgb.shape[1], side)
    top, left = FRAME + (side - h) // 2, FRAME + (side - w) // 2
    cell[top : top + h, left : left + w] = rgb[:h, :w]
    return cell


def plot(gallery: Gallery, path: Path) -> Path:
    """One row per odd image: the image, then typical reference images of its predicted class.

    Drawn as one picture on one axis: an axis per image (32 of them in a full
    gallery) took about a second to lay out and save.
    """
    rows = [[picture, *gallery.typical.get(e["predicted"], [])[:SHOWN_TYPICAL]]
            for e, picture in zip(gallery.entries, gallery.pictures, strict=True)]  # fmt: skip
    side = max(np.asarray(p).shape[0] for row in rows for p in row)
    cell = side + 2 * FRAME
    lefts = [0] + [cell + 3 * GAP + c * (cell + GAP) for c in range(SHOWN_TYPICAL)]
    canvas = np.full((len(rows) * (cell + GAP) - GAP, lefts[-1] + cell, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        top = r * (cell + GAP)
        for c, picture in enumerate(row):
            colour = (176, 0, 32) if c == 0 else (255, 255, 255)
            canvas[top : top + cell, lefts[c] : lefts[c] + cell] = _framed(picture, side, colour)
    scale = 1.75 / (cell + GAP)  # inches per pixel: a row as tall as before
    fig, axis = new_figure(figsize=(canvas.shape[1] * scale + 1.6, canvas.shape[0] * scale + 0.9))
    axis.imshow(canvas, interpolation="nearest")
    axis.set_axis_off()
    for r, entry in enumerate(gallery.entries):
        label = f"'{entry['predicted']}'\n{entry['unfamiliarity']:.1f}x"
        if entry["group"]:
            label += f"\n{entry['group']}"
        middle = r * (cell + GAP) + cell / 2
        axis.text(-GAP, middle, label, ha="right", va="center", fontsize=8)
    axis.text(cell / 2, -GAP, "this window", ha="center", va="bottom", fontsize=9)
    axis.text(lefts[1], -GAP, "reference: typical of the predicted class", va="bottom", fontsize=9)
    axis.set_title(gallery.title, fontsize=10, pad=GAP * scale * 72 + 16)  # over the column titles
    save_figure(fig, path)
    return path
