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

from monitoring.shift import sq_dists
from transferops.figures import plt, save_figure

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


def plot(gallery: Gallery, path: Path) -> Path:
    """One row per odd image: the image, then typical reference images of its predicted class."""
    rows, columns = len(gallery.entries), 1 + SHOWN_TYPICAL
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.9 * columns + 1.6, 1.75 * rows + 0.6), squeeze=False
    )
    for r, (entry, picture) in enumerate(zip(gallery.entries, gallery.pictures, strict=True)):
        label = f"'{entry['predicted']}'\n{entry['unfamiliarity']:.1f}x"
        if entry["group"]:
            label += f"\n{entry['group']}"
        cells = [picture, *gallery.typical.get(entry["predicted"], [])]
        for c in range(columns):
            axis = axes[r, c]
            axis.set_xticks([])
            axis.set_yticks([])
            if c < len(cells):
                axis.imshow(cells[c])
            else:
                axis.set_axis_off()
            if c == 0:
                axis.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
                for spine in axis.spines.values():
                    spine.set_color("#b00020")
                    spine.set_linewidth(2)
        if r == 0:
            axes[0, 0].set_title("this window", fontsize=9)
            axes[0, 1].set_title(
                "reference: typical of the predicted class", fontsize=9, loc="left"
            )
    fig.suptitle(gallery.title, fontsize=10)
    save_figure(fig, path)
    return path
