"""A team's own images: every kind of file, any number of classes and labels, the README walk.

- An ImageFolder holding every kind of image a team might have (RGBA, palette
  with transparency, 16-bit grey, CMYK JPEG, EXIF-rotated JPEG, panorama,
  grey among colour) trains through every stage.
- Two classes of 5,000 images and 100 classes of 20 train through them too.
- The README's "Use it on your own images", step by step, on a real
  ImageFolder that is not Fashion-MNIST (photographs from scikit-image):
  ``transferops check``, ``transferops profile``, ``transferops train`` (the
  Prefect flow: DVC, every stage, the gate), ``transferops serve`` and one
  ``transferops monitor`` check. The commands run in the test's process
  (tests/commands.py); ``serve`` is a real ``bentoml serve``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from flows.serving import free_port, running_service
from flows.workspace import create_workspace
from services.client import send
from tests import imagekinds
from tests.commands import run_stage, transferops
from tests.conftest import ROOT, TINY, absolute_paths, write_params
from tests.imagefiles import photo_crops, photo_folder

STAGES = ("prepare", "validate", "features", "profile", "strategy", "train", "evaluate")
# The tiny settings of the other tests, for an ImageFolder at the side auto picks.
OWN = TINY | {
    "data.format": "imagefolder",
    "model.image_size": "auto",
    "model.auto.budget_s.cpu": 10,  # a short run: the side is the budget's, not the backbone's
}


def run_stages(params: Path, stages=STAGES) -> None:
    for stage in stages:
        run_stage(stage, params)


def project(tmp_path: Path, source: Path, **changes) -> tuple[Path, dict]:
    params = write_params(
        tmp_path / "params.yaml",
        OWN | absolute_paths(tmp_path) | {"data.source": str(source)} | changes,
    )
    return params, yaml.safe_load(params.read_text())["paths"]


@pytest.mark.slow
def test_every_kind_of_image_trains_through_every_stage(tmp_path: Path) -> None:
    folder = imagekinds.every_kind_folder(tmp_path / "images", ["left", "middle", "right"], 24)
    params, paths = project(tmp_path, folder, **{"strategy.force": "top_blocks"})
    run_stages(params)
    result = json.loads((Path(paths["validation"]) / "result.json").read_text())
    assert result["success"] and result["problems"] == [], result["problems"]
    accepted = pd.read_csv(Path(paths["validation"]) / "accepted.csv")
    assert len(accepted) == 72, "no image of any kind was refused"
    kinds = {Path(p).name.split("-")[0] for p in accepted["source"]}
    assert kinds == set(imagekinds.KINDS), kinds
    model = json.loads((Path(paths["model"]) / "model.json").read_text())
    assert model["picture"] == {"background": [255, 255, 255], "max_aspect": 4.0}
    metrics = json.loads((Path(paths["evaluation"]) / "metrics.json").read_text())
    assert metrics["n"] == int((accepted["split"] == "test").sum())


def synthetic_folder(root: Path, classes: int, per_class: int) -> Path:
    """Grey squares whose bright 4-pixel cell says the class; a little noise on each."""
    rng = np.random.default_rng(classes)
    grid = int(np.ceil(np.sqrt(classes)))
    cell = 4
    side = max(12, grid * cell)
    for label in range(classes):
        folder = root / f"class{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (side, side), dtype=np.uint8)
            y, x = divmod(label, grid)
            pixels[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] = 230
            Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return root


@pytest.mark.slow
@pytest.mark.parametrize(("classes", "per_class"), [(2, 5000), (100, 20)])
def test_two_classes_of_5000_and_100_classes_of_20_train(
    tmp_path: Path, classes: int, per_class: int
) -> None:
    """The stages carry the data at both ends: the splits, 100 classes in the head, the
    metrics and the confusion matrix. Both train a linear probe on their cached features:
    fine-tuning them (the selector picks full) is 45-60 s (10,000 images) and 15-20 s
    (2,000) of passes through the network on one core, for code paths the tiny data tests
    (tests/test_finetune.py). The profile at the training side reuses the cached features
    instead of a second pass."""
    folder = synthetic_folder(tmp_path / "images", classes, per_class)
    changes = {"model.image_size": 32, "profile.side": 32, "strategy.force": "linear_probe"}
    params, paths = project(tmp_path, folder, **changes)
    run_stages(params)
    accepted = pd.read_csv(Path(paths["validation"]) / "accepted.csv")
    assert len(accepted) == classes * per_class
    decision = json.loads((Path(paths["profile"]) / "decision.json").read_text())
    assert decision["numbers"]["classes"] == classes
    expected = "large" if per_class == 5000 else "medium"  # 500 and 5 labels per class
    assert decision["size"] == expected, decision["reason"]
    model = json.loads((Path(paths["model"]) / "model.json").read_text())
    assert len(model["classes"]) == classes
    metrics = json.loads((Path(paths["evaluation"]) / "metrics.json").read_text())
    chance = 1 / classes
    assert metrics["accuracy"] > min(0.8, 3 * chance), f"well above chance ({chance:.2f})"


# --------------------------------------------------------- the README's walk


def cli(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """``transferops ARGS`` in ``repo``: the console script's ``main``, in this process."""
    return transferops(*args, cwd=repo)


def printed_json(stdout: str) -> dict:
    """The result a flow command prints last, after Prefect's own log lines."""
    printed = "\n" + stdout  # the JSON may be all there is
    return json.loads(printed[printed.rindex("\n{\n") + 1 :])


@pytest.mark.integration
@pytest.mark.slow
def test_the_readme_walk_on_a_real_image_folder(tmp_path: Path) -> None:
    images = photo_folder(tmp_path / "my-images", per_class=24, seed=1)
    repo = create_workspace(ROOT, tmp_path / "project")
    port = free_port()
    write_params(
        repo / "params.yaml",
        OWN
        | {
            "data.source": str(images),
            "orchestrate.service_url": f"http://127.0.0.1:{port}",
        },
        base=repo / "params.yaml",
    )

    checked = cli(repo, "check", str(images), "--out", str(tmp_path / "check"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    profiled = cli(repo, "profile", str(images), "--out", str(tmp_path / "profile"))
    assert profiled.returncode == 0, profiled.stderr[-3000:]
    decision = json.loads((tmp_path / "profile" / "decision.json").read_text())
    assert decision["numbers"]["classes"] == 6 and decision["numbers"]["image_size"] == 64

    trained = cli(repo, "train")
    assert trained.returncode == 0, trained.stderr[-3000:]
    outcome = printed_json(trained.stdout)
    assert outcome["gate"]["promoted"] and outcome["champion"] == outcome["model_tag"]
    assert outcome["accuracy"] > 0.6, "six photographs, told apart from crops"
    side = json.loads((repo / "artifacts" / "features" / "side.json").read_text())
    assert side["side"] == 96 and side["native"] > 64, f"auto read the images: {side}"

    unpinned = {"TRANSFEROPS_PARAMS": str(repo / "params.yaml"), "TRANSFEROPS_MODEL_TAG": ""}
    fresh = photo_crops(per_class=12, seed=2)  # new crops of the same photographs
    with running_service(port=port, log_file=tmp_path / "serve.log", env=unpinned, cwd=repo) as url:
        for kind, (suffix, make) in imagekinds.KINDS.items():  # before the window's traffic
            path = make(tmp_path / f"{kind}{suffix}")
            answer = httpx.post(
                f"{url}/v1/classify", files={"images": (path.name, path.read_bytes())}, timeout=60
            )
            assert answer.status_code == 200, f"{kind}: {answer.text}"
        assert send(url, fresh) > 0.6
    checked = cli(repo, "monitor", "--no-retrain")
    assert checked.returncode == 0, checked.stderr[-3000:]
    verdict = printed_json(checked.stdout)["verdict"]
    assert verdict["status"] == "no_drift", verdict["reasons"]
    assert (repo / verdict["report_dir"] / "report.html").is_file()
