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
