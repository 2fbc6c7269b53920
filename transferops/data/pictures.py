"""Any image file a team might have, as the RGB picture the model sees.

One conversion for training, evaluation, profiling and serving, so a model
never sees an image differently in production than it did in training:

- EXIF orientation applied (a phone photo stored sideways is turned upright);
- transparency (RGBA, LA, palette with a transparent colour) flattened on
  ``background``; dropping the alpha channel instead would show whatever
  colour the transparent pixels happen to hold, often black;
- 16-bit and 32-bit integer grey (``I;16``, ``I``) and float (``F``) images
  scaled to 8 bits instead of clipped (Pillow's own ``convert`` clips 16-bit
  grey at 255: a white picture);
- CMYK (Pillow undoes Adobe's inverted CMYK JPEGs), grey, bilevel and
  everything else converted to RGB;
- very wide or tall images (panoramas, receipts) padded with ``background``
  to at most ``max_aspect`` : 1, so the centre crop of the model's transform
  keeps most of the picture instead of a thin slice of its middle.

The settings travel with every trained model (``model.json``), so serving
flattens and pads exactly as training did.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

TRANSPARENT_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
INTEGER_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
# Every Pillow mode to_rgb turns into a faithful RGB picture (validate.allowed_modes' default).
SUPPORTED_MODES = (
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB",
    "HSV", "F", *sorted(INTEGER_GREY_MODES),
)  # fmt: skip


@dataclass(frozen=True)
class PictureSettings:
    """How an image file becomes the RGB picture the model sees."""

    background: tuple[int, int, int] = (255, 255, 255)
    max_aspect: float = 4.0

    def to_dict(self) -> dict:
        return asdict(self) | {"background": list(self.background)}

    @classmethod
    def from_dict(cls, values: dict | None) -> PictureSettings:
        """Settings stored with a model; models saved before they existed get the defaults."""
        if not values:
            return cls()
        return cls(background=tuple(values["background"]), max_aspect=float(values["max_aspect"]))


DEFAULT_PICTURE = PictureSettings()


def to_rgb(image: Image.Image, settings: PictureSettings = DEFAULT_PICTURE) -> Image.Image:
    """``image`` upright, flattened, 8-bit RGB and padded to ``settings.max_aspect``."""
    image = ImageOps.exif_transpose(image)
    if image.mode in INTEGER_GREY_MODES or image.mode == "F":
        image = _grey_to_8bit(image)
    if image.mode in TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info):
        canvas = Image.new("RGBA", image.size, (*settings.background, 255))
        image = Image.alpha_composite(canvas, image.convert("RGBA"))
    rgb = image.convert("RGB")
    return pad_to_aspect(rgb, settings.max_aspect, settings.background)


REDUCIBLE_MODES = {"L", "LA", "RGB", "RGBA", "CMYK", "I", "F", "YCbCr", "PA"}


def shrink(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    """``image`` reduced by the largest whole factor that keeps its shorter side >= ``side``.

    A box filter over whole blocks (Pillow's ``reduce``): cheap, and what the
    bicubic resize that follows would average over anyway. Serving calls it
    right after decoding, so a 6000 px upload is never held at full size any
    longer; evaluation calls it too, so the monitoring reference sees its images
    as the service does. Returns (image, scale): original size / new size.
    Modes ``reduce`` cannot handle (palette, bilevel, 16-bit) pass unchanged.
    """
    factor = min(image.size) // max(side, 1)
    if factor < 2 or image.mode not in REDUCIBLE_MODES:
        return image, 1.0
    reduced = image.reduce(factor)
    return reduced, image.width / reduced.width


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """Scale a high-bit-depth grey image to 0-255 by its type's range, not by clipping."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        top = 1.0 if values.size and values.max() <= 1.0 else 255.0
    else:  # I;16* hold 16 bits; "I" is how Pillow opens 16-bit PNGs too
        top = 65535.0 if values.size and values.max() > 255 else 255.0
    scaled = np.clip(values / top * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def pad_to_aspect(
    image: Image.Image, max_aspect: float, background: tuple[int, int, int]
) -> Image.Image:
    """Centre ``image`` on a ``background`` canvas no longer than ``max_aspect`` : 1."""
    width, height = image.size
    if width <= max_aspect * height and height <= max_aspect * width:
        return image
    size = (
        (width, int(np.ceil(width / max_aspect)))
        if width > height
        else (
            int(np.ceil(height / max_aspect)),
            height,
        )
    )
    canvas = Image.new("RGB", size, background)
    canvas.paste(image, ((size[0] - width) // 2, (size[1] - height) // 2))
    return canvas


def shrink_while_decoding(image: Image.Image, side: int | None) -> None:
    """Ask the decoder for a smaller image when it can (JPEG: DCT scaling), in place.

    Keeps at least twice ``side`` on the shorter side, so the model's own
    resize still does the final, anti-aliased step. No-op for other formats.
    """
    if side is not None and image.format == "JPEG":
        image.draft(None, (2 * side, 2 * side))  # None: keep the file's own mode


def header_size(path: Path) -> tuple[int | None, int | None]:
    """(width, height) from the file's header; (None, None) when it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError):
        return None, None


def open_rgb(
    source: Path | bytes, settings: PictureSettings = DEFAULT_PICTURE, side: int | None = None
) -> Image.Image:
    """Open a file (or bytes) and return :func:`to_rgb` of it; ``side`` lets JPEGs decode small."""
    handle = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    with Image.open(handle) as image:
        shrink_while_decoding(image, side)
        image.load()
        return to_rgb(image, settings)


THUMBNAIL_SIDE = 64  # px: the drift report's gallery (docs/monitoring.md)


def thumbnail(image: Image.Image, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A square ``(side, side, 3)`` uint8 picture: ``image`` shrunk to fit, centred on white."""
    small = image.convert("RGB")
    small.thumbnail((side, side), Image.Resampling.BILINEAR)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(small, ((side - small.width) // 2, (side - small.height) // 2))
    return np.asarray(square)


def thumbnail_png(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """:func:`thumbnail` as PNG bytes (a few KB): what the prediction log keeps per image."""
    out = io.BytesIO()
    Image.fromarray(thumbnail(image, side)).save(out, format="PNG")
    return out.getvalue()


def from_png(data: bytes) -> np.ndarray:
    """A thumbnail back from :func:`thumbnail_png`."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
