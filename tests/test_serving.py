"""A real `bentoml serve` on localhost: bad input, a killed server, a promotion under traffic.

The server follows this module's own champion folder and writes its own
prediction log; the model is the session's trained one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from flows.serving import running_service, start_server, stop_server
from services.client import png_bytes
from tests.conftest import write_params
from tests.imagefiles import bomb_header
from tests.models import always_answering
from transferops.config import load_params
from transferops.logs.predictions import read_predictions
from transferops.registry import champion

pytestmark = [pytest.mark.integration, pytest.mark.slow]
GOOD = png_bytes(Image.new("L", (28, 28), 128))
NOISE = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), np.uint8)))


@pytest.fixture(scope="module")
def served(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("serving")
    params_file = write_params(
        root / "params.yaml",
        {"paths.models": str(root / "models"), "paths.prediction_log": str(root / "log")},
        base=trained_project,
    )
    params = load_params(params_file)
    tag = json.loads((params.paths.package / "bento_model.json").read_text())["tag"]
    champion.promote(params.paths.models, tag, reason="serving tests", via="test")
    env = {"TRANSFEROPS_PARAMS": str(params_file), "TRANSFEROPS_MODEL_TAG": ""}
    with running_service(log_file=root / "serve.log", env=env) as url:
        yield {"url": url, "params": params, "tag": tag, "root": root, "env": env}


def bad_requests(folder: Path) -> dict[str, tuple[dict, int, str]]:
    """Each bad input: httpx keyword arguments, the status, words of the error."""
    return {
        "not an image": (
            {"files": [("images", ("a.png", b"just text, no pixels", "image/png"))]},
            400,
            "not an image",
        ),
        "truncated image": (
            {"files": [("images", ("a.png", NOISE[: 2 * len(NOISE) // 3], "image/png"))]},
            400,
            "truncated",
        ),
        "empty body": ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        "body over the size limit": (
            {"content": b"\0" * 2_000_001, "headers": {"content-type": "image/png"}},
            413,
            "limit",
        ),
        "decompression bomb": (
            {
                "content": bomb_header(folder / "bomb.png", side=20_000).read_bytes(),
                "headers": {"content-type": "image/png"},
            },
            413,
            "decompression bomb",
        ),
        "too many images": (
            {"files": [("images", (f"{i}.png", GOOD, "image/png")) for i in range(17)]},
            413,
            "serve.max_images",
        ),
        "wrong content type": ({"json": {"images": ["a.png"]}}, 415, "not accepted"),
        "a URL instead of a file": (
            {"files": [("images", (None, b"http://127.0.0.1:9/x.png"))]},  # a text part
            400,
            "must hold files",
        ),
        "no image field": ({"files": [("other", ("a.png", GOOD, "image/png"))]}, 400, "no image"),
    }


CASES = [
    "not an image",
    "truncated image",
    "empty body",
    "body over the size limit",
    "decompression bomb",
    "too many images",
    "wrong content type",
    "a URL instead of a file",
    "no image field",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gets_a_named_4xx_and_the_server_keeps_serving(
    served: dict, case: str, tmp_path: Path
) -> None:
    request, status, words = bad_requests(tmp_path)[case]
    with httpx.Client(base_url=served["url"], timeout=30) as client:
        response = client.post("/v1/classify", **request)
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
        good = client.post("/v1/classify", files=[("images", ("ok.png", GOOD, "image/png"))])
        assert good.status_code == 200, good.text


def test_unknown_request_id_in_feedback_is_404(served: dict) -> None:
    with httpx.Client(base_url=served["url"], timeout=30) as client:
        response = client.post("/v1/feedback", json={"request_id": "0" * 32, "label": "bag"})
    assert response.status_code == 404 and "unknown request_id" in response.json()["error"]


def hammer(url: str, stop: threading.Event, outcomes: list, workers: int = 4) -> list:
    """Send one-image requests from ``workers`` threads until ``stop``; keep every outcome."""

    def loop() -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post(
                        "/v1/classify", files=[("images", ("x.png", GOOD, "image/png"))]
                    )
                    ok = response.status_code == 200
                    outcomes.append(
                        (response.status_code, response.json() if ok else response.text)
                    )
                except httpx.HTTPError as err:
                    outcomes.append((None, repr(err)))

    threads = [threading.Thread(target=loop) for _ in range(workers)]
    for thread in threads:
        thread.start()
    return threads


def test_promotion_during_traffic_switches_model_without_a_failed_request(served: dict) -> None:
    params = served["params"]
    newcomer = always_answering(served["tag"], "bag")
    stop, outcomes = threading.Event(), []
    threads = hammer(served["url"], stop, outcomes)
    time.sleep(2)
    champion.promote(params.paths.models, newcomer, reason="switch under traffic", via="test")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # until the new champion answers
        if any(status == 200 and body[0]["model"] == newcomer for status, body in outcomes[-8:]):
            break
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    failures = [o for o in outcomes if o[0] != 200]
    assert not failures, failures[:3]
    models = [body[0]["model"] for _, body in outcomes]
    assert served["tag"] in models and newcomer in models, "served by both, in turn"
    switched = models.index(newcomer)
    assert set(models[switched + 8 :]) <= {newcomer}, "no flapping back after the switch"
    newcomers = [body[0] for _, body in outcomes[switched:] if body[0]["model"] == newcomer]
    assert all(answer["label"] == "bag" for answer in newcomers), "the new model answers"
    champion.promote(params.paths.models, served["tag"], reason="restore", via="test")


def test_killed_server_loses_no_acknowledged_prediction(served: dict, tmp_path: Path) -> None:
    """SIGKILL the whole server mid-traffic: every answered request id is in the log."""
    log_dir = tmp_path / "log"
    params_file = write_params(
        tmp_path / "params.yaml",
        {"paths.prediction_log": str(log_dir)},
        base=Path(served["env"]["TRANSFEROPS_PARAMS"]),
    )
    process, url = start_server(env={**served["env"], "TRANSFEROPS_PARAMS": str(params_file)})
    try:
        stop, outcomes = threading.Event(), []
        threads = hammer(url, stop, outcomes, workers=6)
        time.sleep(3)
        stop_server(process, kill=True)  # SIGKILL: the arbiter and every worker at once
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop_server(process, kill=True)
    acknowledged = {body[0]["request_id"] for status, body in outcomes if status == 200}
    assert len(acknowledged) > 10, "traffic flowed before the kill"
    assert any(status is None for status, _ in outcomes), "some requests died with the server"
    logged = set(read_predictions(log_dir)["request_id"])
    assert acknowledged <= logged, f"{len(acknowledged - logged)} acknowledged but not logged"


def test_api_key_when_configured(served: dict, tmp_path: Path) -> None:
    params_file = write_params(
        tmp_path / "params.yaml",
        {"serve.api_key_env": "TRANSFEROPS_TEST_KEY", "paths.prediction_log": str(tmp_path)},
        base=Path(served["env"]["TRANSFEROPS_PARAMS"]),
    )
    env = {
        **served["env"],
        "TRANSFEROPS_PARAMS": str(params_file),
        "TRANSFEROPS_TEST_KEY": "s3cret",
    }
    image = [("images", ("ok.png", GOOD, "image/png"))]
    with running_service(env=env) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/classify", files=image).status_code == 401
        wrong = client.post("/v1/classify", files=image, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["error"]
        assert client.get("/v1/metadata").status_code == 401
        right = client.post("/v1/classify", files=image, headers={"X-API-Key": "s3cret"})
        assert right.status_code == 200, right.text
        assert client.get("/readyz").status_code == 200, "probes need no key"
