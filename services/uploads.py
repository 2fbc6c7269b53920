"""Untrusted uploads: request bodies -> images, each refused with a 4xx that names the problem.

Multipart (files in ``images``, optional ``group``, one for all or one per
image) or one raw image as the body (``Content-Type: image/*``, optional
``X-Group``). Bodies are refused with 413 as soon as they pass their bound;
every image is checked before its pixels are decoded
(``transferops.data.imagecheck.decode_upload``) and converted exactly as
training converted its data (``transferops.data.pictures``). Plain Starlette:
testable without BentoML.
"""

from __future__ import annotations

import numpy as np
from starlette.exceptions import HTTPException
from starlette.requests import Request

from transferops.config import ServeParams
from transferops.data.imagecheck import BadImage, decode_upload
from transferops.data.imagestats import STAT_NAMES, image_statistics
from transferops.data.pictures import PictureSettings, to_rgb

RAW_TYPES = ("image/", "application/octet-stream")  # one image as the whole body
MULTIPART_FRAMING = 64_000  # bytes allowed beyond the images themselves

Upload = tuple[str, bytes, str | None]  # (name, bytes, group)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"body of {int(declared):,} bytes > the limit of {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"body over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_uploads(request: Request, serve: ServeParams) -> list[Upload]:
    """(name, bytes, group) of every image in the request: multipart files or a raw body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == "multipart/form-data":
        uploads, groups = await _multipart(request, serve)
    elif media.startswith(RAW_TYPES):
        uploads = [("body", await read_body(request, serve.max_image_bytes))]
        group = request.headers.get("x-group") or request.query_params.get("group")
        groups = [group] if group else []
    else:
        raise HTTPException(
            415,
            f"content type {media or '(none)'!r} not accepted: send multipart/form-data with "
            "files in 'images', or one image as the body (image/*)",
        )
    if not uploads:
        raise HTTPException(400, "no image in the request: send files in the 'images' field")
    if len(uploads) > serve.max_images:
        raise HTTPException(413, f"{len(uploads)} images > serve.max_images = {serve.max_images}")
    if len(groups) not in (0, 1, len(uploads)):
        raise HTTPException(
            400, f"{len(groups)} 'group' values for {len(uploads)} images: give one, or one each"
        )
    groups = groups * len(uploads) if len(groups) == 1 else groups or [None] * len(uploads)
    return [(n, d, g) for (n, d), g in zip(uploads, groups, strict=True)]


async def _multipart(request: Request, serve: ServeParams) -> tuple[list, list[str]]:
    body = await read_body(request, serve.max_images * serve.max_image_bytes + MULTIPART_FRAMING)

    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

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
    return uploads, [str(g) for g in form.getlist("group")]


def decode_all(
    uploads: list[Upload], serve: ServeParams, picture: PictureSettings
) -> list[tuple[np.ndarray, dict]]:
    """RGB arrays and image statistics; the first bad image refuses the request (4xx)."""
    decoded = []
    for name, data, _ in uploads:
        try:
            image = decode_upload(
                data, max_bytes=serve.max_image_bytes, max_pixels=serve.max_pixels, name=name
            )
        except BadImage as err:
            raise HTTPException(err.status, str(err)) from err
        rgb = to_rgb(image, picture)  # as training and the monitoring reference saw theirs
        stats = dict(zip(STAT_NAMES, image_statistics(rgb).tolist(), strict=True))
        decoded.append((np.asarray(rgb), stats))
    return decoded
