"""A real `bentoml serve` on localhost: bad input, a killed server, a promotion under traffic.

The server follows this module's own champion folder and writes its own
prediction log; the model is the session's trained one.
"""

from __future__ import annotations

import io
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
from tests.conftest import ROOT, write_params
from tests.imagefiles import bomb_header
from tests.models import always_answering
from transferops.config import load_params
from transferops.logs.predictions import read_predictions
from transferops.registry import champion

# Its module-scoped fixtures are built once: under xdist every test here runs on one worker.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.xdist_group("test_serving"),
]
GOOD = png_bytes(Image.new("L", (28, 28), 128))
NOISE = png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), np.uint8)))
# A large canvas: 120 KB on the wire, 36 million pixels (under serve.max_pixels) decoded.
BIG = png_bytes(Image.new("RGB", (6000, 6000), (200, 30, 30)))


def tga_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (1, 2, 3)).save(buffer, format="TGA")
    return buffer.getvalue()


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
    env = {
        "TRANSFEROPS_PARAMS": str(params_file),
        "TRANSFEROPS_MODEL_TAG": "",
        "TRANSFEROPS_API_KEY": "",
    }
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
        "a group with markup": (
            {"files": [("images", ("a.png", GOOD, "image/png"))], "data": {"group": "<b>$x$</b>"}},
            400,
            "group '<b>$x$</b>'",
        ),
        "a group too long": (
            {"content": GOOD, "headers": {"content-type": "image/png", "x-group": "g" * 65}},
            400,
            "(65 characters) is not accepted",
        ),
        "a format outside the allow-list": (
            {"content": tga_bytes(), "headers": {"content-type": "image/x-tga"}},
            415,
            "image format TGA is not accepted",
        ),
        "images past the request's pixel budget": (
            {"files": [("images", (f"{i}.png", BIG, "image/png")) for i in range(3)]},
            413,
            "serve.max_request_pixels",
        ),
    }


CASES = [
    "a group with markup",
    "a group too long",
    "a format outside the allow-list",
    "images past the request's pixel budget",
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
    served_widely = running_service(env=env, host="0.0.0.0")  # allowed: a key is set
    with served_widely as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/v1/classify", files=image).status_code == 401
        wrong = client.post("/v1/classify", files=image, headers={"X-API-Key": "guess"})
        assert wrong.status_code == 401 and "X-API-Key" in wrong.json()["error"]
        assert client.get("/v1/metadata").status_code == 401
        right = client.post("/v1/classify", files=image, headers={"X-API-Key": "s3cret"})
        assert right.status_code == 200, right.text
        assert client.get("/readyz").status_code == 200, "probes need no key"


def test_feedback_bodies_are_bounded(served: dict) -> None:
    with httpx.Client(base_url=served["url"], timeout=30) as client:
        huge = {"request_id": "0" * 32, "label": "bag", "padding": "x" * 10_000}
        response = client.post("/v1/feedback", json=huge)
    assert response.status_code == 413 and "the limit of 4,096" in response.json()["error"]


# The project's own limits (the tests' params are tighter): images up to 40 Mpx each.
SHIPPED_LIMITS = {
    f"serve.{key}": getattr(load_params(ROOT / "params.yaml").serve, key)
    for key in ("max_pixels", "max_request_pixels", "max_pixels_in_flight", "budget_wait_s")
}


def server_memory(process) -> int:
    """Resident bytes of ``bentoml serve`` and every process it started."""
    import psutil

    root = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def test_a_flood_of_large_canvases_keeps_memory_bounded_and_good_requests_served(
    served: dict, tmp_path: Path
) -> None:
    """Six clients send two 6000 x 6000 images per request while a seventh sends small ones."""
    params_file = write_params(
        tmp_path / "params.yaml",
        {"paths.prediction_log": str(tmp_path / "log"), **SHIPPED_LIMITS},
        base=Path(served["env"]["TRANSFEROPS_PARAMS"]),
    )
    env = {**served["env"], "TRANSFEROPS_PARAMS": str(params_file)}
    process, url = start_server(env=env, log_file=tmp_path / "serve.log")
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for _ in range(10):  # warm: the model, the store, the first answers
                client.post("/v1/classify", files=[("images", ("ok.png", GOOD, "image/png"))])
        baseline, peak, done = server_memory(process), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], server_memory(process))
                time.sleep(0.05)

        big, good = [], []

        def flood() -> None:
            with httpx.Client(base_url=url, timeout=120) as client:
                for _ in range(2):
                    files = [("images", (f"{i}.png", BIG, "image/png")) for i in range(2)]
                    response = client.post("/v1/classify", files=files)
                    big.append((response.status_code, response.headers, response.json()))

        def small() -> None:
            with httpx.Client(base_url=url, timeout=120) as client:
                while not done.is_set():
                    files = [("images", ("ok.png", GOOD, "image/png"))]
                    good.append(client.post("/v1/classify", files=files).status_code)

        watchers = [threading.Thread(target=sample), threading.Thread(target=small)]
        clients = [threading.Thread(target=flood) for _ in range(6)]
        for thread in watchers + clients:
            thread.start()
        for thread in clients:
            thread.join(timeout=300)
        done.set()
        for thread in watchers:
            thread.join(timeout=60)
        after = server_memory(process)
    finally:
        stop_server(process)
    assert len(big) == 12 and any(status == 200 for status, _, _ in big), big[:2]
    for status, headers, body in big:
        assert status == 200 or (
            status == 503
            and int(headers["retry-after"]) >= 1
            and "serve.max_pixels_in_flight" in body["error"]
        ), (status, body)
    assert good and set(good) == {200}, f"small requests in between: {set(good)}"
    growth = (peak[0] - baseline) / 1e9
    assert growth <= 0.5, f"server memory grew {growth:.2f} GB under the flood"
    assert (after - baseline) / 1e9 <= 0.25, "memory went back after the flood"


def test_a_busy_pixel_budget_answers_503_with_retry_after(served: dict, tmp_path: Path) -> None:
    """While one request decodes large canvases, another that does not fit is told to retry."""
    params_file = write_params(
        tmp_path / "params.yaml",
        {
            "paths.prediction_log": str(tmp_path / "log"),
            **SHIPPED_LIMITS,
            "serve.max_pixels_in_flight": 40_000_000,
            "serve.budget_wait_s": 0,
        },
        base=Path(served["env"]["TRANSFEROPS_PARAMS"]),
    )
    env = {**served["env"], "TRANSFEROPS_PARAMS": str(params_file)}
    holder: list = []

    def hold() -> None:  # two canvases one after the other: the budget is busy a while
        with httpx.Client(base_url=url, timeout=120) as client:
            files = [("images", (f"{i}.png", BIG, "image/png")) for i in range(2)]
            holder.append(client.post("/v1/classify", files=files).status_code)

    with running_service(env=env, log_file=tmp_path / "serve.log") as url:
        thread = threading.Thread(target=hold)
        thread.start()
        time.sleep(0.3)
        with httpx.Client(base_url=url, timeout=60) as client:
            refused = client.post(
                "/v1/classify", content=BIG, headers={"content-type": "image/png"}
            )
        thread.join(timeout=120)
    assert holder == [200]
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    error = refused.json()["error"]
    assert "36,000,000" in error and "serve.max_pixels_in_flight = 40,000,000" in error


def test_binding_beyond_localhost_without_a_key_refuses_to_start(
    served: dict, tmp_path: Path
) -> None:
    from flows.serving import bentoml_command, free_port, spawn

    log_file = tmp_path / "serve.log"
    port = free_port()
    process = spawn(bentoml_command(port, host="0.0.0.0"), log_file=log_file, env=served["env"])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "beyond localhost" not in log_file.read_text():
            time.sleep(0.5)
        with pytest.raises(httpx.HTTPError):
            httpx.post(
                f"http://127.0.0.1:{port}/v1/classify",
                files=[("images", ("ok.png", GOOD, "image/png"))],
                timeout=5,
            ).raise_for_status()
    finally:
        stop_server(process)
    assert "without an API key: set TRANSFEROPS_API_KEY (serve.api_key_env)" in log_file.read_text()
