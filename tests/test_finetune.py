"""The fine-tuning engine on real pretrained weights and real Fashion-MNIST images.

Frozen stages (weights and BatchNorm statistics) must not move, trainable
stages must get the recorded learning rates, a killed run must resume, and
two-process DDP on CPU (gloo) must split the data and agree on the weights.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.commands import run_stage
from tests.conftest import FASHION_MNIST, ROOT, TINY, absolute_paths, write_params
from transferops.data.datasets import ArrayImages, load_fashion_mnist
from transferops.models.backbones import (
    build_transform,
    data_config_for,
    load_backbone,
    stage_namer,
)
from transferops.models.classifier import build_classifier, load_classifier
from transferops.models.finetune import CHECKPOINT, FineTuneConfig, fine_tune
from transferops.models.freezing import split_model, unfrozen_at
from transferops.models.strategy import learning_rates, trainable_stages

STAGES = ["stem", *[f"block{i}" for i in range(7)], "head"]
# Its module-scoped fixtures are built once: under xdist every test here runs on one worker.
pytestmark = [
    pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist"),
    pytest.mark.xdist_group("test_finetune"),
]


def small_task(n_train: int = 64, n_val: int = 32, side: int = 32):
    """A pretrained Lite0 with a fresh 10-class head, and tiny real train/val sets."""
    images, labels = load_fashion_mnist(FASHION_MNIST, "t10k")
    backbone = load_backbone("tf_efficientnet_lite0")
    config = data_config_for(backbone, side)
    train = ArrayImages(
        images[:n_train], labels[:n_train], build_transform(config, training=True, scale=(0.6, 1))
    )
    val = ArrayImages(
        images[n_train : n_train + n_val],
        labels[n_train : n_train + n_val],
        build_transform(config),
    )
    weight = torch.randn(10, backbone.num_features, generator=torch.Generator().manual_seed(0))
    model = build_classifier(backbone.model, backbone.name, 10, weight * 0.01, torch.zeros(10))
    return model, train, val


def config_for(strategy: str, **changes) -> FineTuneConfig:
    trainable = trainable_stages(strategy, STAGES)
    settings = {
        "trainable": trainable,
        "learning_rates": learning_rates(trainable, 1e-3, 0.5),
        "epochs": 2,
        "batch_size": 16,
        "cache_views": 2,
        "keep_best": False,
    }
    return FineTuneConfig(**(settings | changes))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("cache_mb", [2048, 0], ids=["cached-prefix", "recomputed-prefix"])
def test_frozen_stages_and_their_batchnorm_stay_put_and_rates_follow_the_record(
    cache_mb: int,
) -> None:
    model, train, val = small_task()
    # "adapt": trainable stages' BatchNorm updates its statistics, frozen stages' must not.
    cfg = config_for("top_blocks", cache_mb=cache_mb, batchnorm="adapt")
    before = snapshot(model)
    result = fine_tune(model, train, val, cfg)
    assert result.cached == (cache_mb > 0)
    stage = stage_namer(model)
    after = snapshot(model)
    frozen = {k for k in before if stage(k) not in cfg.trainable}
    assert any(k.endswith("running_mean") for k in frozen), "frozen BatchNorm is checked"
    moved = [k for k in frozen if not torch.equal(before[k], after[k])]
    assert moved == [], f"frozen tensors changed: {moved[:5]}"
    for name in ("blocks.6.0.conv_pw.weight", "blocks.6.0.bn1.running_mean", "classifier.weight"):
        assert not torch.equal(before[name], after[name]), f"{name} should have trained"
    # Every trainable stage got its recorded rate, scaled by the same schedule factor.
    for record in result.history:
        factor = record["lr"]["classifier"] / cfg.learning_rates["classifier"]
        assert set(record["lr"]) == set(cfg.trainable)
        for name, lr in record["lr"].items():
            assert lr == pytest.approx(cfg.learning_rates[name] * factor)


def test_frozen_batchnorm_mode_keeps_every_running_statistic() -> None:
    model, train, val = small_task(n_train=32, n_val=16)
    before = snapshot(model)
    result = fine_tune(model, train, val, config_for("top_blocks", epochs=1))
    assert result.cached and result.cache_views == 1, "one epoch of one rate reads one view"
    after = snapshot(model)
    statistics = [k for k in before if "running_" in k]
    assert all(torch.equal(before[k], after[k]) for k in statistics)
    assert not torch.equal(before["blocks.6.0.bn1.weight"], after["blocks.6.0.bn1.weight"])


def test_cached_and_recomputed_prefix_split_the_model_at_the_first_trainable_stage() -> None:
    model, _, _ = small_task()
    prefix, _ = split_model(model, trainable_stages("top_blocks", STAGES))
    assert len(prefix) == 6, "stem and blocks 0-4 are the frozen prefix"
    assert split_model(model, trainable_stages("full", STAGES))[0] is None


def test_gradual_unfreezing_adds_one_stage_per_epoch_from_the_top() -> None:
    trainable = ["block6", "head", "classifier"]
    assert unfrozen_at(0, trainable, True) == ["classifier"]
    assert unfrozen_at(1, trainable, True) == ["classifier", "head"]
    assert unfrozen_at(5, trainable, True) == ["classifier", "head", "block6"]
    assert unfrozen_at(0, trainable, False) == trainable


def test_fine_tune_with_gradual_unfreezing_trains_one_more_stage_each_epoch() -> None:
    """Through ``fine_tune`` itself: epoch 1 moves only the classifier, epoch 2 the head too."""

    def stages_moved(epochs: int) -> set[str]:
        model, train, val = small_task(n_train=32, n_val=16)
        before = snapshot(model)
        fine_tune(model, train, val, config_for("top_blocks", epochs=epochs, gradual_unfreeze=True))
        stage = stage_namer(model)
        after = snapshot(model)
        return {stage(k) for k in before if not torch.equal(before[k], after[k])}

    trainable = trainable_stages("top_blocks", STAGES)
    assert len(trainable) >= 3, "stages left frozen at the end, so the test can tell"
    assert stages_moved(1) == {"classifier"}
    assert stages_moved(2) == {"classifier", "head"}


@torch.no_grad()
def val_accuracy(model: torch.nn.Module, val) -> float:
    model.eval()
    loader = torch.utils.data.DataLoader(val, batch_size=64)
    correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return correct / len(val)


def test_a_collapsing_learning_rate_stops_early_and_the_best_state_is_kept() -> None:
    model, train, val = small_task(n_train=64, n_val=32)
    # x30 the rates (0.03 for the classifier) wrecks the pretrained features.
    cfg = config_for(
        "most_blocks", epochs=8, lr_scales=(1.0, 30.0), patience=2, patience_from=0.25,
        keep_best=True, race_margin=1.0,
    )  # fmt: skip
    result = fine_tune(model, train, val, cfg)
    first, second = result.candidates
    assert (first["lr_scale"], second["lr_scale"]) == (1.0, 30.0)
    assert second["stopped_early"] and second["epochs_run"] < 8, second
    assert not second["won"], "the collapsed rate does not win"
    assert result.seconds_saved > 0 and result.planned_epochs == 8
    assert {h["candidate"] for h in result.history} == {0, 1}
    assert val_accuracy(model, val) == pytest.approx(result.best_val_accuracy), (
        "the model returned is the best validation state"
    )


def test_no_higher_rate_is_tried_once_fine_tuning_beats_the_probe_by_the_margin() -> None:
    model, train, val = small_task(n_train=64, n_val=32)
    # margin 0: any result at all (the probe included) is "beaten by >= 0": one candidate only.
    cfg = config_for("top_blocks", epochs=2, lr_scales=(1.0, 3.0), race_margin=0.0)
    result = fine_tune(model, train, val, cfg)
    assert [c["lr_scale"] for c in result.candidates] == [1.0]
    always = config_for("top_blocks", epochs=2, lr_scales=(1.0, 3.0), race_margin=1.0)
    model, train, val = small_task(n_train=64, n_val=32)
    assert [c["lr_scale"] for c in fine_tune(model, train, val, always).candidates] == [1.0, 3.0]


def test_an_interrupted_race_resumes_its_candidate_and_ends_where_a_whole_run_ends(
    tmp_path: Path,
) -> None:
    cfg = config_for("top_blocks", epochs=3, lr_scales=(1.0, 2.0), race_margin=1.0, keep_best=True)
    model, train, val = small_task(n_train=64, n_val=32)
    partial = fine_tune(
        model, train, val, cfg, checkpoint_dir=tmp_path / "ckpt", fingerprint="x", stop_after=2
    )
    assert partial.candidates == [], "interrupted inside the first candidate"
    model, train, val = small_task(n_train=64, n_val=32)
    resumed = fine_tune(model, train, val, cfg, checkpoint_dir=tmp_path / "ckpt", fingerprint="x")
    assert resumed.resumed_from == 2
    assert [c["epochs_run"] for c in resumed.candidates] == [3, 3]
    whole_model, train, val = small_task(n_train=64, n_val=32)
    whole = fine_tune(whole_model, train, val, cfg, checkpoint_dir=tmp_path / "w", fingerprint="x")
    assert resumed.best_val_accuracy == whole.best_val_accuracy
    assert resumed.lr_scale == whole.lr_scale
    a, b = snapshot(model), snapshot(whole_model)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a), (
        "the resumed race ends on the uninterrupted race's weights"
    )


@pytest.fixture(scope="module")
def finetune_project(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny trained project, re-decided as ``full`` (slow enough to interrupt)."""
    root = tmp_path_factory.mktemp("finetune")
    source = yaml.safe_load(trained_project.read_text())["paths"]
    for key in ("prepared", "validation", "features", "profile"):
        shutil.copytree(source[key], root / Path(source[key]).relative_to(trained_project.parent))
    params = write_params(
        root / "params.yaml",
        TINY
        | absolute_paths(root)
        | {
            "strategy.force": "full",
            "train.epochs": 6,
            "train.min_steps": 0,
            "train.batch_size": 16,
            "train.cache_mb": 0,
            "train.probe_epochs": 5,
            # one learning rate, every epoch: the resume test compares whole runs
            "train.lr_race": [1.0],
            "train.patience": 0,
        },
    )
    run_stage("strategy", params)
    return params


def test_killed_training_resumes_where_it_stopped(
    finetune_project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed with SIGKILL mid-run (a process of its own); resumed and the uninterrupted
    run are stages run in this process (tests/commands.py)."""
    paths = yaml.safe_load(finetune_project.read_text())["paths"]
    checkpoint = Path(paths["checkpoints"]) / CHECKPOINT
    shutil.rmtree(paths["checkpoints"], ignore_errors=True)
    run = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", "--params", str(finetune_project)],
        cwd=finetune_project.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert checkpoint.exists(), "the run wrote a checkpoint before it was killed"
    stopped_at = torch.load(checkpoint, weights_only=True)["epoch"]
    assert 1 <= stopped_at < 6, "killed mid-run"

    with caplog.at_level(logging.INFO, logger="transferops.models.finetune"):
        run_stage("train", finetune_project)
    assert f"resuming from the checkpoint after epoch {stopped_at}" in caplog.text
    metrics = json.loads((Path(paths["train_log"]) / "metrics.json").read_text())
    assert metrics["finetune"]["resumed_from"] == stopped_at
    history = torch.load(checkpoint, weights_only=True)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6], "same final epoch count"
    resumed_model, _ = load_classifier(Path(paths["model"]))

    # The same run without interruption, in its own checkpoint folder.
    fresh = write_params(
        tmp_path / "params.yaml",
        {
            "paths.checkpoints": str(tmp_path / "ckpt"),
            "paths.model": str(tmp_path / "model"),
            "paths.train_log": str(tmp_path / "dvclive"),
        },
        base=finetune_project,
    )
    run_stage("train", fresh)
    fresh_metrics = json.loads((tmp_path / "dvclive" / "metrics.json").read_text())
    assert fresh_metrics["finetune"]["resumed_from"] == 0
    assert metrics["finetune"]["best_val_accuracy"] == pytest.approx(
        fresh_metrics["finetune"]["best_val_accuracy"], abs=0.05
    ), "comparable accuracy"
    fresh_model, _ = load_classifier(tmp_path / "model")
    # Same weights up to float rounding, judged against each tensor's scale: the probe's
    # folded head (weights of order 10) comes out of BLAS reductions that may round
    # differently per process (seen: 7e-4 off in classifier.weight, nowhere else).
    resumed_state = resumed_model.state_dict()
    differing = {
        k: float((v.float() - resumed_state[k].float()).abs().max())
        for k, v in fresh_model.state_dict().items()
        if float((v.float() - resumed_state[k].float()).abs().max())
        > 1e-4 * max(1.0, float(v.float().abs().max()))
    }
    assert differing == {}, "resuming reaches the uninterrupted run's weights"


# One torchrun launch, two ranks, for the engine and the stage: each launch is 20 s or more
# of CPU in process start-up (torch, timm) alone; not in make check.
@pytest.mark.slow
def test_ddp_on_cpu_splits_data_agrees_on_weights_and_runs_the_train_stage(
    trained_project: Path, tmp_path: Path
) -> None:
    """Two processes under ``torchrun`` (gloo): the engine trains on disjoint shards and ends
    with identical weights; then ``pipelines.train`` itself, on the tiny project, writes one
    model that both ranks trained (tests/ddp_worker.py)."""
    source = yaml.safe_load(trained_project.read_text())["paths"]
    for key in ("prepared", "validation", "features", "profile"):
        shutil.copytree(
            source[key], tmp_path / Path(source[key]).relative_to(trained_project.parent)
        )
    changes = {"strategy.force": "top_blocks", "train.epochs": 1, "train.batch_size": 16}
    params = write_params(tmp_path / "params.yaml", TINY | absolute_paths(tmp_path) | changes)
    run_stage("strategy", params)
    out = tmp_path / "ranks"
    out.mkdir()
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    worker = Path(__file__).with_name("ddp_worker.py")
    ran = subprocess.run(
        [*command, str(worker), str(out), str(params)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen = [set(r["seen"]) for r in ranks]
    assert seen[0] and seen[1] and not seen[0] & seen[1], "disjoint shards"
    assert ranks[0]["world_size"] == ranks[1]["world_size"] == 2
    assert ranks[0]["weights"] == ranks[1]["weights"], "identical weights after training"
    assert ranks[0]["trained"], "the weights moved"
    model, config = load_classifier(tmp_path / "artifacts" / "model")
    assert config.extra["finetune"]["processes"] == 2, "both ranks trained the stage's model"
    assert config.strategy == "top_blocks" and model is not None
