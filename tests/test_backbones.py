"""The offline pretrained weights really load (a known photo gets its known class)."""

from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from transferops.models.backbones import (
    BackboneError,
    build_transform,
    data_config_for,
    load_backbone,
)

# Its module-scoped fixtures are built once: under xdist every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("test_backbones")
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def lite0():
    return load_backbone("tf_efficientnet_lite0")


def top_classes(backbone, image: Image.Image, k: int) -> list[int]:
    batch = build_transform(backbone.data_config)(image).unsqueeze(0)
    with torch.no_grad():
        return backbone.model(batch).topk(k).indices[0].tolist()


def test_chelsea_is_a_cat_and_coffee_is_espresso(lite0) -> None:
    assert CATS & set(top_classes(lite0, Image.fromarray(data.chelsea()), 3))
    assert top_classes(lite0, Image.fromarray(data.coffee()), 1) == [ESPRESSO]


def test_data_config_comes_from_the_model(lite0) -> None:
    assert lite0.data_config["mean"] == (0.5, 0.5, 0.5)
    assert lite0.data_config["interpolation"] == "bicubic"
    assert data_config_for(lite0, 64)["input_size"] == (3, 64, 64)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_larger_lite_models_map_every_tensor(name: str) -> None:
    backbone = load_backbone(name)  # strict load: a missed key would raise
    assert CATS & set(top_classes(backbone, Image.fromarray(data.chelsea()), 3))


def test_checkpoint_file_in_timm_naming_loads(lite0, tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.model.state_dict().items()}, str(path))
    again = load_backbone("tf_efficientnet_lite0", str(path))
    assert top_classes(again, Image.fromarray(data.coffee()), 1) == [ESPRESSO]


def test_unknown_offline_backbone_and_missing_checkpoint_are_named(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match=r"resnet18.*no offline weights"):
        load_backbone("resnet18")
    with pytest.raises(BackboneError, match=r"nothing\.pt.*not found"):
        load_backbone("tf_efficientnet_lite0", str(tmp_path / "nothing.pt"))


def test_a_retrain_starts_only_from_a_classifier_of_its_backbone_and_classes(
    tmp_path: Path,
) -> None:
    from transferops.models.classifier import WEIGHTS, save_seeded_classifier, starting_head

    classes = ["cat", "dog", "fox"]
    save_seeded_classifier(load_backbone("tf_efficientnet_lite0"), classes, tmp_path / "champion")
    weights = str(tmp_path / "champion" / WEIGHTS)
    head, why = starting_head(weights, "tf_efficientnet_lite0", classes)
    assert why == "" and head[0].shape == (3, 1280) and head[1].shape == (3,)
    plain = tmp_path / "backbone.safetensors"  # the same file without model.json beside it
    plain.write_bytes(Path(weights).read_bytes())
    refused = {
        ("offline", "tf_efficientnet_lite0", tuple(classes)): "pretrained weights",
        (str(plain), "tf_efficientnet_lite0", tuple(classes)): "not a saved classifier",
        (weights, "mobilenetv3_small_100", tuple(classes)): "trains a mobilenetv3_small_100",
        (weights, "tf_efficientnet_lite0", ("dog", "cat", "fox")): "are not this run's",
    }
    for (path, backbone, names), reason in refused.items():
        head, why = starting_head(path, backbone, list(names))
        assert head is None and reason in why, why
