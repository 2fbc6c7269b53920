"""The BentoML service in-process (its real ASGI app): classify, log, metadata."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from flows.traffic import HeldOutPool, png_bytes
from pipelines.config import load_params
from pipelines.predlog import read_predictions


@pytest.fixture
def client(service_client):
    return service_client


def images(trained_project: Path, count: int) -> list[tuple[Image.Image, str]]:
    params = load_params(trained_project)
    return HeldOutPool(params.data.source, params.paths.prepared, seed=5).take(count)


def test_classify_returns_top_k_and_logs_each_prediction(client, trained_project) -> None:
    params = load_params(trained_project)
    sample = images(trained_project, 4)
    files = [
        ("images", (f"{i}.png", png_bytes(img), "image/png")) for i, (img, _) in enumerate(sample)
    ]
    response = client.post("/classify", files=files)
    assert response.status_code == 200, response.text
    results = response.json()
    assert len(results) == 4
    tag = json.loads((params.paths.package / "bento_model.json").read_text())["tag"]
    for result in results:
        assert result["model"] == tag
        assert len(result["top_k"]) == params.serve.top_k
        assert result["top_k"][0]["label"] == result["label"]
        probabilities = [k["probability"] for k in result["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
    logged = read_predictions(params.paths.prediction_log)
    assert set(r["request_id"] for r in results) <= set(logged["request_id"])
    assert logged["embedding"].iloc[-1].shape == (1280,)


def test_prediction_is_invariant_to_input_size(client, trained_project) -> None:
    image, _ = images(trained_project, 1)[0]
    labels = []
    for side in (28, 56):
        buffer = io.BytesIO()
        image.resize((side, side), Image.BICUBIC).save(buffer, format="PNG")
        response = client.post(
            "/classify", files=[("images", ("x.png", buffer.getvalue(), "image/png"))]
        )
        labels.append(response.json()[0]["label"])
    assert labels[0] == labels[1]


def test_metadata_reports_tag_and_lineage(client) -> None:
    response = client.post("/metadata", json={})
    assert response.status_code == 200
    body = response.json()
    assert body["labels"]["strategy"] in {"linear_probe", "top_blocks", "most_blocks", "full"}
    assert "data_version" in body["labels"] and len(body["classes"]) == 10
