"""The model a service serves, and following the champion as it changes.

:func:`served_tag` says which model: ``TRANSFEROPS_MODEL_TAG`` when it pins
one, else the champion of ``paths.models/champion.json``; never an ungated
candidate. :class:`Loaded` is one packaged model ready to predict (weights,
transform, BatchNorm probe). :class:`ChampionFollower` polls the champion
record and swaps in a newly promoted model between two batches, loading it
beside the serving one first: no request sees half a switch, none is
dropped, and a model that fails to load leaves the old one serving; it is
tried again with backoff (the poll period, doubling, at most
``MAX_RETRY_S``), so a store that was briefly unreadable does not leave the
service on the old model until the next promotion. No BentoML here: the
following is tested on its own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from transferops.registry.champion import CHAMPION, current
from transferops.registry.store import stored_model
from transferops.runtime import autocast, place_model, to_device

log = logging.getLogger(__name__)
PIN = "TRANSFEROPS_MODEL_TAG"
MAX_RETRY_S = 300.0  # a champion that failed to load is tried again at least this often


def pinned_tag() -> str | None:
    return os.environ.get(PIN) or None


def served_tag(models_dir: Path) -> str:
    """The pinned model, else the champion; a clear error when there is none."""
    tag = pinned_tag()
    if tag:
        return tag
    record = current(models_dir)
    if record is None:
        raise RuntimeError(
            f"no champion in {models_dir}/champion.json: run `transferops gate` "
            "(the first packaged model becomes champion) or `transferops promote TAG`"
        )
    return record.tag


class Loaded:
    """One packaged model, ready to predict; replaced whole when the champion changes.

    On ``device`` "cuda" it runs channels-last under bf16 autocast, batches pinned and
    copied asynchronously; the BatchNorm probe reads the same activations in float32.
    """

    def __init__(self, tag: str, top_k: int, device: str = "cpu") -> None:
        stored = stored_model(tag)
        self._load(str(stored.tag), Path(stored.path), top_k, device)
        self.info = stored.info

    @classmethod
    def from_folder(cls, folder: Path, top_k: int, device: str = "cpu") -> Loaded:
        """A saved classifier outside the model store (the GPU check, which has no BentoML)."""
        loaded = cls.__new__(cls)
        loaded._load(Path(folder).name, Path(folder), top_k, device)
        loaded.info = None
        return loaded

    def _load(self, tag: str, folder: Path, top_k: int, device: str) -> None:
        from transferops.models.bnshift import StageProbe
        from transferops.models.classifier import InputSplit, load_classifier

        self.tag, self.device = tag, device
        self.model, self.config = load_classifier(folder)
        self.model = place_model(self.model, device)  # channels-last, BatchNorm probe included
        self.split = InputSplit(self.config)
        self.picture = self.config.picture_settings()
        self.probe = StageProbe(self.model)
        self.top_k = min(top_k, len(self.config.classes))

    def predict(self, images: list) -> list[dict]:
        """Top-k, probabilities, embedding and per-stage BatchNorm distances per image.

        ``images``: ``services.uploads.Prepared`` (cut by an ``InputSplit``; cut
        again here when a new champion wants another input), PIL images or
        (H, W, 3) uint8 arrays.
        """
        batch = self.split.batch([self._pixels(image) for image in images])
        if self.device == "cuda":
            batch = batch.pin_memory()
        batch = to_device(batch, self.device)
        with autocast(self.device):
            embeddings, probabilities, distances = self.probe.run(batch)
        return [
            {
                "tag": self.tag,
                "embedding": embedding,
                "probabilities": probs,
                "bn": bn,
                "top_k": [
                    {"label": self.config.classes[i], "probability": float(probs[i])}
                    for i in probs.argsort()[::-1][: self.top_k]
                ],
            }
            for embedding, probs, bn in zip(embeddings, probabilities, distances, strict=True)
        ]

    def _pixels(self, image) -> np.ndarray:
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if isinstance(image, Image.Image):
            return self.split.pixels(image.convert("RGB"))
        if image.key == self.split.key:
            return image.pixels
        return self.split.pixels(image.small)

    def describe(self) -> dict:
        return {
            "model": self.tag,
            "classes": self.config.classes,
            "labels": dict(self.info.labels),
            "metadata": dict(self.info.metadata),
        }


class ChampionFollower:
    """Keeps ``loaded`` on the champion: a background poll of ``champion.json``."""

    def __init__(
        self,
        models_dir: Path,
        top_k: int,
        poll_s: float,
        tag: str | None = None,
        device: str = "cpu",
    ):
        self.models_dir, self.top_k, self.poll_s = Path(models_dir), top_k, poll_s
        self.device = device
        self.loaded = Loaded(tag or served_tag(self.models_dir), top_k, device)
        self._stop = threading.Event()
        self._seen: int | None = None  # the first poll checks the tag: no promotion missed
        self.failures = 0  # loads of the current champion that failed, in a row
        self._retry_at = 0.0  # monotonic time of the next try after a failure

    def start(self) -> ChampionFollower:
        """Follow in a daemon thread unless a model is pinned."""
        if not pinned_tag():
            threading.Thread(target=self._follow, daemon=True, name="champion").start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def check(self) -> bool:
        """Switch if the champion record changed to another model, or if loading it failed
        before and its backoff has passed; True when it switched."""
        pointer = self.models_dir / CHAMPION
        stamp = pointer.stat().st_mtime_ns if pointer.exists() else None
        retry = self.failures > 0 and time.monotonic() >= self._retry_at
        if stamp == self._seen and not retry:
            return False
        self._seen = stamp
        try:
            tag = served_tag(self.models_dir)
            if tag == self.loaded.tag:
                self.failures = 0
                return False
            self.loaded = Loaded(tag, self.top_k, self.device)  # one assignment: atomic
            self.failures = 0
            log.info("now serving the new champion %s", tag)
            return True
        except Exception:
            self.failures += 1
            delay = min(MAX_RETRY_S, self.poll_s * 2 ** (self.failures - 1))
            self._retry_at = time.monotonic() + delay
            log.exception(
                "could not switch to the champion (try %d); still serving %s; next try in %.0f s",
                self.failures,
                self.loaded.tag,
                delay,
            )
            return False
