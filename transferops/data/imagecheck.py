"""Facts about image files: size, hash, format, dimensions, mode, and what is wrong.

Inspection reads the header first and refuses to decode an image whose pixel
count exceeds ``max_pixels`` (a decompression bomb), then decodes the rest
fully so truncated files are caught. Facts are cached by (path, size, mtime,
max_pixels): a file unchanged since the last check is not read again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

log = logging.getLogger(__name__)

FACT_COLUMNS = [
    "file",
    "bytes",
    "mtime_ns",
    "max_pixels",
    "sha256",
    "format",
    "width",
    "height",
    "mode",
    "problem",
]


@dataclass(frozen=True)
class FileFacts:
    file: str
    bytes: int
    mtime_ns: int
    max_pixels: int
    sha256: str | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    problem: str | None = None


def inspect_file(path: str, max_pixels: int) -> FileFacts:
    """Everything the data checks need to know about one file."""
    try:
        stat = os.stat(path)
        data = Path(path).read_bytes()
    except OSError as err:
        return FileFacts(path, 0, 0, max_pixels, problem=f"unreadable: {err.strerror}")
    base = {
        "file": path,
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "max_pixels": max_pixels,
    }
    if not data:
        return FileFacts(**base, problem="empty file (0 bytes)")
    base["sha256"] = hashlib.sha256(data).hexdigest()
    header = _read_header(base, data)
    if isinstance(header, FileFacts):
        return header
    pixels = header["width"] * header["height"]
    if pixels > max_pixels:
        return FileFacts(
            **base,
            **header,
            problem=(
                f"decompression bomb: {header['width']} x {header['height']} = {pixels:,} pixels "
                f"> validate.max_pixels = {max_pixels:,} (not decoded)"
            ),
        )
    return FileFacts(**base, **header, problem=_decode_problem(data))


def _read_header(base: dict, data: bytes) -> dict | FileFacts:
    """Format, size and mode from the header alone (no pixel data is decoded)."""
    header = read_header(data)
    return FileFacts(**base, problem=header) if isinstance(header, str) else header


def read_header(data: bytes) -> dict | str:
    """``{format, width, height, mode}`` from the header alone, or what is wrong."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return {
                    "format": image.format,
                    "width": image.width,
                    "height": image.height,
                    "mode": image.mode,
                }
        except Image.DecompressionBombError as err:
            return f"decompression bomb: {err} (not decoded)"
        except UnidentifiedImageError:
            return f"not an image: content starts {data[:8]!r}"
        except (OSError, SyntaxError, ValueError) as err:
            return f"unreadable image header: {err}"


def _decode(data: bytes, draft_side: int | None = None) -> Image.Image | str:
    """Every pixel decoded, or what is wrong: a truncated or corrupt image fails here.

    ``draft_side``: let a JPEG decode at a reduced scale (shorter side >= it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            if draft_side and image.format == "JPEG" and min(image.size) > 2 * draft_side:
                ratio = draft_side / min(image.size)
                wanted = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
                image.draft(image.mode, wanted)
            image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            return f"truncated or corrupt: {err}"
    return image


def _decode_problem(data: bytes) -> str | None:
    decoded = _decode(data)
    if isinstance(decoded, str):
        return decoded
    decoded.close()
    return None


class BadImage(ValueError):
    """Image bytes that must not be decoded; ``status`` is the HTTP answer for a service."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(
    data: bytes,
    *,
    max_bytes: int,
    max_pixels: int,
    name: str = "image",
    formats: list[str] | None = None,
    draft_side: int | None = None,
):
    """Decode untrusted image bytes (e.g. a request body) into a loaded PIL image.

    Checks, in order, before any pixel is decoded: not empty, at most
    ``max_bytes`` (413), a header an image library recognises (400), a format
    in ``formats`` when given (415), at most ``max_pixels`` by the header
    (413: a decompression bomb is never decoded); then the full decode, which
    catches truncated files (400). ``draft_side``: a JPEG is decoded straight
    at the smallest of its DCT scales (1/2, 1/4, 1/8) that keeps the shorter
    side >= this, never at full size. Raises :class:`BadImage` naming
    ``name`` and the problem.
    """
    if not data:
        raise BadImage(f"{name}: empty (0 bytes)")
    if len(data) > max_bytes:
        raise BadImage(f"{name}: {len(data):,} bytes > the limit of {max_bytes:,}", 413)
    header = read_header(data)
    if isinstance(header, str):
        status = 413 if header.startswith("decompression bomb") else 400
        raise BadImage(f"{name}: {header}", status)
    if formats is not None and header["format"] not in formats:
        raise BadImage(
            f"{name}: image format {header['format']} is not accepted (serve.formats: "
            f"{', '.join(formats)})",
            415,
        )
    pixels = header["width"] * header["height"]
    if pixels > max_pixels:
        raise BadImage(
            f"{name}: {header['width']} x {header['height']} = {pixels:,} pixels > the limit "
            f"of {max_pixels:,} (decompression bomb guard; not decoded)",
            413,
        )
    decoded = _decode(data, draft_side)
    if isinstance(decoded, str):
        raise BadImage(f"{name}: {decoded}")
    return decoded


def _inspect_many(paths: list[str], max_pixels: int) -> list[FileFacts]:
    return [inspect_file(p, max_pixels) for p in paths]


def inspect_files(
    files: list[Path], max_pixels: int, cache_file: Path | None = None, workers: int | None = None
) -> pd.DataFrame:
    """Facts for every file, reusing the cache for files whose size and mtime match.

    The updated cache is written back (atomically) when ``cache_file`` is given.
    """
    # Our own guard (max_pixels, from the header) runs first; Pillow's stays on above it.
    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, max_pixels)
    names = [os.fspath(f) for f in files]  # callers pass resolved paths
    cached = _load_cache(cache_file)
    fresh, stale = [], []
    for name in names:
        try:
            stat = os.stat(name)
        except OSError:
            stale.append(name)
            continue
        hit = cached.get(name)
        if (
            hit
            and hit["bytes"] == stat.st_size
            and hit["mtime_ns"] == stat.st_mtime_ns
            and hit["max_pixels"] == max_pixels
        ):
            fresh.append(hit)
        else:
            stale.append(name)
    log.info("file checks: %d unchanged (cached), %d to inspect", len(fresh), len(stale))
    inspected = [asdict(f) for f in _inspect_parallel(stale, max_pixels, workers)]
    facts = pd.DataFrame(fresh + inspected, columns=FACT_COLUMNS)
    if cache_file is not None:
        _save_cache(cache_file, cached | {row["file"]: row for row in inspected})
    order = {name: i for i, name in enumerate(names)}
    return facts.sort_values("file", key=lambda s: s.map(order)).reset_index(drop=True)


def _inspect_parallel(paths: list[str], max_pixels: int, workers: int | None) -> list:
    workers = workers or min(os.cpu_count() or 1, 8)
    chunks = [paths[i : i + 500] for i in range(0, len(paths), 500)]
    if workers <= 1 or len(paths) < 2000:
        return [
            f
            for chunk in tqdm(chunks, desc="inspect", unit="chunk", disable=None)
            for f in _inspect_many(chunk, max_pixels)
        ]
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(_inspect_many, chunks, [max_pixels] * len(chunks))
        return [
            f
            for chunk in tqdm(
                results, total=len(chunks), desc="inspect", unit="chunk", disable=None
            )
            for f in chunk
        ]


def _load_cache(cache_file: Path | None) -> dict[str, dict]:
    if cache_file is None or not Path(cache_file).is_file():
        return {}
    try:
        frame = pd.read_parquet(cache_file)
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable file-check cache %s: %s", cache_file, err)
        return {}
    frame = frame.astype(object).where(frame.notna(), None)
    return {row["file"]: row for row in frame.to_dict(orient="records")}


def _save_cache(cache_file: Path, rows: dict[str, dict]) -> None:
    cache_file = Path(cache_file)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_file.with_suffix(".tmp")
    pd.DataFrame(list(rows.values()), columns=FACT_COLUMNS).to_parquet(partial, index=False)
    partial.replace(cache_file)
