"""The prediction service: images in, top-k labels with probabilities out.

Run it with ``bentoml serve services.service:Classifier`` from the project
root (or ``transferops serve``). It serves the champion
(``<paths.models>/champion.json``, see ``pipelines/champion.py``) unless
``TRANSFEROPS_MODEL_TAG`` names a model, batches requests adaptively, and logs
every prediction for monitoring. Inside a Bento (``transferops bento``) the
champion record travels with the model it names.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import bentoml
from PIL import Image

from pipelines.champion import current
from pipelines.config import load_params
from pipelines.runtime import configure_runtime

with bentoml.importing():
    import torch

    from pipelines.classifier import embed_and_classify, eval_transform, load_classifier
    from pipelines.predlog import PredictionLog, PredictionRecord, utc_now

PARAMS = load_params(Path(os.environ.get("TRANSFEROPS_PARAMS", "params.yaml")))
configure_runtime(PARAMS.paths.bentoml_home)


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


MODEL_TAG = served_tag()


@bentoml.service(traffic={"timeout": 60})
class Classifier:
    """Classifies images with the packaged transfer-learned model."""

    model_ref = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        torch.set_num_threads(PARAMS.threads)
        self.model, self.config = load_classifier(Path(self.model_ref.path))
        self.transform = eval_transform(self.config)
        self.tag = str(self.model_ref.tag)
        self.top_k = min(PARAMS.serve.top_k, len(self.config.classes))
        self.log = PredictionLog(PARAMS.paths.prediction_log)

    @bentoml.api(
        batchable=True,
        max_batch_size=PARAMS.serve.max_batch_size,
        max_latency_ms=PARAMS.serve.max_latency_ms,
    )
    def classify(self, images: list[Image.Image]) -> list[dict]:
        """Top-k labels and probabilities for each image, with a request id."""
        batch = torch.stack([self.transform(image.convert("RGB")) for image in images])
        embeddings, probabilities = embed_and_classify(self.model, batch)
        now, results, records = utc_now(), [], []
        for embedding, probs in zip(embeddings, probabilities, strict=True):
            order = probs.argsort()[::-1][: self.top_k]
            request_id = uuid.uuid4().hex
            label = self.config.classes[order[0]]
            results.append(
                {
                    "request_id": request_id,
                    "model": self.tag,
                    "label": label,
                    "top_k": [
                        {"label": self.config.classes[i], "probability": float(probs[i])}
                        for i in order
                    ],
                }
            )
            records.append(
                PredictionRecord(
                    request_id=request_id,
                    time=now,
                    model_tag=self.tag,
                    label=label,
                    confidence=float(probs[order[0]]),
                    probabilities=probs.tolist(),
                    embedding=embedding,
                )
            )
        self.log.append(records)
        return results

    @bentoml.api
    def metadata(self) -> dict:
        """The serving model's tag, classes and lineage."""
        info = self.model_ref.info
        return {
            "model": self.tag,
            "classes": self.config.classes,
            "labels": dict(info.labels),
            "metadata": dict(info.metadata),
        }
