"""Untrusted uploads: request bodies -> model inputs, each refusal a 4xx that names the problem.

Multipart (files in ``images``, optional ``group``, one for all or one per
image) or one raw image as the body (``Content-Type: image/*``, optional
``X-Group``). Bodies are refused with 413 as soon as they pass their bound
and draw on the server's byte budget while they are held; group names must
be plain text (``services.limits.checked_text``). Every image is checked
from its header before a pixel is decoded (format allow-list, pixel bound:
``transferops.data.imagecheck.decode_upload``), the request's images together
must stay under ``serve.max_request_pixels``, and each is decoded one at a
time while it holds its pixels of the server's pixel budget, shrunk to the
model's working size at once (JPEG DCT scaling, then whole-factor
reduction), converted exactly as training converted its data
(``transferops.data.pictures``) and cut to a small uint8 array
(``InputSplit.pixels``). Plain Starlette: testable without BentoML.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from starlette.exceptions import HTTPException
from starlette.requests import Request

from services.limits import Budget, checked_text
from transferops.config import ServeParams
from transferops.data.imagecheck import BadImage, decode_upload, read_header
from transferops.data.imagestats import STAT_NAMES, image_statistics
from transferops.data.pictures import PictureSettings, shrink, thumbnail_png, to_rgb

if TYPE_CHECKING:  # torch: the workers import it with the model, not BentoML's parent process
    from transferops.models.classifier import InputSplit

RAW_TYPES = ("image/", "application/octet-stream")  # one image as the whole body
MULTIPART_FRAMING = 64_000  # bytes allowed beyond the images themselves

Upload = tuple[str, bytes, str | None]  # (name, bytes, group)


@dataclass
class Prepared:
    """One image ready for the model, and what the prediction log keeps about it."""

    pixels: np.ndarray  # (H, W, 3) uint8: InputSplit.pixels of ``small``
    key: str  # the InputSplit that made ``pixels`` (a new champion may need others)
    small: Image.Image  # the image shrunk to the working size, to cut again if so
    stats: dict[str, float]
    thumbnail: bytes | None = None  # PNG for the drift report's gallery (serve.log_thumbnails)


async def read_body(request: Request, limit: int, held: Budget | None = None) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes.

    ``held``: the bytes are drawn from this budget as they arrive (503 when it
    is spent); the caller gives back ``len(body)`` when done with it.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {int(declared):,} bytes > the limit of {limit:,}")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"body over the limit of {limit:,} bytes")
            if held is not None:
                held.try_take(len(chunk))
            chunks.append(chunk)
    except BaseException:
        if held is not None:
            held.give(sum(map(len, chunks)))
        raise
    return b"".join(chunks)


async def read_uploads(
    request: Request, serve: ServeParams, held: Budget | None = None
) -> tuple[list[Upload], int]:
    """(name, bytes, group) of every image in the request; the body bytes drawn from ``held``."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        uploads, groups, size = await _multipart(request, serve, held)
    elif media.startswith(RAW_TYPES):
        body = await read_body(request, serve.max_image_bytes, held)
        uploads, size = [("body", body)], len(body)
        group = request.headers.get("x-group") or request.query_params.get("group")
        groups = [group] if group else []
    else:
        raise HTTPException(
            415,
            f"content type {media or '(none)'!r} not accepted: send multipart/form-data with "
            "files in 'images', or one image as the body (image/*)",
        )
    try:
        return _checked(uploads, groups, serve), size
    except BaseException:
        if held is not None:
            held.give(size)
        raise


def _checked(uploads: list, groups: list[str], serve: ServeParams) -> list[Upload]:
    if not uploads:
        raise HTTPException(400, "no image in the request: send files in the 'images' field")
    if len(uploads) > serve.max_images:
        raise HTTPException(413, f"{len(uploads)} images > serve.max_images = {serve.max_images}")
    if len(groups) not in (0, 1, len(uploads)):
        raise HTTPException(
            400, f"{len(groups)} 'group' values for {len(uploads)} images: give one, or one each"
        )
    groups = [checked_text("group", g) for g in groups]
    groups = groups * len(uploads) if len(groups) == 1 else groups or [None] * len(uploads)
    return [(n[:100], d, g) for (n, d), g in zip(uploads, groups, strict=True)]


async def _multipart(
    request: Request, serve: ServeParams, held: Budget | None
) -> tuple[list, list[str], int]:
    limit = min(serve.max_request_bytes, serve.max_images * serve.max_image_bytes)
    body = await read_body(request, limit + MULTIPART_FRAMING, held)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        try:
            form = await Request(request.scope, replay).form(
                max_files=serve.max_images + 1, max_fields=serve.max_images + 1
            )
        except Exception as err:  # malformed multipart, too many parts
            raise HTTPException(400, f"unreadable multipart body: {err}") from err
        files = form.getlist("images")
        if any(isinstance(f, str) for f in files):
            raise HTTPException(400, "field 'images' must hold files, not text (no URLs)")
        uploads = [(f.filename or f"images[{i}]", await f.read()) for i, f in enumerate(files)]
        await form.close()
    except BaseException:
        if held is not None:
            held.give(len(body))
        raise
    return uploads, [str(g) for g in form.getlist("group")], len(body)


def header_sizes(uploads: list[Upload], serve: ServeParams) -> list[tuple[int, int]]:
    """Each image's (width, height) by its header ((0, 0): unreadable); 413 when their
    pixels together pass serve.max_request_pixels."""
    sizes = [_header_size(data) for _, data, _ in uploads]
    if (total := sum(w * h for w, h in sizes)) > serve.max_request_pixels:
        raise HTTPException(
            413,
            f"{len(uploads)} images of {total:,} pixels in all > serve.max_request_pixels = "
            f"{serve.max_request_pixels:,}",
        )
    return sizes


def prepare_all(
    uploads: list[Upload],
    sizes: list[tuple[int, int]],
    serve: ServeParams,
    picture: PictureSettings,
    split: InputSplit,
    pixels: Budget | None,
) -> list[Prepared]:
    """Every image ready for the model, one decoded at a time; the first bad one refuses (4xx).

    ``sizes``: :func:`header_sizes` of the uploads. ``pixels``: the budget the
    full-size pixels are held against while decoding (None: small enough to
    need none, e.g. work done on the event loop, which must never wait).
    """
    return [
        _prepare(name, data, size, serve, picture, split, pixels)
        for (name, data, _), size in zip(uploads, sizes, strict=True)
    ]


def _header_size(data: bytes) -> tuple[int, int]:
    header = read_header(data) if data else None
    if isinstance(header, dict):
        return header["width"], header["height"]
    return 0, 0  # empty or unreadable: decode_upload names the problem


def _prepare(
    name: str,
    data: bytes,
    size: tuple[int, int],
    serve: ServeParams,
    picture: PictureSettings,
    split: InputSplit,
    pixels: Budget | None,
) -> Prepared:
    held = pixels.hold(size[0] * size[1]) if pixels else nullcontext()
    with held:  # the full-size pixels exist only inside this block
        try:
            image = decode_upload(
                data,
                max_bytes=serve.max_image_bytes,
                max_pixels=serve.max_pixels,
                name=name,
                formats=serve.formats,
                draft_side=split.side,
            )
        except BadImage as err:
            raise HTTPException(err.status, str(err)) from err
        image, _ = shrink(image, split.side)
        small, _ = shrink(to_rgb(image, picture), split.side)  # modes shrink could not reduce
        del image
    scale = max(size) / max(small.size)  # statistics report the size that arrived
    stats = dict(zip(STAT_NAMES, image_statistics(small, scale).tolist(), strict=True))
    kept = thumbnail_png(small) if serve.log_thumbnails else None
    return Prepared(split.pixels(small), split.key, small, stats, kept)
