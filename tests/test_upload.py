"""Untrusted image bytes, as the service receives them: each refusal named, no bomb decoded."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.imagefiles import bomb_header
from transferops.data.imagecheck import BadImage, decode_upload

LIMITS = {"max_bytes": 100_000, "max_pixels": 1_000_000}


def encoded(fmt: str, size: tuple[int, int] = (40, 30)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_real_images_decode(fmt: str) -> None:
    image = decode_upload(encoded(fmt), **LIMITS)
    assert image.size == (40, 30)


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty (0 bytes)"),
        (b"name,label\na.png,cat\n", 400, "not an image"),
        (encoded("PNG")[:300], 400, "truncated or corrupt"),
        (encoded("PNG", (200, 200)), 413, "bytes > the limit of 100,000"),
    ],
    ids=["empty", "csv", "truncated", "too-many-bytes"],
)
def test_bad_bytes_are_refused_with_a_named_reason(data: bytes, status: int, words: str) -> None:
    with pytest.raises(BadImage) as refused:
        decode_upload(data, **LIMITS, name="images[2]")
    assert refused.value.status == status
    assert str(refused.value).startswith("images[2]: ") and words in str(refused.value)


@pytest.mark.parametrize("side", [5_000, 50_000], ids=["over-our-limit", "over-pillow-limit"])
def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path, side: int) -> None:
    data = bomb_header(tmp_path / "bomb.png", side=side).read_bytes()
    assert len(data) < 200, "tiny on the wire"
    with pytest.raises(BadImage) as refused:
        decode_upload(data, **LIMITS)
    assert refused.value.status == 413
    # Decoding would fail as truncated: a bomb verdict proves only the header was read.
    assert "decompression bomb" in str(refused.value) and "not decoded" in str(refused.value)


def test_formats_outside_the_allow_list_are_415() -> None:
    with pytest.raises(BadImage) as refused:
        decode_upload(encoded("TGA"), **LIMITS, formats=["PNG", "JPEG"])
    assert refused.value.status == 415 and "image format TGA is not accepted" in str(refused.value)


def test_a_big_jpeg_is_decoded_at_a_reduced_scale() -> None:
    image = decode_upload(
        encoded("JPEG", (1600, 1200)), max_bytes=10**7, max_pixels=10**7, draft_side=100
    )
    assert image.size == (200, 150), "1/8 of the DCT: the shorter side stays >= 100"


def test_pillow_bomb_guard_stays_on_in_the_service() -> None:
    import importlib

    importlib.import_module("services.uploads")
    assert Image.MAX_IMAGE_PIXELS is not None


def test_shrink_keeps_the_working_side_and_statistics_report_the_size_that_arrived() -> None:
    from transferops.data.imagestats import image_statistics
    from transferops.data.pictures import shrink

    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (700, 1000, 3), np.uint8))
    small, scale = shrink(image, 73)
    assert small.size == (112, 78) and min(small.size) >= 73
    width, height = image_statistics(small, scale)[:2]
    assert abs(width - 1000) <= 9 and abs(height - 700) <= 9
    tiny = Image.new("RGB", (28, 28))
    assert shrink(tiny, 73) == (tiny, 1.0), "small images pass untouched"


def small_config():
    from transferops.models.classifier import ClassifierConfig

    return ClassifierConfig(
        backbone="tf_efficientnet_lite0",
        classes=["a", "b"],
        data_config={
            "input_size": (3, 64, 64),
            "interpolation": "bicubic",
            "mean": (0.485, 0.456, 0.406),
            "std": (0.229, 0.224, 0.225),
            "crop_pct": 0.875,
            "crop_mode": "center",
        },
        strategy="full",
    )


def test_input_split_matches_the_eval_transform() -> None:
    import torch

    from transferops.models.classifier import InputSplit, eval_transform

    config = small_config()
    rng = np.random.default_rng(2)
    images = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8))
        for h, w in [(28, 28), (90, 300), (500, 64)]
    ]
    split = InputSplit(config)
    whole = torch.stack([eval_transform(config)(image) for image in images])
    cut = split.batch([split.pixels(image) for image in images])
    assert split.side == 73 and torch.allclose(whole, cut, atol=1e-5)


def test_a_thumbnail_is_kept_only_when_the_params_say_so() -> None:
    from services.uploads import header_sizes, prepare_all
    from transferops.config import ServeParams
    from transferops.data.pictures import DEFAULT_PICTURE, THUMBNAIL_SIDE, from_png
    from transferops.models.classifier import InputSplit

    buffer = io.BytesIO()
    Image.new("RGB", (300, 120), (200, 10, 10)).save(buffer, format="PNG")
    uploads = [("x.png", buffer.getvalue(), None)]
    split = InputSplit(small_config())

    def prepared(keep: bool):
        serve = ServeParams(top_k=1, max_batch_size=1, log_thumbnails=keep)
        sizes = header_sizes(uploads, serve)
        return prepare_all(uploads, sizes, serve, DEFAULT_PICTURE, split, None)[0]

    picture = from_png(prepared(True).thumbnail)
    assert picture.shape == (THUMBNAIL_SIDE, THUMBNAIL_SIDE, 3)
    assert tuple(picture[THUMBNAIL_SIDE // 2, THUMBNAIL_SIDE // 2]) == (200, 10, 10)
    assert prepared(False).thumbnail is None, "serve.log_thumbnails: false keeps no picture"
