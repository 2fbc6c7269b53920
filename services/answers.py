"""From the model's answers to what a caller gets back and what the prediction log keeps."""

from __future__ import annotations

import uuid
from datetime import datetime

import numpy as np

from transferops.logs.predictions import PredictionRecord


def answers_and_records(
    uploads: list[tuple[str, bytes, str | None]],
    stats: list[dict],
    answers: list[dict],
    now: datetime,
) -> tuple[list[dict], list[PredictionRecord]]:
    """One response item and one log record per image, joined by a new request id."""
    results, records = [], []
    for (_, _, group), image_stats, answer in zip(uploads, stats, answers, strict=True):
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
                stats=image_stats,
                group=group,
                bn=np.asarray(answer["bn"]).tolist(),
            )
        )
    return results, records
