"""Dataset versions with real DVC: add (check first), list, splits from manifests."""

import json
from pathlib import Path

import pandas as pd
import pytest

from flows.data import add_dataset, list_versions
from flows.workspace import create_workspace
from pipelines.prepare import prepare
from tests.commands import transferops
from tests.conftest import ROOT, TINY, write_params
from tests.imagefiles import clean_folder, png
from transferops.config import load_params
from transferops.data.datasets import DataSourceError
from transferops.data.preparation import assign_splits
from transferops.names import name_problem

pytestmark = pytest.mark.integration


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = create_workspace(ROOT, tmp_path / "project")
    write_params(
        repo / "params.yaml", TINY | {"validate.min_per_class": 1}, base=repo / "params.yaml"
    )
    monkeypatch.chdir(repo)
    return repo


def test_add_snapshots_a_clean_dataset_and_refuses_a_bad_one(
    workspace: Path, tmp_path: Path
) -> None:
    params = load_params(workspace / "params.yaml")
    good = add_dataset(clean_folder(tmp_path / "labelled"), params)
    assert good.status == "passed" and good.version.endswith(".dir")
    assert good.images == 12 and good.classes == 3
    assert (workspace / "data/incoming/labelled.dvc").is_file()
    assert any((workspace / ".dvcstore").rglob("*")), "pushed to the DVC remote"

    bad_source = clean_folder(tmp_path / "messy")
    (bad_source / "cat" / "broken.png").write_bytes(b"")
    bad = add_dataset(bad_source, params)
    assert bad.status == "failed" and bad.version is None
    assert not (workspace / "data/incoming/messy").exists(), "failed data never trains"
    assert "empty file" in Path(bad.report).read_text()

    versions = list_versions(params.paths.registry)
    assert [(v.name, v.status) for v in versions] == [("labelled", "passed"), ("messy", "failed")]
    listed = transferops("data", "list", cwd=workspace)
    assert "labelled" in listed.stdout and "failed" in listed.stdout


def test_given_splits_are_kept_and_missing_ones_stratified_by_group() -> None:
    rows = pd.DataFrame(
        {
            "label": ["a", "b"] * 40,
            "group": ["x"] * 40 + ["y"] * 40,
            "split": ["test"] * 4 + [None] * 76,
        }
    )
    splits = assign_splits(rows, (0.5, 0.25, 0.25), seed=0)
    assert (splits[:4] == "test").all(), "given splits are kept"
    drawn = rows[4:].assign(split=splits[4:])
    train = drawn[drawn["split"] == "train"]
    assert abs((train["group"] == "x").mean() - 0.5) < 0.1, "train keeps the group mix"
    assert abs((train["label"] == "a").mean() - 0.5) < 0.1, "and the label mix"


def test_parquet_manifest_with_splits_and_groups(tmp_path: Path, tiny_params_file: Path) -> None:
    root = tmp_path / "data"
    records = []
    for split in ("train", "val", "test"):
        for label in ("cat", "dog"):
            for i in range(2):
                path = f"pics/{split}-{label}-{i}.png"
                png(root / path)
                records.append({"path": path, "label": label, "split": split, "group": f"site{i}"})
    pd.DataFrame(records).to_parquet(root / "labels.parquet")
    params = load_params(
        tiny_params_file, ["data.format=imagefolder", f"data.source={root / 'labels.parquet'}"]
    )
    manifest = prepare(params)
    assert manifest.groupby("split").size().to_dict() == {"test": 4, "train": 4, "val": 4}
    assert set(manifest["group"]) == {"site0", "site1"}
    assert json.loads((params.paths.prepared / "classes.json").read_text()) == ["cat", "dog"]


def test_hostile_manifest_labels_and_drop_names_are_refused_before_any_write(
    workspace: Path, tmp_path: Path
) -> None:
    params = load_params(workspace / "params.yaml")
    source = tmp_path / "outside" / "drops" / "shop"
    records = []
    for label in ("cat", "dog", "../../escaped"):
        for i in range(2):
            png(source / f"pics/{label.replace('/', '_')}-{i}.png")
            records.append({"path": f"pics/{label.replace('/', '_')}-{i}.png", "label": label})
    pd.DataFrame(records).to_csv(source / "labels.csv", index=False)

    hostile = add_dataset(source / "labels.csv", params, name="shop")
    assert hostile.status == "failed", "a label that is a path fails the check"
    assert "label '../../escaped' is not a usable name" in Path(hostile.report).read_text()
    assert not (workspace / "data/incoming/shop").exists()
    before = sorted(p for p in tmp_path.rglob("*") if ".dvc" not in p.parts)

    with pytest.raises(DataSourceError, match=r"dataset name '\.\./\.\./\.\./x'"):
        add_dataset(clean_folder(tmp_path / "good"), params, name="../../../x")
    refused = transferops("data", "add", str(tmp_path / "good"), "--name", "../x", cwd=workspace)
    assert refused.returncode != 0 and "dataset name '../x'" in refused.stderr
    after = sorted(p for p in tmp_path.rglob("*") if ".dvc" not in p.parts)
    written = set(after) - set(before) - set((tmp_path / "good").rglob("*")) - {tmp_path / "good"}
    assert not {p for p in written if not p.is_relative_to(workspace)}, "nothing outside"
    assert not [p for p in (workspace / "data/incoming").iterdir() if p.is_dir()], "no drop"
    assert [v.name for v in list_versions(params.paths.registry)] == ["shop"]


def test_a_manifest_drop_keeps_its_splits_groups_and_same_named_files(
    workspace: Path, tmp_path: Path
) -> None:
    source = tmp_path / "shop"
    records = []
    for site in ("north", "south"):
        for split in ("train", "val", "test"):
            for label in ("cat", "dog"):
                path = f"{site}/{split}/{label}/0.png"  # the same file name in every folder
                png(source / path)
                records.append({"path": path, "label": label, "split": split, "group": site})
    pd.DataFrame(records).to_csv(source / "labels.csv", index=False)
    params = load_params(workspace / "params.yaml")
    added = add_dataset(source / "labels.csv", params, name="shop")
    assert added.status == "passed" and added.images == 12

    manifest = prepare(params)
    from_drop = manifest[manifest["source"].str.contains("incoming/shop")]
    assert len(from_drop) == 12, "no file overwrote another"
    assert from_drop["sha256"].nunique() == 12
    kept = from_drop.groupby(["group", "split", "label"]).size()
    assert kept.to_dict() == {key: 1 for key in kept.index} and len(kept) == 12


@pytest.mark.parametrize("value", ["cat", "T-shirt (top)", "Zürich 2", "v1.2+b", "店舗"])
def test_plain_names_pass(value: str) -> None:
    assert name_problem("label", value) is None


@pytest.mark.parametrize(
    "value", ["", "..", ".hidden", "a/b", "a\\b", "x" * 65, "new\nline", "dot.", "$x$", "-rf"]
)
def test_names_that_could_be_paths_or_markup_are_refused(value: str) -> None:
    assert name_problem("label", value).startswith("label ")
