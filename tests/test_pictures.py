"""Every image a team might have becomes the picture it shows: upright, flattened, 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import imagekinds
from transferops.data.imagecheck import inspect_file
from transferops.data.pictures import PictureSettings, open_rgb, pad_to_aspect


def pixel(image: Image.Image, x: float, y: float) -> tuple[int, int, int]:
    """The pixel at a fraction (x, y) of the width and height."""
    return image.getpixel((int(x * image.width), int(y * image.height)))


def test_transparent_pixels_take_the_background_the_params_name(tmp_path: Path) -> None:
    path = imagekinds.rgba_png(tmp_path / "a.png")
    white = open_rgb(path)
    assert white.mode == "RGB"
    assert pixel(white, 0.05, 0.05) == (255, 255, 255), "not the hidden black"
    assert pixel(white, 0.35, 0.35) == (20, 40, 200), "opaque pixels keep their colour"
    grey = open_rgb(path, PictureSettings(background=(128, 128, 128)))
    assert pixel(grey, 0.05, 0.05) == (128, 128, 128)


def test_a_palette_image_with_a_transparent_colour_is_flattened(tmp_path: Path) -> None:
    image = open_rgb(imagekinds.palette_png(tmp_path / "p.png"))
    assert pixel(image, 0.05, 0.05) == (255, 255, 255)
    assert pixel(image, 0.35, 0.35) == (30, 160, 30)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    path = imagekinds.grey16_png(tmp_path / "g.png")
    with Image.open(path) as raw:
        assert raw.mode.startswith("I"), f"the file is high bit depth ({raw.mode})"
        assert np.asarray(raw.convert("RGB")).min() == 255, "Pillow's convert clips: all white"
    image = open_rgb(path)
    assert pixel(image, 0.05, 0.05) == (233, 233, 233)  # 60000 / 65535 * 255
    assert pixel(image, 0.35, 0.35) == (19, 19, 19)  # 5000 / 65535 * 255


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    image = open_rgb(imagekinds.cmyk_jpeg(tmp_path / "c.jpg"))
    red, green, blue = pixel(image, 0.35, 0.35)
    assert red > 200 and green < 60 and blue < 60, "cyan-free ink is red"
    assert min(pixel(image, 0.05, 0.05)) > 240


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = imagekinds.rotated_jpeg(tmp_path / "r.jpg")
    with Image.open(path) as raw:
        assert raw.size == (60, 30)
    assert open_rgb(path).size == (30, 60), "turned upright"


def test_a_panorama_is_padded_to_the_aspect_limit_not_cropped(tmp_path: Path) -> None:
    image = open_rgb(imagekinds.panorama_png(tmp_path / "w.png"), PictureSettings(max_aspect=4))
    assert image.size == (400, 100)
    assert pixel(image, 0.5, 0.02) == (255, 255, 255), "padding in the background colour"
    assert pad_to_aspect(Image.new("RGB", (10, 100)), 4, (0, 0, 0)).size == (25, 100)
    assert pad_to_aspect(Image.new("RGB", (30, 20)), 4, (0, 0, 0)).size == (30, 20)


@pytest.mark.parametrize("kind", sorted(imagekinds.KINDS))
def test_every_kind_passes_the_data_checks_by_default(kind: str, tmp_path: Path) -> None:
    from tests.conftest import ROOT
    from transferops.config import load_params

    suffix, make = imagekinds.KINDS[kind]
    facts = inspect_file(str(make(tmp_path / f"x{suffix}")), 40_000_000)
    assert facts.problem is None
    allowed = load_params(ROOT / "params.yaml").validate_.allowed_modes
    assert facts.mode in allowed, f"{kind}: mode {facts.mode} refused by default"
    assert open_rgb(tmp_path / f"x{suffix}").mode == "RGB"
