"""The prediction service: images in, top-k labels with probabilities out.

Run it with ``bentoml serve services.service:Classifier`` from the project
root (or ``transferops serve``). Two BentoML services in one server:

- ``Classifier`` (the entry service) owns HTTP: ``/v1/classify``,
  ``/v1/feedback`` and ``/v1/metadata`` (a FastAPI app, so every refusal is a
  4xx that names the problem), the optional API key, input safety
  (``transferops.data.imagecheck.decode_upload``), and the prediction log;
- ``Model`` owns the network: a batchable ``predict`` that BentoML feeds
  with adaptive batching across requests. It serves the champion
  (``<paths.models>/champion.json``) unless ``TRANSFEROPS_MODEL_TAG`` pins a
  model, and switches to a newly promoted champion between two batches
  without dropping a request.

BentoML's own ``/livez``, ``/readyz`` and ``/metrics`` stay as they are; the
OpenAPI page at ``/`` lists every route.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
import uuid
from collections import OrderedDict
from pathlib import Path

import bentoml
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from transferops.config import load_params
from transferops.registry.champion import CHAMPION, current
from transferops.runtime import configure_runtime

with bentoml.importing():
    import torch

    from transferops.data.imagecheck import BadImage, decode_upload
    from transferops.data.imagestats import STAT_NAMES, image_statistics
    from transferops.data.pictures import to_rgb
    from transferops.logs.predictions import PredictionLog, PredictionRecord, has_request, utc_now
    from transferops.models.bnshift import StageProbe
    from transferops.models.classifier import eval_transform, load_classifier
    from transferops.registry.store import stored_model

PARAMS = load_params(Path(os.environ.get("TRANSFEROPS_PARAMS", "params.yaml")))
configure_runtime(PARAMS.paths.bentoml_home)
SERVE = PARAMS.serve
PICTURE = PARAMS.data.picture()
log = logging.getLogger(__name__)
RAW_TYPES = ("image/", "application/octet-stream")  # one image as the whole body
RECENT_IDS = 100_000


def served_tag() -> str:
    """``TRANSFEROPS_MODEL_TAG`` when set, else the champion; never an ungated candidate."""
    pinned = os.environ.get("TRANSFEROPS_MODEL_TAG")
    if pinned:
        return pinned
    record = current(PARAMS.paths.models)
    if record is None:
        raise RuntimeError(
            f"no champion in {PARAMS.paths.models}/champion.json: run `transferops gate` "
            "(the first packaged model becomes champion) or `transferops promote TAG`"
        )
    return record.tag


class Loaded:
    """One packaged model, ready to predict; replaced whole when the champion changes."""

    def __init__(self, tag: str) -> None:
        stored = stored_model(tag)
        self.tag = str(stored.tag)
        self.model, self.config = load_classifier(Path(stored.path))
        self.transform = eval_transform(self.config)
        self.probe = StageProbe(self.model)
        self.info = stored.info

    def predict(self, images: list[np.ndarray]) -> list[dict]:
        batch = torch.stack([self.transform(Image.fromarray(a)) for a in images])
        embeddings, probabilities, distances = self.probe.run(batch)
        top_k = min(SERVE.top_k, len(self.config.classes))
        results = []
        for embedding, probs, bn in zip(embeddings, probabilities, distances, strict=True):
            order = probs.argsort()[::-1][:top_k]
            results.append(
                {
                    "tag": self.tag,
                    "embedding": embedding,
                    "probabilities": probs,
                    "bn": bn,
                    "top_k": [
                        {"label": self.config.classes[i], "probability": float(probs[i])}
                        for i in order
                    ],
                }
            )
        return results


@bentoml.service(traffic={"timeout": 60})
class Model:
    """The network behind the API, following the champion."""

    # Declared, so `bentoml build` packs the champion into the Bento; later
    # champions are loaded from the store as they are promoted.
    model_ref = bentoml.models.BentoModel(served_tag())

    def __init__(self) -> None:
        torch.set_num_threads(PARAMS.threads)
        self.loaded = Loaded(str(self.model_ref.tag))
        self._stop = threading.Event()
        if not os.environ.get("TRANSFEROPS_MODEL_TAG"):
            threading.Thread(target=self._follow_champion, daemon=True).start()

    def _follow_champion(self) -> None:
        """Load a newly promoted champion beside the serving one, then swap the reference.

        A batch holds the model it started with, so no request sees a half
        switch and none is dropped; a model that fails to load is logged and
        the old one keeps serving.
        """
        pointer = Path(PARAMS.paths.models) / CHAMPION
        seen = None  # the first poll checks the tag: a promotion during start-up is not missed
        while not self._stop.wait(SERVE.switch_poll_s):
            stamp = pointer.stat().st_mtime_ns if pointer.exists() else None
            if stamp == seen:
                continue
            seen = stamp
            try:
                tag = served_tag()
                if tag != self.loaded.tag:
                    self.loaded = Loaded(tag)  # one assignment: atomic for the batches
                    log.info("now serving the new champion %s", tag)
            except Exception:
                log.exception("could not switch champion; still serving %s", self.loaded.tag)

    @bentoml.api(
        batchable=SERVE.batching,
        max_batch_size=SERVE.max_batch_size,
        max_latency_ms=SERVE.max_latency_ms,
    )
    def predict(self, images: list[np.ndarray]) -> list[dict]:
        """Top-k, probabilities and embedding for each RGB uint8 image (H, W, 3)."""
        return self.loaded.predict(images)

    @bentoml.api
    def describe(self) -> dict:
        info = self.loaded.info
        return {
            "model": self.loaded.tag,
            "classes": self.loaded.config.classes,
            "labels": dict(info.labels),
            "metadata": dict(info.metadata),
        }


# --- HTTP: the entry service's routes ---------------------------------------

app = FastAPI(
    title="transferops classifier",
    description="Image classification with the champion model; see docs/serving.md.",
)


@app.exception_handler(HTTPException)
async def _named_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse({"error": error.detail}, status_code=error.status_code)


def require_key(request: Request) -> None:
    """With ``serve.api_key_env`` set, the ``X-API-Key`` header must hold that key."""
    if SERVE.api_key_env is None:
        return
    expected = os.environ.get(SERVE.api_key_env, "")
    given = request.headers.get("x-api-key", "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key")


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


async def read_uploads(request: Request) -> list[tuple[str, bytes, str | None]]:
    """(name, bytes, group) of every image in the request: multipart files or a raw body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = SERVE.max_images * SERVE.max_image_bytes + 64_000  # room for multipart framing
    if media == "multipart/form-data":
        body = await read_body(request, limit)

        async def replay() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(
                max_files=SERVE.max_images + 1, max_fields=SERVE.max_images + 1
            )
        except Exception as err:  # malformed multipart, too many parts
            raise HTTPException(400, f"unreadable multipart body: {err}") from err
        files = form.getlist("images")
        groups = [str(g) for g in form.getlist("group")]
        if any(isinstance(f, str) for f in files):
            raise HTTPException(400, "field 'images' must hold files, not text (no URLs)")
        uploads = [(f.filename or f"images[{i}]", await f.read()) for i, f in enumerate(files)]
    elif media.startswith(RAW_TYPES):
        body = await read_body(request, SERVE.max_image_bytes)
        uploads = [("body", body)]
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
    if len(uploads) > SERVE.max_images:
        raise HTTPException(413, f"{len(uploads)} images > serve.max_images = {SERVE.max_images}")
    if len(groups) not in (0, 1, len(uploads)):
        raise HTTPException(
            400, f"{len(groups)} 'group' values for {len(uploads)} images: give one, or one each"
        )
    groups = groups * len(uploads) if len(groups) == 1 else groups or [None] * len(uploads)
    return [(n, d, g) for (n, d), g in zip(uploads, groups, strict=True)]


def decode_all(uploads: list[tuple[str, bytes, str | None]]) -> list[tuple[np.ndarray, dict]]:
    """RGB arrays and image statistics; the first bad image refuses the request (4xx)."""
    decoded = []
    for name, data, _ in uploads:
        try:
            image = decode_upload(
                data, max_bytes=SERVE.max_image_bytes, max_pixels=SERVE.max_pixels, name=name
            )
        except BadImage as err:
            raise HTTPException(err.status, str(err)) from err
        # Flattened and padded as in training and the reference (data/pictures.py).
        rgb = to_rgb(image, PICTURE)
        stats = dict(zip(STAT_NAMES, image_statistics(rgb).tolist(), strict=True))
        decoded.append((np.asarray(rgb), stats))
    return decoded


async def predict(service, arrays: list[np.ndarray], attempts: int = 7) -> list[dict]:
    """The model service's answers, retried with backoff when it sheds load or a connection drops.

    BentoML's batcher answers 503 when its queue cannot be served in
    ``serve.max_latency_ms``; keep-alive connections to the model worker can
    close just as a request reuses them (seen while it loads a new champion);
    once, under load, an answer the model worker sent never arrived, so each
    call also has ``serve.model_timeout_s``.
    Inference is idempotent, so sending again is safe; backing off here turns
    a burst into queueing (about 3 s at most) instead of errors.
    """
    import aiohttp

    for attempt in range(attempts):
        try:
            async with asyncio.timeout(SERVE.model_timeout_s):
                return await service.model.to_async.predict(arrays)
        except (
            TimeoutError,  # an answer lost between the processes (seen once under load)
            bentoml.exceptions.ServiceUnavailable,
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            RuntimeError,
        ) as err:
            if isinstance(err, RuntimeError) and str(err) != "Connection closed.":
                raise  # aiohttp's only RuntimeError here is a closed connection
            if attempt == attempts - 1:
                raise HTTPException(503, f"model busy or unreachable ({err}); retry") from err
            await asyncio.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


@app.post("/classify", dependencies=[Depends(require_key)])
async def classify(request: Request) -> JSONResponse:
    """Top-k labels for one or many images.

    Multipart: files in ``images`` (repeat the field), optional ``group``
    (one for all, or one per image). Raw: one image as the body
    (``Content-Type: image/*``), optional ``X-Group`` header.
    """
    service = bentoml.get_current_service()
    uploads = await read_uploads(request)
    decoded = await run_in_threadpool(decode_all, uploads)
    answers = await predict(service, [array for array, _ in decoded])
    now, results, records = utc_now(), [], []
    for (_, _, group), (_, stats), answer in zip(uploads, decoded, answers, strict=True):
        request_id = uuid.uuid4().hex
        top = answer["top_k"]
        results.append(
            {
                "request_id": request_id,
                "model": answer["tag"],
                "label": top[0]["label"],
                "top_k": top,
                "group": group,
            }
        )
        records.append(
            PredictionRecord(
                request_id=request_id,
                time=now,
                model_tag=answer["tag"],
                label=top[0]["label"],
                confidence=top[0]["probability"],
                probabilities=np.asarray(answer["probabilities"]).tolist(),
                embedding=np.asarray(answer["embedding"]),
                stats=stats,
                group=group,
                bn=np.asarray(answer["bn"]).tolist(),
            )
        )
    # Written (to the page cache) before the answer: an acknowledged prediction
    # survives a killed server; the thread keeps the event loop serving others.
    await run_in_threadpool(service.log.append, records)
    service.remember(r.request_id for r in records)
    return JSONResponse(results)


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=64)
    label: str = Field(min_length=1, max_length=200)


@app.post("/feedback", dependencies=[Depends(require_key)])
async def feedback(item: Feedback) -> dict:
    """The true label of an earlier prediction (for per-group accuracy in monitoring)."""
    service = bentoml.get_current_service()
    classes = (await service.model.to_async.describe())["classes"]
    if item.label not in classes:
        raise HTTPException(400, f"label {item.label!r} is not one of the classes {classes}")
    known = item.request_id in service.recent or await run_in_threadpool(
        has_request, PARAMS.paths.prediction_log, item.request_id
    )
    if not known:
        raise HTTPException(404, f"unknown request_id {item.request_id!r}")
    await run_in_threadpool(service.log.append_feedback, item.request_id, item.label)
    return {"request_id": item.request_id, "label": item.label, "recorded": True}


@app.get("/metadata", dependencies=[Depends(require_key)])
async def metadata() -> dict:
    """The serving model's tag, classes and lineage."""
    return await bentoml.get_current_service().model.to_async.describe()


@bentoml.asgi_app(app, path="/v1")
@bentoml.service(workers=SERVE.workers, traffic={"timeout": 60})
class Classifier:
    """Classifies images with the champion model; logs every prediction for monitoring."""

    model = bentoml.depends(Model)

    def __init__(self) -> None:
        if SERVE.api_key_env and not os.environ.get(SERVE.api_key_env):
            raise RuntimeError(
                f"serve.api_key_env = {SERVE.api_key_env} but that environment variable is empty"
            )
        self.log = PredictionLog(PARAMS.paths.prediction_log, SERVE.log_fsync_s)
        # This worker's latest request ids, for quick feedback checks (others: the log).
        self.recent: OrderedDict[str, None] = OrderedDict()

    def remember(self, request_ids) -> None:
        for request_id in request_ids:
            self.recent[request_id] = None
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)
