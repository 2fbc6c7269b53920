"""The drift report's gallery: which images it picks, and what it shows them beside."""

import numpy as np

from monitoring import gallery


def test_unfamiliarity_is_one_for_reference_like_images_and_grows_with_distance() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, (400, 16))
    like = rng.normal(0, 1, (50, 16))
    far = rng.normal(0, 1, (50, 16)) + 3.0
    near, away = gallery.unfamiliarity(like, reference), gallery.unfamiliarity(far, reference)
    assert 0.8 < np.median(near) < 1.3
    assert np.min(away) > np.max(near)


def test_the_least_familiar_images_with_a_thumbnail_are_shown_in_order() -> None:
    scores = np.array([0.9, 5.0, 3.0, 4.0, 1.0])
    ids = np.array(["a", "b", "c", "d", "e"])
    picture = np.zeros((4, 4, 3), np.uint8)
    asked: list[list[str]] = []

    def thumbnails(request_ids: list[str]) -> dict:
        asked.append(request_ids)
        return {i: picture for i in request_ids if i != "b"}  # "b" kept no thumbnail

    typical = {"bag": [picture] * 5}
    made = gallery.build(
        "t", scores, ids, np.array(["bag"] * 5), np.array([""] * 5), thumbnails, typical, 2
    )
    assert [e["request_id"] for e in made.entries] == ["d", "c"]
    assert asked == [["b", "d", "c", "e", "a"]], "the least familiar first, CANDIDATES x 2"
    assert len(made.typical["bag"]) == gallery.SHOWN_TYPICAL
    assert gallery.build("t", scores, ids, ids, ids, lambda _: {}, typical, 2) is None
    outside = np.array([-np.inf, 5.0, -np.inf, -np.inf, 1.0])  # a group's gallery: b and e
    only = gallery.build("g", outside, ids, ids, ids, thumbnails, typical, 2)
    assert [e["request_id"] for e in only.entries] == ["e"], "b has no thumbnail; a, c, d left out"


def test_a_gallery_is_drawn_with_and_without_typical_images(tmp_path) -> None:
    picture = np.full((64, 64, 3), 128, np.uint8)
    made = gallery.Gallery(
        "window",
        entries=[
            {"request_id": "a", "predicted": "bag", "group": "south", "unfamiliarity": 3.2},
            {"request_id": "b", "predicted": "new", "group": "", "unfamiliarity": 2.1},
        ],
        pictures=[picture, picture],
        typical={"bag": [picture] * 3, "new": []},  # a class the reference has no image of
    )
    path = gallery.plot(made, tmp_path / "g.png")
    assert path.stat().st_size > 3_000
