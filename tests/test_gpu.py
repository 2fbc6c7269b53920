"""The CUDA path: bf16 autocast, channels-last, pinned batches, loader workers, torch.compile,
and the BatchNorm probe under autocast, each against the CPU path on the same inputs.

Marked ``gpu``: skipped where CUDA is absent (tests/conftest.py), run by
``benchmarks/gpu_check.sh`` on a GPU machine. Synthetic images only (the GPU
machine has no Fashion-MNIST) and the offline pretrained Lite0 weights; no
BentoML, DVC or Prefect, which that machine lacks: the serving model path is
``services.following.Loaded`` on a saved classifier folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from services.following import Loaded
from transferops.data.datasets import ArrayImages
from transferops.models.backbones import build_transform, data_config_for, load_backbone
from transferops.models.classifier import build_classifier, save_seeded_classifier
from transferops.models.features import extract_features
from transferops.models.finetune import FineTuneConfig, fine_tune
from transferops.models.strategy import learning_rates, trainable_stages
from transferops.runtime import autocast, loader_for, select_device, to_device

# Its module-scoped fixtures are built once: under xdist every test here runs on one worker.
pytestmark = [pytest.mark.gpu, pytest.mark.xdist_group("test_gpu")]
STAGES = ["stem", *[f"block{i}" for i in range(7)], "head"]
CLASSES = [f"class {i}" for i in range(10)]


def two_kinds(n: int, side: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dark noisy squares (0) and bright striped ones (1): easy to tell apart, RGB uint8."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 80, (n, side, side, 3), dtype=np.uint8)
    images[labels == 1] += 120
    images[labels == 1, :, ::4] = 255
    return images, labels


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("tf_efficientnet_lite0")


@pytest.fixture(scope="module")
def saved_model(backbone, tmp_path_factory) -> Path:
    """The pretrained backbone with a seeded head, saved as the package stage saves it."""
    return save_seeded_classifier(backbone, CLASSES, tmp_path_factory.mktemp("gpu") / "model")


def test_the_device_helpers_take_the_cuda_path() -> None:
    assert select_device("auto") == "cuda"
    data = torch.utils.data.TensorDataset(torch.rand(16, 3, 32, 32), torch.zeros(16).long())
    loader = loader_for(data, 8, "cuda")
    assert loader.pin_memory and loader.num_workers > 0
    batch = to_device(next(iter(loader))[0], "cuda")
    assert batch.is_cuda and batch.is_contiguous(memory_format=torch.channels_last)
    with autocast("cuda"):
        product = batch.flatten(1) @ torch.rand(3 * 32 * 32, 4, device="cuda")
    assert product.dtype == torch.bfloat16


def test_features_under_autocast_match_float32_on_cpu(backbone) -> None:
    images, labels = two_kinds(64, 96)
    data = ArrayImages(images, labels, build_transform(data_config_for(backbone, None)))
    on_gpu = extract_features(backbone, loader_for(data, 32, "cuda"), "cuda")
    on_cpu = extract_features(backbone, loader_for(data, 32, "cpu"), "cpu")
    cosine = (on_gpu * on_cpu).sum(1) / (
        np.linalg.norm(on_gpu, axis=1) * np.linalg.norm(on_cpu, axis=1)
    )
    assert cosine.min() > 0.99, cosine.min()


def test_the_serving_path_on_cuda_agrees_with_cpu_bn_probe_included(saved_model) -> None:
    images = list(two_kinds(24, 300, seed=1)[0])  # bigger than the input: resized as served
    on_cpu = Loaded.from_folder(saved_model, 3, "cpu").predict(images)
    on_gpu = Loaded.from_folder(saved_model, 3, "cuda").predict(images)
    pairs = list(zip(on_cpu, on_gpu, strict=True))
    agree = sum(a["top_k"][0]["label"] == b["top_k"][0]["label"] for a, b in pairs)
    assert agree >= 22, f"top-1 agrees on {agree} of 24"
    for a, b in pairs:
        assert np.abs(a["probabilities"] - b["probabilities"]).max() < 0.05
        # The BatchNorm probe reads bf16 activations in float32: distances within 10%.
        np.testing.assert_allclose(b["bn"], a["bn"], rtol=0.1, atol=0.02)
        assert np.isfinite(b["embedding"]).all()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "torch.compile"])
def test_fine_tuning_on_cuda_learns_and_keeps_frozen_stages(backbone, compiled: bool) -> None:
    side = 96
    config = data_config_for(backbone, side)
    images, labels = two_kinds(256, side)
    train = ArrayImages(images[:192], labels[:192], build_transform(config, training=True))
    val = ArrayImages(images[192:], labels[192:], build_transform(config))
    weight = torch.randn(10, backbone.num_features, generator=torch.Generator().manual_seed(0))
    model = build_classifier(backbone.model, backbone.name, 10, weight * 0.01, torch.zeros(10))
    frozen_before = model.conv_stem.weight.detach().clone()
    trainable = trainable_stages("top_blocks", STAGES)
    cfg = FineTuneConfig(
        trainable=trainable,
        learning_rates=learning_rates(trainable, 3e-3, 0.5),
        epochs=3,
        batch_size=32,
        cache_mb=0,  # every batch through the whole network: the autocast path end to end
        device="cuda",
        compile=compiled,
        keep_best=False,
    )
    result = fine_tune(model, train, val, cfg)
    assert result.best_val_accuracy >= 0.9, result.history
    assert torch.equal(model.conv_stem.weight.detach().cpu(), frozen_before.cpu())
