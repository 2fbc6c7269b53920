"""The label queue: the typical images of each group first; while waiting, the short classes."""

import numpy as np
import pandas as pd

from monitoring.queue import QUEUE_CSV, QUEUE_HTML, rank_queue, write_queue
from tests.test_kept import png


def candidates() -> tuple[pd.DataFrame, np.ndarray]:
    """Three groups of traffic (40, 25 and 15 images) around three centres, plus the
    reference; in each group one image sits right on its centre."""
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (200, 8))
    centres = [np.full(8, 6.0), np.full(8, -6.0), np.r_[np.full(4, 6.0), np.full(4, -6.0)]]
    rows = []
    for g, (centre, size) in enumerate(zip(centres, (40, 25, 15), strict=True)):
        for i in range(size):
            offset = np.zeros(8) if i == 0 else rng.normal(0, 1, 8)
            rows.append(
                {
                    "request_id": f"g{g}-{i}",
                    "predicted": ["coat", "bag", "coat"][g],
                    "confidence": 0.5,
                    "embedding": centre + offset,
                }
            )
    return pd.DataFrame(rows), reference


def test_each_pick_is_the_most_typical_of_a_group_the_largest_groups_first() -> None:
    frame, reference = candidates()
    queue = rank_queue(frame, reference, n=3)
    assert list(queue["rank"]) == [1, 2, 3]
    assert list(queue["request_id"]) == ["g0-0", "g1-0", "g2-0"], "centres, by group size"
    assert queue.loc[0, "why"].startswith("the most typical of 40 similar images")
    assert queue.loc[0, "unfamiliar"] > 2, "the traffic is far from the reference"
    assert rank_queue(frame, reference, n=None)["request_id"].is_unique, "each image once"
    assert len(rank_queue(frame, reference, n=500)) == len(frame)
    assert rank_queue(frame.iloc[:0], reference, n=5).empty


def test_the_queue_is_a_csv_and_a_page_of_the_images(tmp_path) -> None:
    frame, reference = candidates()
    image = tmp_path / "kept.png"
    image.write_bytes(png(40))
    queue = rank_queue(frame, reference, n=3).assign(file=str(image))
    out = write_queue(queue, tmp_path / "queue", "m:1")
    written = pd.read_csv(out / QUEUE_CSV)
    assert list(written["request_id"]) == list(queue["request_id"])
    page = (out / QUEUE_HTML).read_text()
    assert page.count("<img") == 3 and "data:image/png;base64," in page
    for request_id in queue["request_id"]:
        assert f"<code>{request_id}</code>" in page, f"{request_id} not shown with its image"


def test_while_waiting_the_queue_aims_at_the_classes_still_short() -> None:
    frame, reference = candidates()
    # The model's probabilities over (coat, bag): group 1 looks like bags.
    bag = np.where(frame["request_id"].str.startswith("g1"), 0.9, 0.1)
    frame["probabilities"] = [np.array([1 - p, p]) for p in bag]
    queue = rank_queue(frame, reference, n=None, wanted={"bag": 2, "coat": 0},
                       classes=["coat", "bag"])  # fmt: skip
    assert len(queue) == 10, "bag lacks 2: at least MIN_PICKS; coat lacks none"
    assert {w.split("'")[1] for w in queue["why"]} == {"bag"}
    assert queue["request_id"].str.startswith("g1").all(), "the likely bags"
    both = rank_queue(frame, reference, n=None, wanted={"bag": 1, "coat": 6},
                      classes=["coat", "bag"])  # fmt: skip
    assert len(both) == 22 and both["request_id"].is_unique, "12 for coat, 10 for bag"
    assert [w.split("'")[1] for w in both["why"]][:4] == ["coat", "bag", "coat", "bag"]
