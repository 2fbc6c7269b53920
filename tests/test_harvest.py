"""`transferops data harvest`: kept images with late labels become a checked DVC drop."""

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.data import pending_harvest
from flows.workspace import create_workspace
from tests.commands import transferops
from tests.conftest import ROOT, TINY, packaged_tag, write_params
from tests.test_predlog import record
from transferops.config import load_params
from transferops.data.harvest import HarvestRefused, TooFewLabels, plan_harvest
from transferops.logs.kept import ImageKeeper
from transferops.logs.keptfiles import read_kept
from transferops.logs.predictions import PredictionLog
from transferops.logs.runs import write_record
from transferops.registry import champion
from transferops.registry.store import stored_model

pytestmark = pytest.mark.integration
PER_CLASS = 6


def picture(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (28, 28), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def served(tmp_path: Path, trained_project: Path, monkeypatch: pytest.MonkeyPatch):
    """A git + DVC project whose champion served and kept PER_CLASS images of each class."""
    repo = create_workspace(ROOT, tmp_path / "project")
    params_file = write_params(
        repo / "params.yaml", TINY | {"validate.min_per_class": 1}, base=repo / "params.yaml"
    )
    monkeypatch.chdir(repo)
    params = load_params(params_file)
    tag = packaged_tag(trained_project)
    champion.promote(params.paths.models, tag, reason="harvest tests", via="test")
    classes = stored_model(tag).info.metadata["classes"]
    log = PredictionLog(params.paths.prediction_log)
    keeper = ImageKeeper(log, params.serve, seed=0)
    truth = {}
    for i in range(PER_CLASS * len(classes)):
        log.append([record(i)])
        keeper.offer(f"r{i}", picture(i), 64)
        truth[f"r{i}"] = classes[i % len(classes)]
    keeper.flush()
    yield params, log, truth
    keeper.close(), log.close()


def untouched(params) -> tuple:
    """What a refused harvest must leave as it was: the drops and the registry."""
    registry = Path(params.paths.registry)
    incoming = Path(params.paths.incoming)
    return (
        registry.read_text() if registry.exists() else None,
        sorted(p.name for p in incoming.iterdir()) if incoming.exists() else [],
    )


def test_too_few_labels_exits_1_naming_each_short_class_and_writes_nothing(served) -> None:
    params, log, truth = served
    for request_id, label in list(truth.items())[:-1]:  # the last class is one label short
        log.append_feedback(request_id, label)
    before = untouched(params)
    result = transferops("data", "harvest", "--min-per-class", str(PER_CLASS))
    assert result.returncode == 1, result
    short = list(truth.values())[-1]
    assert f"{short!r} {PER_CLASS - 1}/{PER_CLASS}" in result.stderr, result.stderr
    assert untouched(params) == before, "a refused harvest wrote something"


def test_a_label_outside_the_classes_exits_1_naming_it_and_writes_nothing(served) -> None:
    params, log, truth = served
    for request_id, label in truth.items():
        log.append_feedback(request_id, label)
    log.append([record(999)])  # labelled under an older champion with other classes
    with log.transaction() as db:
        db.execute("UPDATE predictions SET image = (SELECT image FROM predictions "
                   "WHERE request_id = 'r0') WHERE request_id = 'r999'")  # fmt: skip
    log.append_feedback("r999", "spaceship")
    before = untouched(params)
    result = transferops("data", "harvest", "--min-per-class", "3")
    assert result.returncode == 1 and "'spaceship'" in result.stderr and "r999" in result.stderr
    assert untouched(params) == before, "a refused harvest wrote something"


def test_a_harvest_is_a_checked_dvc_drop_with_provenance_never_taken_twice_and_pending(
    served,
) -> None:
    params, log, truth = served
    for request_id, label in truth.items():
        log.append_feedback(request_id, label)
    result = transferops("data", "harvest", "--name", "h1", "--min-per-class", str(PER_CLASS))
    assert result.returncode == 0, result.stderr
    record_ = json.loads(result.stdout)
    assert record_["status"] == "passed" and record_["version"].endswith(".dir")
    drop = Path(params.paths.incoming) / "h1"
    manifest = pd.read_csv(drop / "manifest.csv")
    assert len(manifest) == len(truth) and set(manifest["split"]) == {"train", "val", "test"}
    by_file = {
        Path(p).name: label for p, label in zip(manifest["path"], manifest["label"], strict=True)
    }
    kept = read_kept(params.paths.prediction_log).set_index("request_id")
    for request_id, label in truth.items():  # each image carries its own request's label
        assert by_file[Path(kept.loc[request_id, "file"]).name] == label
    provenance = json.loads((drop / "provenance.json").read_text())
    assert sorted(provenance["request_ids"]) == sorted(truth)
    assert provenance["models"] == ["m:1"] and provenance["champion"]
    assert record_["provenance"]["images"] == len(truth)
    assert (drop.parent / "h1.dvc").is_file(), "not tracked by DVC"
    again = transferops("data", "harvest", "--name", "h2", "--min-per-class", "3")
    assert again.returncode == 1 and "0/3" in again.stderr, "the same labels harvested twice"
    # Pending until a training run completes after it: a drift check then trains on h1
    # instead of waiting for labels it holds already (a failed retrain, a hand harvest).
    assert pending_harvest(params).name == "h1"
    later = datetime.fromisoformat(provenance["until"]) + timedelta(seconds=1)
    assert pending_harvest(params, since=later) is None, "not the traffic since the drift"
    for status in ("failed", "completed"):
        started = datetime.now(UTC).isoformat(timespec="seconds")
        run = {"flow": "training", "run": {"name": status}, "started_at": started}
        write_record(Path(params.paths.reports), run | {"status": status})
        assert (pending_harvest(params) is None) == (status == "completed"), status


def test_the_plan_leaves_out_known_content_and_conflicting_copies() -> None:
    kept = pd.DataFrame(
        {
            "request_id": ["a", "b", "c", "d", "e", "f"],
            "file": ["/k/1.png", "/k/1.png", "/k/2.png", "/k/2.png", "/k/3.png", "/k/4.png"],
            "label": ["cat", "cat", "cat", "dog", "dog", "dog"],
            "group": None,
            "time": pd.Timestamp.now(tz="UTC"),
            "model_tag": "m:1",
        }
    )
    kept = pd.concat([kept] + [  # enough of each class to split
        kept.iloc[[0]].assign(request_id=f"x{i}", file=f"/k/x{i}.png", label=label)
        for i, label in enumerate(["cat", "cat", "dog", "dog"])
    ], ignore_index=True)  # fmt: skip
    plan = plan_harvest(kept, ["cat", "dog"], min_per_class=3, known_sha256={"3"})
    assert list(plan.rows["request_id"]) == ["a", "f", "x0", "x1", "x2", "x3"], plan.rows
    assert plan.rows.groupby("label")["split"].apply(sorted).to_dict() == {
        "cat": ["test", "train", "val"],
        "dog": ["test", "train", "val"],
    }
    assert plan.left_out == {
        "already in the dataset (same sha256)": ["e"],
        "one image, two labels": ["c", "d"],
        "the same image again": ["b"],
    }
    with pytest.raises(TooFewLabels) as short:
        plan_harvest(kept, ["cat", "dog"], min_per_class=4)
    assert short.value.short == {"cat": (3, 4)}  # "e" counts for dog here: 4
    with pytest.raises(HarvestRefused, match="'bird'"):
        plan_harvest(kept.assign(label="bird"), ["cat", "dog"], min_per_class=3)


def test_a_retrain_request_cannot_name_a_drop_that_did_not_pass(tmp_path: Path) -> None:
    from dataclasses import asdict

    from flows.data import DatasetVersion
    from flows.training import check_harvest
    from tests.conftest import absolute_paths
    from transferops.data.datasets import DataSourceError
    from transferops.logs.jsonl import append_jsonl

    params = load_params(write_params(tmp_path / "params.yaml", absolute_paths(tmp_path)))
    (params.paths.incoming / "failed").mkdir(parents=True)
    (params.paths.incoming / "passed").mkdir()
    for name, status in (("failed", "failed"), ("passed", "passed")):
        row = DatasetVersion(name, status, None, 1, 1, 0, 0, 0, "r", "s", "t")
        append_jsonl(params.paths.registry, asdict(row))
    for hostile, named in (("../../etc", "harvest"), ("failed", "passed its checks"),
                           ("absent", "passed its checks")):  # fmt: skip
        with pytest.raises(DataSourceError, match=named):
            check_harvest.fn(params, hostile)
    assert check_harvest.fn(params, "passed")["name"] == "passed"
