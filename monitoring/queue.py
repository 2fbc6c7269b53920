"""The label queue: which kept production images to label first.

Candidates: the window's images that were kept (``serve.keep``), have no
feedback label yet, and no earlier harvest took. Each gets two scores, both
from what the service logged:

- **unfamiliar**: how unlike the reference its embedding is (the drift
  report's gallery measure, ``monitoring/gallery.py``: 1 = as familiar as a
  typical reference image); the shifted images the next model must learn;
- **uncertain**: 1 - the model's confidence; where its answer is least
  trustworthy.

The priority is the mean of the two scores' ranks (0-1, both counted alike,
whatever their scales). Picks are then spread over the predicted classes: the
classes take turns, each giving its highest-priority image, so no class the
shift sends to one answer crowds out the rest. While a retrain waits for the
labels of some classes, the queue aims at those: each short class takes twice
the labels it lacks (at least 10), picking by priority x the model's probability for it
(the best guess of an unlabelled image's class there is). ``queue.csv`` (rank,
request_id, predicted, why, priority, unfamiliar, uncertain) and
``queue.html`` (the images, largest side 128 px, inlined) are written
together, whole or not at all.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from monitoring.drift import load_reference, read_window
from monitoring.gallery import unfamiliarity
from transferops.config import Params
from transferops.logs.keptfiles import read_kept
from transferops.logs.predictions import read_predictions
from transferops.registry.store import stored_model

QUEUE_CSV, QUEUE_HTML = "queue.csv", "queue.html"
MIN_PICKS = 10  # images a short class gets at least: a guess of its class is often wrong
SHOWN_SIDE = 128  # px of each image on the page


def rank_queue(
    candidates: pd.DataFrame,
    reference_embeddings: np.ndarray,
    n: int | None,
    wanted: dict[str, int] | None = None,
    classes: list[str] | None = None,
) -> pd.DataFrame:
    """The images to label first, in order (pure: the tests and the benchmark call it).

    ``candidates``: request_id, predicted, confidence, embedding (and
    probabilities, in the order of ``classes``, when ``wanted`` is given).
    Without ``wanted``: the ``n`` first (None: all), the predicted classes taking turns.
    With ``wanted`` (class -> labels still missing, as a harvest that waits
    reports them): twice the missing labels of each short class (at least
    ``MIN_PICKS``), the short
    classes taking turns, each picking by priority x the model's probability
    for it (an image can serve one class only).
    """
    if candidates.empty:
        return candidates.assign(rank=[], unfamiliar=[], uncertain=[], priority=[], why=[])
    embeddings = np.stack(candidates["embedding"].to_numpy())
    scored = candidates.reset_index(drop=True).assign(
        unfamiliar=unfamiliarity(embeddings, reference_embeddings),
        uncertain=1.0 - candidates["confidence"].to_numpy(float),
    )
    scored["priority"] = (
        scored["unfamiliar"].rank(pct=True) + scored["uncertain"].rank(pct=True)
    ) / 2
    priority = scored["priority"].to_numpy()
    if wanted:
        probabilities = np.stack(scored["probabilities"].to_numpy())
        short = sorted((c for c in wanted if wanted[c] > 0), key=lambda c: -wanted[c])
        orders = {c: np.argsort(-priority * probabilities[:, classes.index(c)], kind="stable")
                  for c in short}  # fmt: skip
        quotas = {c: max(2 * wanted[c], MIN_PICKS) for c in short}
        n = sum(quotas.values())
    else:
        by_best = scored.assign(p=priority).sort_values("p", ascending=False, kind="stable")
        orders = {c: rows.index.to_numpy() for c, rows in by_best.groupby("predicted", sort=False)}
        quotas = None
    chosen = take_turns(orders, quotas, len(scored) if n is None else n)
    picked = scored.iloc[[row for row, _ in chosen]].reset_index(drop=True)
    picked["rank"] = np.arange(1, len(picked) + 1)
    picked["why"] = [
        f"{u:.1f}x as unfamiliar as a typical reference image; confidence {1 - c:.2f}; "
        + (f"for class {key!r}, still short of labels" if wanted else f"predicted {key!r}")
        for (u, c), (_, key) in zip(picked[["unfamiliar", "uncertain"]].to_numpy(), chosen,
                                    strict=True)
    ]  # fmt: skip
    return picked


def take_turns(
    orders: dict[str, np.ndarray], quotas: dict[str, int] | None, n: int
) -> list[tuple[int, str]]:
    """Round-robin over the keys (in their order): each takes its next row not yet taken,
    until ``n`` rows, every key's quota or every order is spent. Returns (row, key)."""
    taken: set[int] = set()
    chosen: list[tuple[int, str]] = []
    position = dict.fromkeys(orders, 0)
    while len(chosen) < n:
        progressed = False
        for key, order in orders.items():
            if len(chosen) == n or (quotas and sum(k == key for _, k in chosen) >= quotas[key]):
                continue
            while position[key] < len(order) and int(order[position[key]]) in taken:
                position[key] += 1
            if position[key] < len(order):
                row = int(order[position[key]])
                taken.add(row)
                chosen.append((row, key))
                progressed = True
        if not progressed:
            break
    return chosen


def label_queue(
    params: Params,
    out_dir: Path,
    n: int | None,
    since: datetime | None = None,
    exclude: set[str] = frozenset(),
    wanted: dict[str, int] | None = None,
) -> pd.DataFrame:
    """Rank the window's kept, unlabelled images; write ``queue.csv`` and ``queue.html``.

    The window: the serving model's predictions since ``since``, or its latest
    ``monitor.window`` when None. ``exclude``: request ids harvested before.
    ``wanted``: labels still missing per class (:func:`rank_queue`; then ``n`` is unused).
    """
    log_dir = params.paths.prediction_log
    tag, window = read_window(params)
    if since is not None and tag is not None:
        window = read_predictions(log_dir, since=since, model=tag)
    kept = read_kept(log_dir, since=window["time"].min() if len(window) else None, model=tag)
    waiting = kept[kept["label"].isna() & ~kept["request_id"].isin(exclude)]
    candidates = window[window["request_id"].isin(set(waiting["request_id"]))]
    candidates = candidates.rename(columns={"label": "predicted"})
    reference = load_reference(tag).embeddings if tag is not None else np.zeros((0, 1))
    classes = stored_model(tag).info.metadata["classes"] if tag is not None else []
    queue = rank_queue(candidates, reference, n, wanted, classes)
    files = waiting.set_index("request_id")["file"]
    write_queue(queue.assign(file=queue["request_id"].map(files)), Path(out_dir), tag)
    return queue


def write_queue(queue: pd.DataFrame, out_dir: Path, model_tag: str | None) -> Path:
    """``queue.csv`` and ``queue.html`` under ``out_dir``, swapped in whole."""
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    columns = ["rank", "request_id", "predicted", "why", "priority", "unfamiliar", "uncertain"]
    queue[columns].to_csv(staging / QUEUE_CSV, index=False)
    (staging / QUEUE_HTML).write_text(queue_page(queue, model_tag))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in (QUEUE_CSV, QUEUE_HTML):
        os.replace(staging / name, out_dir / name)
    staging.rmdir()
    return out_dir


def queue_page(queue: pd.DataFrame, model_tag: str | None) -> str:
    """One self-contained page: each image to label, its request id and why it is here."""
    cells = []
    for row in queue.itertuples():
        cells.append(
            f'<figure><img alt="{html.escape(row.request_id)}" src="{_inline(row.file)}">'
            f"<figcaption><b>#{row.rank}</b> <code>{html.escape(row.request_id)}</code><br>"
            f"{html.escape(row.why)}</figcaption></figure>"
        )
    return (
        "<!doctype html><meta charset=utf-8><title>label queue</title>"
        "<style>body{font-family:sans-serif}figure{display:inline-block;width:220px;"
        "vertical-align:top;margin:6px}img{max-width:128px;image-rendering:pixelated}"
        "figcaption{font-size:12px}</style>"
        f"<h1>Label these first ({len(queue)} images, model {html.escape(str(model_tag))})</h1>"
        "<p>Send each true label to <code>POST /v1/feedback</code> as "
        '<code>{"request_id": ..., "label": ...}</code>; the next check harvests them '
        "(docs/flywheel.md). Ranked by unfamiliarity and uncertainty, classes taking turns.</p>"
        + "".join(cells)
    )


def _inline(file: str) -> str:
    with Image.open(file) as image:
        shown = image.convert("RGB")
    shown.thumbnail((SHOWN_SIDE, SHOWN_SIDE))
    out = io.BytesIO()
    shown.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
