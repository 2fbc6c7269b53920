"""Every data fault the checks must catch, built as real files, and named in the report."""

import io
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import transferops.data.imagecheck as imagecheck
from tests.commands import transferops
from tests.conftest import FASHION_MNIST, ROOT
from tests.imagefiles import RNG, bomb_header, clean_folder, fashion_mnist_folder, png
from transferops.config import load_params
from transferops.data.checks import check_source


def settings(*overrides: str):
    base = ["validate.min_per_class=2", "validate.max_imbalance=3", "validate.min_side=8"]
    return load_params(ROOT / "params.yaml", [*base, *overrides]).validate_


def problems_by_check(report) -> dict[str, list]:
    found: dict[str, list] = {}
    for problem in report.problems:
        found.setdefault(problem.check, []).append(problem)
    return found


def files_of(report, check: str) -> set[str]:
    return {f for p in problems_by_check(report).get(check, []) for f in p.files}


def test_clean_folder_passes(tmp_path: Path) -> None:
    report = check_source(clean_folder(tmp_path / "data"), settings(), tmp_path / "out")
    assert report.success, report.text()
    assert report.images == 12 and report.classes == 3
    assert (tmp_path / "out" / "docs" / "index.html").is_file()


def test_file_faults_are_named(tmp_path: Path) -> None:
    root = clean_folder(tmp_path / "data")
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "notes.png").write_text("meeting notes, not a picture")
    whole = io.BytesIO()
    Image.fromarray(RNG.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(whole, "PNG")
    (root / "dog" / "cut.png").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    png(root / "dog" / "tiny.png", size=(4, 4))
    png(root / "fox" / "wide.png", size=(9000, 8))
    bomb_header(root / "fox" / "bomb.png")
    Image.new("CMYK", (16, 16)).save(root / "fox" / "print.jpg")
    # Every mode converts faithfully by default (docs/data.md); a team may restrict them.
    report = check_source(root, settings("validate.allowed_modes=[RGB, L]"), tmp_path / "out")
    assert not report.success
    bad = {p.files[0]: p.detail for p in problems_by_check(report)["bad file"]}
    assert bad["cat/empty.png"].startswith("empty file")
    assert bad["cat/notes.png"].startswith("not an image")
    assert bad["dog/cut.png"].startswith("truncated or corrupt")
    assert "decompression bomb" in bad["fox/bomb.png"] and "not decoded" in bad["fox/bomb.png"]
    assert files_of(report, "image size") >= {"dog/tiny.png", "fox/wide.png"}
    assert files_of(report, "unsupported mode") == {"fox/print.jpg"}


def test_bomb_is_refused_without_decoding(tmp_path: Path, monkeypatch) -> None:
    def no_decoding(data: bytes) -> None:
        raise AssertionError(f"a {len(data)}-byte image was decoded")

    monkeypatch.setattr(imagecheck, "_decode_problem", no_decoding)
    facts = imagecheck.inspect_file(str(bomb_header(tmp_path / "b.png")), max_pixels=10**6)
    assert facts.problem.startswith("decompression bomb")


def test_duplicates_leakage_and_conflicts_from_a_manifest(tmp_path: Path) -> None:
    root = tmp_path / "data"
    rows = [
        (f"img/{split}-{label}{i}.png", label, split)
        for split in ("train", "val", "test")
        for label in ("cat", "dog")
        for i in range(3)
    ]
    for path, _, _ in rows:
        png(root / path)
    twin = (root / "img/train-cat0.png").read_bytes()
    for copy in ("img/dup.png", "img/leak.png", "img/conflict.png"):
        (root / copy).write_bytes(twin)
    rows += [
        ("img/dup.png", "cat", "train"),
        ("img/leak.png", "cat", "test"),
        ("img/conflict.png", "dog", "train"),
    ]
    manifest = root / "labels.csv"
    pd.DataFrame(rows, columns=["path", "label", "split"]).to_csv(manifest, index=False)
    report = check_source(manifest, settings(), tmp_path / "out")
    assert files_of(report, "duplicate within split") == {"img/train-cat0.png", "img/dup.png"}
    assert {"img/train-cat0.png", "img/leak.png"} <= files_of(report, "leakage across splits")
    assert {"img/train-cat0.png", "img/conflict.png"} <= files_of(report, "conflicting labels")


def test_class_level_faults(tmp_path: Path) -> None:
    root = clean_folder(tmp_path / "data", per_class=2)
    for i in range(5):
        png(root / "cat" / f"more{i}.png")
    (root / "owl").mkdir()
    png(root / "eel" / "only.png")
    report = check_source(
        root, settings("validate.expected_labels=[cat, dog, fox, owl]"), tmp_path / "out"
    )
    details = " ".join(p.detail for p in report.problems)
    assert "all/owl: 0 usable" in details and "empty class" in problems_by_check(report)
    assert "all/eel: 1 usable images < validate.min_per_class = 2" in details
    (imbalance,) = problems_by_check(report)["class imbalance"]
    assert imbalance.detail == (
        "split 'all': largest/smallest class = 7.0 > validate.max_imbalance = 3"
    )
    assert files_of(report, "unexpected label") == {"eel/only.png"}


def test_paths_escaping_the_root_are_refused(tmp_path: Path) -> None:
    outside = png(tmp_path / "secret.png")
    root = clean_folder(tmp_path / "data")
    (root / "cat" / "link.png").symlink_to(outside)
    folder_report = check_source(root, settings(), tmp_path / "out1")
    assert (
        "path escapes the dataset root"
        in {p.files[0]: p.detail for p in problems_by_check(folder_report)["bad file"]}[
            "cat/link.png"
        ]
    )
    manifest = root / "labels.csv"
    pd.DataFrame(
        {"path": ["cat/0.png", "../secret.png", str(outside)], "label": ["cat", "cat", "cat"]}
    ).to_csv(manifest, index=False)
    report = check_source(manifest, settings(), tmp_path / "out2")
    bad = {p.files[0]: p.detail for p in problems_by_check(report)["bad file"]}
    assert "escapes the dataset root" in bad["../secret.png"]
    assert "absolute path refused" in bad[str(outside)]


def test_groups_missing_or_rare(tmp_path: Path) -> None:
    root = clean_folder(tmp_path / "data")
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    groups = ["north"] * 10 + ["south", ""]
    manifest = root / "labels.csv"
    pd.DataFrame(
        {"path": paths, "label": [p.split("/")[0] for p in paths], "group": groups}
    ).to_csv(manifest, index=False)
    report = check_source(
        manifest,
        settings("validate.require_group=true", "validate.min_per_group=3"),
        tmp_path / "out",
    )
    assert len(files_of(report, "missing group")) == 1
    assert any(
        "group 'south': 1 images" in p.detail for p in problems_by_check(report)["rare group"]
    )


def test_quarantine_drops_bad_files_and_passes_when_the_rest_is_clean(tmp_path: Path) -> None:
    root = clean_folder(tmp_path / "data")
    (root / "dog" / "empty.png").write_bytes(b"")
    report = check_source(root, settings("validate.on_error=quarantine"), tmp_path / "out")
    assert report.success, report.text()
    assert report.quarantined == ["dog/empty.png"]


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch) -> None:
    root = clean_folder(tmp_path / "data")
    check_source(root, settings(), tmp_path / "out")
    png(root / "cat" / "new.png")
    seen: list[str] = []
    original = imagecheck.inspect_file
    monkeypatch.setattr(
        imagecheck,
        "inspect_file",
        lambda path, max_pixels: seen.append(path) or original(path, max_pixels),
    )
    assert check_source(root, settings(), tmp_path / "out").success
    assert [Path(p).name for p in seen] == ["new.png"]


def run_check_cli(path: Path, out: Path) -> subprocess.CompletedProcess:
    return transferops(
        "--params",
        str(ROOT / "params.yaml"),
        "check",
        str(path),
        "--out",
        str(out),
        "-S",
        "validate.min_per_class=2",
    )


def test_check_command_on_an_unseen_folder_names_every_planted_fault(tmp_path: Path) -> None:
    root = clean_folder(tmp_path / "unseen")
    planted = {"cat/empty.jpg": b"", "dog/readme.png": b"plain text"}
    for name, data in planted.items():
        (root / name).write_bytes(data)
    (root / "fox" / "copy.png").write_bytes((root / "fox" / "0.png").read_bytes())
    (root / "dog" / "relabelled.png").write_bytes((root / "cat" / "1.png").read_bytes())
    bomb_header(root / "cat" / "huge.png")
    png(root / "fox" / "thumb.png", size=(3, 3))
    whole = io.BytesIO()  # CMYK itself is fine (it converts); this one is cut short
    Image.new("CMYK", (64, 64), (0, 255, 0, 0)).save(whole, "JPEG")
    (root / "dog" / "print.jpg").write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    planted_files = [
        *planted,
        "fox/copy.png",
        "fox/0.png",
        "dog/relabelled.png",
        "cat/huge.png",
        "fox/thumb.png",
        "dog/print.jpg",
    ]
    result = run_check_cli(root, tmp_path / "out")
    assert result.returncode == 1, result.stdout + result.stderr
    for name in planted_files:
        assert name in result.stdout, f"{name} not named:\n{result.stdout}"
    assert (tmp_path / "out" / "problems.txt").read_text().strip()


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_check_command_passes_a_clean_real_image_folder(tmp_path: Path) -> None:
    result = run_check_cli(fashion_mnist_folder(tmp_path / "fmnist", 60), tmp_path / "out")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "clean" in result.stdout
