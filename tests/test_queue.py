"""The label queue's ranking: unfamiliar and uncertain first, the predicted classes in turn."""

import numpy as np
import pandas as pd

from monitoring.queue import QUEUE_CSV, QUEUE_HTML, rank_queue, write_queue
from tests.test_kept import png


def candidates() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (200, 8))
    far = [0.0, 0.5, 1.0, 4.0, 8.0, 0.2, 6.0, 3.0]  # how far each image sits from the reference
    frame = pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(8)],
            "predicted": ["coat"] * 5 + ["bag"] * 3,
            "confidence": [0.99, 0.9, 0.5, 0.4, 0.3, 0.95, 0.2, 0.6],
            "embedding": [rng.normal(0, 1, 8) + d for d in far],
        }
    )
    return frame, reference


def test_the_least_familiar_and_least_sure_come_first_classes_taking_turns() -> None:
    frame, reference = candidates()
    queue = rank_queue(frame, reference, n=6)
    assert list(queue["rank"]) == [1, 2, 3, 4, 5, 6]
    assert list(queue["predicted"]) == ["coat", "bag"] * 3, "classes take turns"
    coats = queue[queue["predicted"] == "coat"]["request_id"].tolist()
    assert coats == ["r4", "r3", "r2"], "far and unsure before near and sure"
    assert queue.loc[0, "unfamiliar"] > 2 and "unfamiliar" in queue.loc[0, "why"]
    assert rank_queue(frame, reference, n=20)["request_id"].nunique() == 8, "each image once"
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
    assert page.count("<img") == 3 and "data:image/png;base64," in page and "r4" in page


def test_while_waiting_the_queue_aims_at_the_classes_still_short() -> None:
    frame, reference = candidates()
    # The model's probabilities over (coat, bag): r1 and r5 look most like bags.
    bag = [0.1, 0.9, 0.2, 0.3, 0.1, 0.8, 0.4, 0.2]
    frame["probabilities"] = [np.array([1 - p, p]) for p in bag]
    queue = rank_queue(
        frame, reference, n=99, wanted={"bag": 2, "coat": 0}, classes=["coat", "bag"]
    )
    assert len(queue) == 8, "bag lacks 2: at least MIN_PICKS (all 8 here); coat lacks none"
    assert {w.split("'")[1] for w in queue["why"]} == {"bag"}
    assert "for class 'bag'" in queue.loc[0, "why"]
    assert set(queue["request_id"][:2]) == {"r1", "r6"}, "likely bags, weighted by priority"
    both = rank_queue(frame, reference, n=99, wanted={"bag": 1, "coat": 2}, classes=["coat", "bag"])
    assert len(both) == 8 and both["request_id"].is_unique, "at least MIN_PICKS each: all 8"
    assert [w.split("'")[1] for w in both["why"]] == ["coat", "bag"] * 4, "short classes alternate"
