"""The peer: the BentoML app a user writes from BentoML's docs, on the champion's weights.

One ``@bentoml.service``, one batchable API over ``list[PIL.Image]``, timm's
own eval transform, a forward pass, label and confidence back. Nothing is
logged, nothing is checked, no monitoring signal is kept. Deliberately
written without transferops: only BentoML, timm, torch and safetensors.

    BARE_MODEL_TAG=transferops-classifier:abc bentoml serve benchmarks.bare_service:Bare

``benchmarks/serve_load.py`` starts it beside ``transferops serve`` and loads both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bentoml
from PIL import Image

with bentoml.importing():
    import timm
    import torch
    from safetensors.torch import load_file
    from timm.data import create_transform

TAG = os.environ.get("BARE_MODEL_TAG", "transferops-classifier:latest")
THREADS = int(os.environ.get("BARE_THREADS", "2"))


@bentoml.service(traffic={"timeout": 60})
class Bare:
    def __init__(self) -> None:
        torch.set_num_threads(THREADS)
        folder = Path(bentoml.models.get(TAG).path)
        config = json.loads((folder / "model.json").read_text())
        self.classes = config["classes"]
        self.model = timm.create_model(
            config["backbone"], pretrained=False, num_classes=len(self.classes)
        )
        self.model.load_state_dict(load_file(str(folder / "model.safetensors")))
        self.model.eval()
        self.transform = create_transform(**config["data_config"], is_training=False)

    @bentoml.api(batchable=True, max_batch_size=32, max_latency_ms=1000)
    def classify(self, images: list[Image.Image]) -> list[dict]:
        batch = torch.stack([self.transform(image.convert("RGB")) for image in images])
        with torch.inference_mode():
            probabilities = self.model(batch).softmax(dim=-1)
        confidence, index = probabilities.max(dim=-1)
        return [
            {"label": self.classes[i], "confidence": float(c)}
            for i, c in zip(index.tolist(), confidence.tolist(), strict=True)
        ]
