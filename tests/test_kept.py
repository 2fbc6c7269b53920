"""Kept production images: the policy, the files, the links, retention under a steady load."""

import contextlib
import hashlib
import io
import stat
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_predlog import record
from transferops.config import load_params
from transferops.logs.kept import ImageKeeper
from transferops.logs.keptfiles import kept_root, prune_store, read_kept
from transferops.logs.predictions import PredictionLog, read_predictions

SERVE = load_params().serve


def png(side: int, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def keeper_for(directory: Path, **policy) -> tuple[PredictionLog, ImageKeeper]:
    serve = SERVE.model_copy(update={"keep": SERVE.keep.model_copy(update=policy)})
    log = PredictionLog(directory)
    return log, ImageKeeper(log, serve, seed=0)


def serve_one(log: PredictionLog, keeper: ImageKeeper, i: int, data: bytes, side: int) -> bool:
    log.append([record(i)])
    return keeper.offer(f"r{i}", data, side)


def test_small_images_are_kept_as_sent_big_ones_shrunk_private_and_linked(tmp_path) -> None:
    log, keeper = keeper_for(tmp_path)
    small, big = png(40, 1), png(300, 2)
    assert serve_one(log, keeper, 1, small, 64) and serve_one(log, keeper, 2, big, 64)
    keeper.flush()
    log.append_feedback("r1", "cat")
    kept = read_kept(tmp_path).set_index("request_id")
    assert list(kept.index) == ["r1", "r2"], kept
    first, second = Path(kept.loc["r1", "file"]), Path(kept.loc["r2", "file"])
    assert first.read_bytes() == small, "an image within the kept side was re-encoded"
    assert first.name.startswith(hashlib.sha256(small).hexdigest()), "not named by content"
    with Image.open(second) as image:
        assert max(image.size) == 64, f"kept at {image.size}, not shrunk to the kept side"
    assert kept.loc["r1", "label"] == "cat" and kept["label"].isna().sum() == 1
    for path in (first, second):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} readable by others"
    assert stat.S_IMODE(kept_root(tmp_path).stat().st_mode) == 0o700
    linked = read_predictions(tmp_path)
    assert len(linked) == 2
    assert keeper.counts.kept == 2 and keeper.counts.offered == 2
    keeper.close(), log.close()


def test_policy_samples_caps_and_switches_off(tmp_path) -> None:
    data = png(16)
    log, off = keeper_for(tmp_path / "off", enabled=False)
    assert not serve_one(log, off, 1, data, 64)
    log, none = keeper_for(tmp_path / "none", fraction=1e-9)
    assert not any(serve_one(log, none, i, data, 64) for i in range(20))
    assert none.counts.not_sampled == 20
    log, capped = keeper_for(tmp_path / "cap", per_hour=3)
    kept = [serve_one(log, capped, i, data, 64) for i in range(8)]
    capped.flush()
    assert kept == [True] * 3 + [False] * 5 and capped.counts.over_hourly_cap == 5
    assert len(read_kept(tmp_path / "cap")) == 3
    log, tiny_queue = keeper_for(tmp_path / "queue", queue_mb=len(data) * 1.5 / 2**20)
    tiny_queue.close()  # nothing drains the queue: the bound must refuse, never block
    started = time.monotonic()
    results = [tiny_queue.offer(f"q{i}", data, 64) for i in range(5)]
    assert results == [True] + [False] * 4 and time.monotonic() - started < 1
    assert tiny_queue.counts.queue_full == 4


def test_low_disk_stops_keeping_not_serving(tmp_path) -> None:
    log, keeper = keeper_for(tmp_path, min_free_mb=10**9)  # more than any disk has free
    assert serve_one(log, keeper, 1, png(16), 64)  # accepted into the queue...
    keeper.flush()
    assert keeper.counts.disk_low == 1 and keeper.counts.kept == 0  # ...never written
    assert read_kept(tmp_path).empty and len(read_predictions(tmp_path)) == 1
    assert not list(kept_root(tmp_path).rglob("*.png"))


def test_retention_deletes_old_rows_feedback_and_unlinked_images(tmp_path) -> None:
    log, keeper = keeper_for(tmp_path)
    shared = png(16, 7)
    for i in range(3):
        serve_one(log, keeper, i, shared if i < 2 else png(16, 8), 64)
        log.append_feedback(f"r{i}", "cat")
    keeper.flush()
    files = sorted(kept_root(tmp_path).rglob("*.png"))
    assert len(files) == 2  # r0 and r1 sent the same image: one file
    with log.transaction() as db:  # r0 is old; r1 (same image) and r2 are not
        db.execute("UPDATE predictions SET time = '2000-01-01T00:00:00.000000+00:00' "
                   "WHERE request_id = 'r0'")  # fmt: skip
    rows, images = prune_store(log, datetime.now(UTC) - timedelta(days=1))
    assert (rows, images) == (1, 0), "an image another request still links was deleted"
    assert sorted(read_kept(tmp_path)["request_id"]) == ["r1", "r2"]
    with log.transaction() as db:
        db.execute("UPDATE predictions SET time = '2000-01-01T00:00:00.000000+00:00'")
    assert prune_store(log, datetime.now(UTC) - timedelta(days=1)) == (2, 2)
    assert not list(kept_root(tmp_path).rglob("*.png")) and read_predictions(tmp_path).empty
    with log.transaction() as db:
        assert db.execute("SELECT COUNT(*) FROM feedback").fetchone()[0] == 0
    keeper.close(), log.close()


def bytes_of(paths) -> int:
    """Their sizes together; a file retention deleted meanwhile counts as gone."""
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def test_soak_with_retention_the_store_stops_growing(tmp_path) -> None:
    """Steady traffic, 6 s and 1,000 images at least, 1.5 s retention: rows, files, bytes plateau.

    The bytes retention bounds are the database file and the kept files; the
    write-ahead log beside them grows until a checkpoint catches up, whatever
    the retention, and is bounded by the store's own ``journal_size_limit``.
    """
    serve = SERVE.model_copy(update={"retention_days": 1.5 / 86400})
    log = PredictionLog(tmp_path)
    keeper = ImageKeeper(log, serve, prune_every_s=0.25, seed=0)
    sizes, i, started = [], 0, time.monotonic()
    # At least 6 s (four retention windows) and at least 1,000 images: on a loaded machine
    # 6 s alone served exactly 1,000 once, too few for the plateau to be read.
    while time.monotonic() - started < 6 or i <= 1000:
        for _ in range(10):
            serve_one(log, keeper, i, png(24, i), 64)
            i += 1
        time.sleep(0.02)
        if i % 100 == 0:
            keeper.flush()
            files = list(kept_root(tmp_path).rglob("*.png"))
            disk = bytes_of([*tmp_path.glob("*.sqlite"), *files])
            wal = bytes_of(tmp_path.glob("*.sqlite-wal"))
            rows = len(read_predictions(tmp_path))
            sizes.append((time.monotonic() - started, rows, len(files), disk, wal))
    keeper.close(), log.close()
    late = [s for s in sizes if s[0] > 3]  # after twice the retention
    assert keeper.counts.pruned_rows > i / 3 and keeper.counts.pruned_images > i / 3
    peak_rows = max(s[1] for s in late)
    assert peak_rows < 0.6 * i, f"{peak_rows} rows of {i} still stored: retention did not hold"
    first_half = max(s[3] for s in late[: len(late) // 2])
    second_half = max(s[3] for s in late[len(late) // 2 :])
    assert second_half < 1.5 * first_half, f"store kept growing: {sizes}"
    assert max(s[2] for s in late) < 0.6 * i
    assert max(s[4] for s in sizes) <= 64 << 20, "the log outgrew journal_size_limit"


def test_a_re_decode_holds_the_pixel_budget_and_a_full_budget_skips_it(tmp_path) -> None:
    from contextlib import contextmanager

    held = []

    @contextmanager
    def hold(pixels: int):
        held.append(pixels)
        if len(held) > 1:
            raise RuntimeError("server busy: the pixel budget stayed full")
        yield

    log = PredictionLog(tmp_path)
    keeper = ImageKeeper(log, SERVE, seed=0, hold=hold)
    for i, data in enumerate((png(300, 1), png(300, 2), png(40, 3))):
        serve_one(log, keeper, i, data, 64)
    keeper.flush()
    assert held == [300 * 300, 300 * 300], "the small image needs no decode, no budget"
    assert keeper.counts.no_pixel_budget == 1 and keeper.counts.kept == 2
    assert sorted(read_kept(tmp_path)["request_id"]) == ["r0", "r2"]
    keeper.close(), log.close()
