"""The BentoML service in-process (its real ASGI app, both services): API, refusals, log."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from services.client import png_bytes
from transferops.config import load_params
from transferops.data.imagestats import STAT_NAMES
from transferops.data.shifts import HeldOutPool
from transferops.logs.predictions import read_feedback, read_predictions


@pytest.fixture
def client(service_client):
    return service_client


def images(trained_project: Path, count: int) -> list[tuple[Image.Image, str]]:
    params = load_params(trained_project)
    return HeldOutPool(params.data.source, params.paths.prepared, seed=5).take(count)


def files(pictures: list[Image.Image]) -> list:
    return [("images", (f"{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(pictures)]


def test_classify_many_with_groups_returns_top_k_and_logs_each(client, trained_project) -> None:
    params = load_params(trained_project)
    sample = images(trained_project, 4)
    groups = ["north", "north", "south", "south"]
    response = client.post(
        "/v1/classify",
        files=files([image for image, _ in sample]),
        data={"group": groups},
    )
    assert response.status_code == 200, response.text
    results = response.json()
    tag = json.loads((params.paths.package / "bento_model.json").read_text())["tag"]
    assert [r["group"] for r in results] == groups
    for result in results:
        assert result["model"] == tag
        assert len(result["top_k"]) == params.serve.top_k
        assert result["top_k"][0]["label"] == result["label"]
        probabilities = [k["probability"] for k in result["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
    logged = read_predictions(params.paths.prediction_log).set_index("request_id")
    mine = logged.loc[[r["request_id"] for r in results]]
    assert mine["group"].tolist() == groups
    assert (mine["width"] == 28).all() and (mine["sharpness"] > 0).all()
    assert set(STAT_NAMES) <= set(logged.columns)
    assert mine["embedding"].iloc[0].shape == (1280,)


def test_raw_body_with_group_header(client, trained_project) -> None:
    image, _ = images(trained_project, 1)[0]
    response = client.post(
        "/v1/classify",
        content=png_bytes(image),
        headers={"content-type": "image/png", "x-group": "kiosk-7"},
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()
    assert result["group"] == "kiosk-7"


def test_prediction_is_invariant_to_input_size(client, trained_project) -> None:
    image, _ = images(trained_project, 1)[0]
    labels = []
    for side in (28, 56):
        buffer = io.BytesIO()
        image.resize((side, side), Image.BICUBIC).save(buffer, format="PNG")
        response = client.post(
            "/v1/classify", files=[("images", ("x.png", buffer.getvalue(), "image/png"))]
        )
        labels.append(response.json()[0]["label"])
    assert labels[0] == labels[1]


def test_feedback_attaches_a_label_to_a_logged_request(client, trained_project) -> None:
    params = load_params(trained_project)
    image, truth = images(trained_project, 1)[0]
    request_id = client.post("/v1/classify", files=files([image])).json()[0]["request_id"]
    answer = client.post("/v1/feedback", json={"request_id": request_id, "label": truth})
    assert answer.status_code == 200, answer.text
    labels = read_feedback(params.paths.prediction_log).set_index("request_id")["label"]
    assert labels[request_id] == truth
    again = client.post("/v1/feedback", json={"request_id": request_id, "label": truth})
    assert again.status_code == 200 and again.json()["recorded"] is False, again.text
    other = next(c for c in client.get("/v1/metadata").json()["classes"] if c != truth)
    flipped = client.post("/v1/feedback", json={"request_id": request_id, "label": other})
    assert flipped.status_code == 409 and repr(truth) in flipped.json()["error"], flipped.text

    unknown = client.post("/v1/feedback", json={"request_id": "f" * 32, "label": truth})
    assert unknown.status_code == 404 and "unknown request_id" in unknown.json()["error"]
    wrong = client.post("/v1/feedback", json={"request_id": request_id, "label": "spaceship"})
    assert wrong.status_code == 400 and "'spaceship'" in wrong.json()["error"]
    assert client.post("/v1/feedback", json={"label": truth}).status_code == 422


def test_metadata_reports_tag_and_lineage(client) -> None:
    response = client.get("/v1/metadata")
    assert response.status_code == 200
    body = response.json()
    assert body["labels"]["strategy"] in {"linear_probe", "top_blocks", "most_blocks", "full"}
    assert "data_version" in body["labels"] and len(body["classes"]) == 10


def test_openapi_lists_the_routes(client) -> None:
    paths = client.get("/docs.json").json()["paths"]
    assert {"/v1/classify", "/v1/feedback", "/v1/metadata", "/readyz", "/livez"} <= set(paths)
