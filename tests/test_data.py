"""prepare and validate on real small data: Fashion-MNIST subsets and ImageFolders."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.prepare import prepare
from pipelines.validate import validate
from transferops.commands import StageFailed
from transferops.config import load_params
from transferops.data.datasets import DataSourceError, read_idx, read_manifest


def make_image_folder(root: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for label in ("cat", "dog", "fox"):
        (root / label / "nested").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / "nested" / f"{i}.png")
    return root


def test_fashion_mnist_subset_is_stratified_and_complete(tiny_params_file: Path) -> None:
    params = load_params(tiny_params_file)
    manifest = prepare(params)
    counts = manifest.groupby("split").size().to_dict()
    assert counts == {"train": 100, "val": 40, "test": 120}
    assert manifest.groupby(["split", "label"]).size().min() >= 4, "every class in every split"
    first = manifest.iloc[0]
    assert (first.width, first.height) == (28, 28)
    assert len(first.sha256) == 64
    assert (params.paths.prepared / first.path).is_file()
    assert set(json.loads((params.paths.prepared / "classes.json").read_text())) == set(
        manifest.label
    )


def test_prepare_is_deterministic(tiny_params_file: Path) -> None:
    params = load_params(tiny_params_file)
    first = prepare(params)
    second = prepare(params)
    assert first.equals(second)


def test_image_folder_source_and_raw_data_untouched(tmp_path: Path, tiny_params_file: Path) -> None:
    source = make_image_folder(tmp_path / "raw")
    before = {p: p.stat().st_mtime_ns for p in source.rglob("*.png")}
    params = load_params(tiny_params_file, ["data.format=imagefolder", f"data.source={source}"])
    manifest = prepare(params)
    assert set(manifest.label) == {"cat", "dog", "fox"}
    assert len(manifest) == 36
    assert set(manifest.split) == {"train", "val", "test"}
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*.png")} == before


def test_failed_prepare_keeps_the_last_good_dataset(tmp_path: Path, tiny_params_file: Path) -> None:
    source = make_image_folder(tmp_path / "raw")
    params = load_params(tiny_params_file, ["data.format=imagefolder", f"data.source={source}"])
    good = prepare(params)
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,category\ncat/nested/0.png,cat\n")
    broken = load_params(tiny_params_file, ["data.format=imagefolder", f"data.source={manifest}"])
    with pytest.raises(DataSourceError, match=r"labels\.csv: missing column\(s\) \['label'\]"):
        prepare(broken)
    assert read_manifest(params.paths.prepared).equals(good)


def test_a_bad_image_is_copied_untouched_then_named_by_validate(
    tmp_path: Path, tiny_params_file: Path
) -> None:
    source = make_image_folder(tmp_path / "raw")
    (source / "cat" / "broken.png").write_bytes(b"not really a png")
    params = load_params(
        tiny_params_file,
        ["data.format=imagefolder", f"data.source={source}", "validate.min_per_class=1"],
    )
    prepare(params)
    assert (source / "cat" / "broken.png").read_bytes() == b"not really a png"
    with pytest.raises(StageFailed, match="data problem"):
        validate(params)
    result = json.loads((params.paths.validation / "result.json").read_text())
    (bad,) = [p for p in result["problems"] if p["check"] == "bad file"]
    assert bad["detail"].startswith("not an image") and bad["files"][0].endswith(".png")
    accepted = read_manifest(params.paths.validation, "accepted.csv")
    assert len(accepted) == 36, "the accepted list holds only the files that passed"


def test_missing_fashion_mnist_says_what_to_install(tmp_path: Path, tiny_params_file: Path) -> None:
    params = load_params(tiny_params_file, [f"data.source={tmp_path}"])
    with pytest.raises(DataSourceError, match="apt-get install dataset-fashion-mnist"):
        prepare(params)


def test_read_idx_rejects_a_file_that_is_not_idx(tmp_path: Path) -> None:
    bogus = tmp_path / "x-idx3-ubyte"
    bogus.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(DataSourceError, match="not an unsigned-byte IDX"):
        read_idx(bogus)


def test_validation_passes_on_clean_data_and_writes_docs(tiny_params_file: Path) -> None:
    params = load_params(tiny_params_file)
    prepare(params)
    report = validate(params)
    assert report.success and not report.problems, report.text()
    assert all(o.success for o in report.outcomes)
    result = json.loads((params.paths.validation / "result.json").read_text())
    assert result["success"] is True
    assert (params.paths.validation / "docs" / "index.html").is_file()


def test_validation_names_the_underfilled_class(tmp_path: Path, tiny_params_file: Path) -> None:
    params = load_params(tiny_params_file)
    prepare(params)
    strict = load_params(tiny_params_file, ["validate.min_per_class=5"])
    with pytest.raises(StageFailed, match="data problem"):
        validate(strict)
    result = json.loads((params.paths.validation / "result.json").read_text())
    assert result["success"] is False
    details = [p["detail"] for p in result["problems"] if p["check"] == "class too small"]
    assert "val/bag: 4 usable images < validate.min_per_class = 5" in details


def test_validation_catches_labels_outside_the_expected_set(tiny_params_file: Path) -> None:
    params = load_params(tiny_params_file, ["validate.expected_labels=[t-shirt_top, trouser]"])
    prepare(params)
    with pytest.raises(StageFailed):
        validate(params)
    result = json.loads((params.paths.validation / "result.json").read_text())
    unexpected = [p for p in result["problems"] if p["check"] == "unexpected label"]
    assert any("'pullover'" in p["detail"] and p["files"] for p in unexpected), unexpected
