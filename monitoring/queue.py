"""The label queue: which kept production images to label first.

Candidates: the window's images that were kept (``serve.keep``), have no
feedback label yet, and no earlier harvest took. With a small labelling
budget the images worth labelling are the **typical** ones of the new
traffic, not its outliers (the cold-start lesson of low-budget active
learning; TypiClust, Hacohen et al., ICML 2022): the candidates' embeddings
(PCA to 32 dimensions) are clustered with k-means into as many groups as
images are asked for, and each group gives its most typical member (the
highest density: the smallest mean distance to its 20 nearest candidates),
the largest groups first. Measured against random picks in docs/benchmarks.md
(``benchmarks/queue_vs_random.py``): the first rule, most unfamiliar and most
uncertain first, lost to random by 12-33 points under blur.

While a retrain waits for the labels of some classes, the queue aims at
those: each short class takes twice the labels it lacks (at least 10),
picking by typicality x the model's probability for it (the best guess of an
unlabelled image's class there is), the short classes taking turns.

Each pick also says how unfamiliar it is to the reference (the drift
gallery's measure, ``monitoring/gallery.py``) and how sure the model was.
``queue.csv`` (rank, request_id, predicted, why, priority, unfamiliar,
uncertain) and ``queue.html`` (the images, largest side 128 px, inlined) are
written together, whole or not at all.
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
PCA_DIMS = 32  # embedding dimensions the groups and typicality are measured in
NEIGHBOURS = 20  # nearest candidates an image's typicality is measured against (TypiClust)
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
    Without ``wanted``: ``n`` picks (None: one per candidate), each the most
    typical image of one k-means group, the largest groups first. With
    ``wanted`` (class -> labels still missing, as a harvest that waits
    reports them): twice the missing labels of each short class (at least
    ``MIN_PICKS``), the short classes taking turns, each picking by
    typicality x the model's probability for it (an image serves one class).
    """
    if candidates.empty:
        return candidates.assign(rank=[], unfamiliar=[], uncertain=[], priority=[], why=[])
    embeddings = np.stack(candidates["embedding"].to_numpy()).astype(np.float64)
    scored = candidates.reset_index(drop=True).assign(
        unfamiliar=unfamiliarity(embeddings, reference_embeddings),
        uncertain=1.0 - candidates["confidence"].to_numpy(float),
    )
    points = project(embeddings)
    scored["priority"] = pd.Series(typicality(points)).rank(pct=True).to_numpy()
    if wanted:
        probabilities = np.stack(scored["probabilities"].to_numpy())
        short = sorted((c for c in wanted if wanted[c] > 0), key=lambda c: -wanted[c])
        weight = scored["priority"].to_numpy()[:, None] * probabilities
        orders = {c: np.argsort(-weight[:, classes.index(c)], kind="stable") for c in short}
        chosen = take_turns(orders, {c: max(2 * wanted[c], MIN_PICKS) for c in short})
        rows = [row for row, _ in chosen]
        reasons = [f"for class {key!r}, still short of labels" for _, key in chosen]
    else:
        groups = typical_of_groups(points, scored["priority"].to_numpy(), n or len(scored))
        rows = [row for row, _ in groups]
        reasons = [f"the most typical of {size} similar images" for _, size in groups]
    picked = scored.iloc[rows].reset_index(drop=True)
    picked["rank"] = np.arange(1, len(picked) + 1)
    picked["why"] = [
        f"{why}; {u:.1f}x as unfamiliar as a typical reference image; confidence {1 - c:.2f}"
        for why, (u, c) in zip(reasons, picked[["unfamiliar", "uncertain"]].to_numpy(),
                               strict=True)
    ]  # fmt: skip
    return picked


def project(embeddings: np.ndarray, dims: int = PCA_DIMS) -> np.ndarray:
    """The embeddings in their first ``dims`` principal components (all when fewer)."""
    from sklearn.decomposition import PCA

    dims = min(dims, len(embeddings), embeddings.shape[1])
    if dims < 2:
        return embeddings
    return PCA(n_components=dims, random_state=0).fit_transform(embeddings)


def typicality(points: np.ndarray) -> np.ndarray:
    """Per point: 1 / the mean distance to its ``NEIGHBOURS`` nearest others (TypiClust)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(NEIGHBOURS, len(points) - 1)
    if k < 1:
        return np.ones(len(points))
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points)
    return 1.0 / (distances[:, 1:].mean(1) + 1e-12)


def typical_of_groups(points: np.ndarray, typical: np.ndarray, n: int) -> list[tuple[int, int]]:
    """``n`` k-means groups of the points, largest first: (its most typical row, its size)."""
    from sklearn.cluster import KMeans

    n = min(n, len(points))
    groups = KMeans(n_clusters=n, n_init=1, random_state=0).fit_predict(points)
    picks = []
    for group in range(n):
        rows = np.flatnonzero(groups == group)
        if len(rows):
            picks.append((int(rows[np.argmax(typical[rows])]), len(rows)))
    return sorted(picks, key=lambda pick: -pick[1])


def take_turns(orders: dict[str, np.ndarray], quotas: dict[str, int]) -> list[tuple[int, str]]:
    """Round-robin over the keys (in their order): each takes its next row not yet taken,
    until its quota or its order is spent. Returns (row, key), in the order taken."""
    taken: set[int] = set()
    chosen: list[tuple[int, str]] = []
    position, count = dict.fromkeys(orders, 0), dict.fromkeys(orders, 0)
    progressed = True
    while progressed:
        progressed = False
        for key, order in orders.items():
            if count[key] >= quotas[key]:
                continue
            while position[key] < len(order) and int(order[position[key]]) in taken:
                position[key] += 1
            if position[key] < len(order):
                row = int(order[position[key]])
                taken.add(row)
                chosen.append((row, key))
                count[key] += 1
                progressed = True
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
