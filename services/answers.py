"""From the model's answers to what a caller gets back and what the prediction log keeps."""

from __future__ import annotations

import uuid
from datetime import datetime

import numpy as np

from transferops.logs.predictions import PredictionRecord


def answers_and_records(
    uploads: list[tuple[str, bytes, str | None]],
    prepared: list,
    answers: list[dict],
    now: datetime,
) -> tuple[list[dict], list[PredictionRecord]]:
    """One response item and one log record per image, joined by a new request id.

    ``prepared``: each image's ``uploads.Prepared`` (its statistics and thumbnail).
    """
    results, records = [], []
    for (_, _, group), image, answer in zip(uploads, prepared, answers, strict=True):
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
                stats=image.stats,
                group=group,
                bn=np.asarray(answer["bn"]).tolist(),
                thumbnail=image.thumbnail,
            )
        )
    return results, records
