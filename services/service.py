"""The prediction service: images in, top-k labels with probabilities out.

Run it with ``bentoml serve services.service:Classifier`` from the project
root (or ``transferops serve``). Two BentoML services in one server:

- ``Classifier`` (the entry) owns HTTP: ``/v1/classify``, ``/v1/feedback``
  and ``/v1/metadata`` (a FastAPI app, so every refusal is a 4xx that names
  the problem), the optional API key, and the prediction log. Parsing and
  checking uploads: ``services/uploads.py``.
- ``Model`` owns the network: a batchable ``predict`` that BentoML feeds with
  adaptive batching across requests; it serves the champion and switches to
  a newly promoted one between two batches (``services/following.py``).

Params are read when the module is imported, because BentoML's decorators
take the batching and worker settings then; no champion is needed at import:
the model worker resolves it when it starts. ``transferops bento`` pins the
champion (``TRANSFEROPS_MODEL_TAG``) so that ``bentoml build`` packs it.
BentoML's own ``/livez``, ``/readyz`` and ``/metrics`` stay as they are.
"""

from __future__ import annotations

import asyncio
import hmac
import os
from collections import OrderedDict
from pathlib import Path

import bentoml
import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from transferops.config import load_params
from transferops.runtime import configure_runtime

with bentoml.importing():
    import torch

    from services.answers import answers_and_records
    from services.following import ChampionFollower, pinned_tag
    from services.uploads import decode_all, read_uploads
    from transferops.logs.predictions import PredictionLog, has_request, utc_now

PARAMS = load_params(Path(os.environ.get("TRANSFEROPS_PARAMS", "params.yaml")))
configure_runtime(PARAMS.paths.bentoml_home)
SERVE = PARAMS.serve
RECENT_IDS = 100_000  # request ids each entry worker remembers for quick feedback checks


@bentoml.service(traffic={"timeout": 60})
class Model:
    """The network behind the API, following the champion."""

    if pinned_tag():  # declared, so that `bentoml build` packs it into the Bento
        model_ref = bentoml.models.BentoModel(pinned_tag())

    def __init__(self) -> None:
        torch.set_num_threads(PARAMS.threads)
        self.follower = ChampionFollower(
            PARAMS.paths.models, SERVE.top_k, SERVE.switch_poll_s
        ).start()

    @bentoml.api(
        batchable=SERVE.batching,
        max_batch_size=SERVE.max_batch_size,
        max_latency_ms=SERVE.max_latency_ms,
    )
    def predict(self, images: list[np.ndarray]) -> list[dict]:
        """Top-k, probabilities and embedding for each RGB uint8 image (H, W, 3)."""
        return self.follower.loaded.predict(images)

    @bentoml.api
    def describe(self) -> dict:
        return self.follower.loaded.describe()


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


def closed_connection(err: Exception) -> bool:
    """aiohttp signals a connection the model worker closed with a bare RuntimeError
    (aiohttp/streams.py, ``StreamReader._wait``); any other RuntimeError is a bug."""
    return isinstance(err, RuntimeError) and str(err) == "Connection closed."


async def call_model(service, arrays: list[np.ndarray], attempts: int = 7) -> list[dict]:
    """The model's answers, retried with backoff when it sheds load or a connection drops.

    BentoML's batcher answers 503 past ``serve.max_latency_ms``; keep-alive
    connections to the model worker can close as a request reuses them; once,
    under load, an answer never arrived, hence ``serve.model_timeout_s``.
    Inference is idempotent, so sending again is safe.
    """
    import aiohttp

    retried = (
        TimeoutError,
        bentoml.exceptions.ServiceUnavailable,
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
    )
    for attempt in range(attempts):
        try:
            async with asyncio.timeout(SERVE.model_timeout_s):
                return await service.model.to_async.predict(arrays)
        except (*retried, RuntimeError) as err:
            if isinstance(err, RuntimeError) and not closed_connection(err):
                raise
            if attempt == attempts - 1:
                raise HTTPException(503, f"model busy or unreachable ({err}); retry") from err
            await asyncio.sleep(0.05 * 2**attempt)
    raise AssertionError("unreachable")


@app.post("/classify", dependencies=[Depends(require_key)])
async def classify(request: Request) -> JSONResponse:
    """Top-k labels for one or many images (multipart ``images`` + ``group``, or a raw body)."""
    service = bentoml.get_current_service()
    uploads = await read_uploads(request, SERVE)
    decoded = await run_in_threadpool(decode_all, uploads, SERVE, PARAMS.data.picture())
    answers = await call_model(service, [array for array, _ in decoded])
    results, records = answers_and_records(
        uploads, [stats for _, stats in decoded], answers, utc_now()
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
        self.recent: OrderedDict[str, None] = OrderedDict()  # this worker's latest request ids

    def remember(self, request_ids) -> None:
        for request_id in request_ids:
            self.recent[request_id] = None
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)
