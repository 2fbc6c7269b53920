"""The prediction service: images in, top-k labels with probabilities out.

Run it with ``bentoml serve services.service:Classifier`` from the project
root (or ``transferops serve``). One BentoML service, one process hop: each
of its ``serve.workers`` processes owns HTTP (``/v1/classify``,
``/v1/feedback``, ``/v1/metadata``: a FastAPI app, so every refusal is a 4xx
or 503 that names the problem), the optional API key, decoding, the model
and the prediction store:

- a request's images are read and checked (``services/uploads.py``), decoded
  one at a time within the process's pixel and byte budgets
  (``services/limits.py``), shrunk to the model's size and cut to small uint8
  arrays, in a thread;
- the batcher (``services/batching.py``) hands the model everything waiting,
  up to ``serve.max_batch_size``, in one forward pass that also yields the
  embeddings and per-stage BatchNorm distances monitoring needs;
- the records are committed to the store before the answer leaves; the
  images the keeping policy samples (``serve.keep``) are handed to a writer
  thread that stores them after it (``transferops/logs/kept.py``).

The model follows the champion and switches to a newly promoted one between
two batches (``services/following.py``). Params are read when the module is
imported, because BentoML's decorators take the worker settings then; no
champion is needed at import, and neither is torch: ``bentoml serve``'s parent
process imports this module only for those settings, and the workers load
torch with the model (the import takes 1.6 s instead of 8.1 on 2 cores,
``benchmarks/import_costs.py``). ``transferops bento`` pins the champion
(``TRANSFEROPS_MODEL_TAG``) so that ``bentoml build`` packs it. BentoML's own
``/livez``, ``/readyz`` and ``/metrics`` stay as they are. See docs/serving.md.
"""

from __future__ import annotations

import hmac
import math
import os
from collections import OrderedDict
from pathlib import Path

import bentoml
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from services.batching import Batcher, Busy
from services.limits import Budget
from transferops.config import load_params
from transferops.runtime import (
    configure_runtime,
    end_of_startup,
    pause_garbage_collector,
    return_decoded_images_to_the_os,
    select_device,
    set_threads,
)

with bentoml.importing():
    import orjson

    from services.answers import answers_and_records
    from services.following import ChampionFollower, pinned_tag
    from services.uploads import header_sizes, prepare_all, read_body, read_uploads
    from transferops.logs.kept import ImageKeeper
    from transferops.logs.predictions import PredictionLog, has_request, utc_now

PARAMS = load_params(Path(os.environ.get("TRANSFEROPS_PARAMS", "params.yaml")))
configure_runtime(PARAMS.paths.bentoml_home)
return_decoded_images_to_the_os()  # freed pixels go back: RSS stays bounded
SERVE = PARAMS.serve
RECENT_IDS = 100_000  # request ids each worker remembers for quick feedback checks
# Requests of at most this many pixels (by their headers) are decoded on the event loop:
# a 256 x 256 image takes well under a millisecond, less than a hop to a thread and back
# (docs/serving.md: where the time goes). Bigger ones go to a thread.
INLINE_PIXELS = 256 * 256
FEEDBACK_BYTES = 4_096  # a feedback body is a request id and a label

app = FastAPI(
    title="transferops classifier",
    description="Image classification with the champion model; see docs/serving.md.",
)


class Answer(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


@app.exception_handler(HTTPException)
async def _named_error(request: Request, error: HTTPException) -> JSONResponse:
    return JSONResponse(
        {"error": error.detail}, status_code=error.status_code, headers=error.headers
    )


async def on_the_loop(function, *args):
    """``function(*args)`` right here: for work smaller than a hop to a thread."""
    return function(*args)


def busy(error: Busy) -> HTTPException:
    return HTTPException(503, str(error), headers={"Retry-After": str(error.retry_after)})


def exposed_addresses() -> list[str]:
    """Addresses beyond loopback this process listens on (BentoML hands its socket to workers)."""
    import ipaddress

    import psutil

    return [
        f"{c.laddr.ip}:{c.laddr.port}"
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and not ipaddress.ip_address(c.laddr.ip).is_loopback
    ]


def api_key() -> str:
    """The key callers must send, from the variable ``serve.api_key_env`` names ("" = none)."""
    return os.environ.get(SERVE.api_key_env, "")


def check_exposure() -> None:
    """Refuse to serve beyond localhost without an API key, unless explicitly allowed."""
    if not api_key() and not SERVE.allow_unauthenticated:
        exposed = exposed_addresses()
        if exposed:
            raise RuntimeError(
                f"listening on {', '.join(exposed)} (beyond localhost) without an API key: set "
                f"{SERVE.api_key_env} (serve.api_key_env) to a secret (docs/serving.md), "
                "or serve.allow_unauthenticated: true behind a gateway of your own"
            )


async def require_key(request: Request) -> None:
    """With a key in ``serve.api_key_env``'s variable, ``X-API-Key`` must hold it."""
    expected = api_key()
    if not expected:
        return  # localhost only: check_exposure refused anything wider at start-up
    given = request.headers.get("x-api-key", "")
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key")


@app.post("/classify", dependencies=[Depends(require_key)])
async def classify(request: Request) -> Answer:
    """Top-k labels for one or many images (multipart ``images`` + ``group``, or a raw body)."""
    service = bentoml.get_current_service()
    try:
        uploads, held = await read_uploads(request, SERVE, service.body_bytes)
        try:
            sizes = header_sizes(uploads, SERVE)
            loaded = service.loaded
            # Small requests: on the loop and outside the pixel budget (they never wait).
            small = sum(w * h for w, h in sizes) <= INLINE_PIXELS
            where, budget = (on_the_loop, None) if small else (run_in_threadpool, service.pixels)
            with service.batcher.announced(len(uploads)):
                prepared = await where(
                    prepare_all, uploads, sizes, SERVE, loaded.picture, loaded.split, budget
                )
        finally:
            service.body_bytes.give(held)
        answers = await service.batcher.submit(prepared)
    except Busy as error:
        raise busy(error) from error
    results, records = answers_and_records(uploads, prepared, answers, utc_now())
    # Committed before the answer: an acknowledged prediction survives a killed server.
    # On the event loop: a WAL commit is one write(2) of a few pages, cheaper than a
    # hop to a thread and back (docs/serving.md: where the time goes).
    service.log.append(records)
    service.remember(r.request_id for r in records)
    side = math.ceil(SERVE.keep.side_factor * loaded.split.side)
    for (_, data, _), record in zip(uploads, records, strict=True):
        service.keeper.offer(record.request_id, data, side)  # written after the answer
    return Answer(results)


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    label: str = Field(min_length=1, max_length=200)


@app.post("/feedback", dependencies=[Depends(require_key)])
async def feedback(request: Request) -> dict:
    """The true label of an earlier prediction: monitoring's accuracy, and the training data
    of the next harvest (docs/flywheel.md). The first label of a request id stays: the same
    label again is a no-op (``recorded: false``), another one is refused with 409."""
    service = bentoml.get_current_service()
    body = await read_body(request, FEEDBACK_BYTES)
    try:
        item = Feedback.model_validate_json(body)
    except ValueError as err:
        raise HTTPException(
            422, f"feedback body must be JSON {{request_id, label}}: {err}"
        ) from err
    classes = service.loaded.config.classes
    if item.label not in classes:
        raise HTTPException(400, f"label {item.label!r} is not one of the classes {classes}")
    known = item.request_id in service.recent or await run_in_threadpool(
        has_request, PARAMS.paths.prediction_log, item.request_id
    )
    if not known:
        raise HTTPException(404, f"unknown request_id {item.request_id!r}")
    kept, recorded = await run_in_threadpool(
        service.log.append_feedback, item.request_id, item.label
    )
    if kept != item.label:
        raise HTTPException(
            409,
            f"request_id {item.request_id!r} already has the label {kept!r}: the first label "
            "of a request stays (docs/security.md)",
        )
    return {"request_id": item.request_id, "label": kept, "recorded": recorded}


@app.get("/metadata", dependencies=[Depends(require_key)])
async def metadata() -> dict:
    """The serving model's tag, classes and lineage, and what this worker kept of the traffic."""
    service = bentoml.get_current_service()
    return service.loaded.describe() | {"keeping": service.keeper.describe()}


@bentoml.asgi_app(app, path="/v1")
@bentoml.service(workers=SERVE.workers, traffic={"timeout": 60})
class Classifier:
    """Classifies images with the champion model; logs every prediction for monitoring."""

    if pinned_tag():  # declared, so that `bentoml build` packs it into the Bento
        model_ref = bentoml.models.BentoModel(pinned_tag())

    def __init__(self) -> None:
        check_exposure()
        # torch and the model load with the cyclic collector paused. They live as long as
        # the process: frozen out of the collector's sight, they are not walked again by
        # its full passes under traffic (transferops/runtime.py).
        pause_garbage_collector()
        try:
            set_threads(SERVE.threads)
            self.follower = ChampionFollower(
                PARAMS.paths.models,
                SERVE.top_k,
                SERVE.switch_poll_s,
                device=select_device(SERVE.device),
            ).start()
        finally:
            end_of_startup()
        self.batcher = Batcher(
            lambda items: self.follower.loaded.predict(items),
            SERVE.max_batch_size if SERVE.batching else 1,
            SERVE.max_queue,
            SERVE.batch_wait_ms / 1000,
        )
        self.pixels = Budget(
            "serve.max_pixels_in_flight", SERVE.max_pixels_in_flight, SERVE.budget_wait_s, "pixels"
        )
        self.body_bytes = Budget(
            "serve.max_bytes_in_flight", SERVE.max_bytes_in_flight, SERVE.budget_wait_s, "bytes"
        )
        self.log = PredictionLog(PARAMS.paths.prediction_log, SERVE.log_fsync_s)
        self.keeper = ImageKeeper(self.log, SERVE, hold=self.pixels.hold)
        self.recent: OrderedDict[str, None] = OrderedDict()  # this worker's latest request ids

    @property
    def loaded(self):
        """The model serving now (it changes whole when the champion does)."""
        return self.follower.loaded

    def remember(self, request_ids) -> None:
        for request_id in request_ids:
            self.recent[request_id] = None
        while len(self.recent) > RECENT_IDS:
            self.recent.popitem(last=False)
