"""The served model and champion following, without BentoML: pinned, switched, kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.following import ChampionFollower, served_tag
from tests.models import always_answering
from transferops.registry import champion


@pytest.fixture
def packaged(trained_project: Path) -> str:
    paths = yaml.safe_load(trained_project.read_text())["paths"]
    return json.loads((Path(paths["package"]) / "bento_model.json").read_text())["tag"]


def test_no_champion_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TRANSFEROPS_MODEL_TAG", raising=False)
    with pytest.raises(RuntimeError, match=r"no champion in .*champion\.json"):
        served_tag(tmp_path)


def test_a_pin_wins_over_the_champion(packaged: str, tmp_path: Path, monkeypatch) -> None:
    champion.promote(tmp_path, packaged, reason="test", via="test")
    monkeypatch.setenv("TRANSFEROPS_MODEL_TAG", "some-model:pinned")
    assert served_tag(tmp_path) == "some-model:pinned"


def test_the_follower_switches_to_a_new_champion_and_keeps_serving_on_a_bad_one(
    packaged: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("TRANSFEROPS_MODEL_TAG", raising=False)
    champion.promote(tmp_path, packaged, reason="first", via="test")
    follower = ChampionFollower(tmp_path, top_k=3, poll_s=60)
    assert follower.loaded.tag == packaged and follower.check() is False, "no change yet"
    image = np.full((32, 32, 3), 128, np.uint8)
    classes = follower.loaded.config.classes
    bag = always_answering(packaged, classes[-1])
    champion.promote(tmp_path, bag, reason="second", via="test")
    assert follower.check() is True and follower.loaded.tag == bag
    assert follower.loaded.predict([image])[0]["top_k"][0]["label"] == classes[-1]
    champion.promote(tmp_path, "transferops-classifier:notinthestore", reason="bad", via="test")
    assert follower.check() is False, "a champion that does not load is not switched to"
    assert follower.loaded.tag == bag, "the old model keeps serving"


def test_a_champion_that_failed_to_load_is_tried_again_with_backoff(
    packaged: str, tmp_path: Path, monkeypatch
) -> None:
    """A load that fails once (the store briefly unreadable) is retried without a new
    promotion: after the poll period, then twice as long, at most MAX_RETRY_S."""
    import services.following as following

    monkeypatch.delenv("TRANSFEROPS_MODEL_TAG", raising=False)
    champion.promote(tmp_path, packaged, reason="first", via="test")
    follower = ChampionFollower(tmp_path, top_k=3, poll_s=2)
    bag = always_answering(packaged, follower.loaded.config.classes[-1])
    champion.promote(tmp_path, bag, reason="second", via="test")
    real, now = following.Loaded, [1000.0]
    monkeypatch.setattr(following.time, "monotonic", lambda: now[0])

    def unreadable(*args, **kwargs):
        raise OSError("the model store is being restored")

    monkeypatch.setattr(following, "Loaded", unreadable)
    assert follower.check() is False and follower.failures == 1
    now[0] += 1.9
    assert follower.check() is False and follower.failures == 1, "not before the poll period"
    now[0] += 0.2
    assert follower.check() is False and follower.failures == 2, "tried again: still failing"
    now[0] += 3.9
    assert follower.check() is False and follower.failures == 2, "backoff doubled to 4 s"
    monkeypatch.setattr(following, "Loaded", real)  # the store is back
    now[0] += 0.2
    assert follower.check() is True and follower.loaded.tag == bag and follower.failures == 0
