"""The drift -> retrain handshake: a Prefect event and the trigger that answers it.

The monitoring flow never trains. When its guarded decision says retrain, it
emits ``transferops.retrain.requested`` with everything the training run
needs (the decision's overrides, the harvested drop of the drifted traffic or
a labelled folder, why). The training
deployment answers through an automation with Prefect's own guards:

- ``threshold`` requests within ``monitor.retrain.cooldown_hours`` start one
  run; the requests after it in that window are dropped (a reactive trigger
  fires once, then waits for its window to close);
- the deployment's concurrency limit is 1 (further runs queue).

So a second monitor, a replayed event or a person re-sending one cannot start
a second retraining inside the cooldown.
"""

from __future__ import annotations

import os
from datetime import timedelta
from uuid import uuid4

from prefect.events import DeploymentEventTrigger, emit_event

from transferops.config import Params

RETRAIN_EVENT = "transferops.retrain.requested"
RESOURCE_PREFIX = "transferops.model."


class EventsOffError(RuntimeError):
    """Prefect did not take the event (events are off, or there is no API to send to)."""


def request_retrain(
    *,
    model_tag: str,
    overrides: list[str],
    new_data: str | None,
    why: dict,
    harvest: str | None = None,
) -> dict:
    """Emit the retrain request; return ``{"event": name, "id": ...}``.

    ``why`` (the decision, the check's report) travels as the training run's
    ``trigger`` parameter, so the run's record says what started it.
    """
    event_id = uuid4()
    trigger = {"kind": "drift event", "event": RETRAIN_EVENT, "event_id": str(event_id), **why}
    event = emit_event(
        RETRAIN_EVENT,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}{model_tag}"},
        payload={
            "overrides": list(overrides),
            "new_data": new_data,
            "harvest": harvest,
            "trigger": trigger,
        },
        id=event_id,
    )
    if event is None:
        raise EventsOffError(
            f"Prefect did not emit {RETRAIN_EVENT}: events are off "
            "(PREFECT_API_ENABLE_EVENTS?) or no API is configured"
        )
    return {"event": RETRAIN_EVENT, "id": str(event_id)}


def retrain_trigger(params: Params) -> DeploymentEventTrigger:
    """The training deployment's automation: requests in, one guarded run out."""
    window = timedelta(hours=params.monitor.retrain.cooldown_hours)
    return DeploymentEventTrigger(
        name="transferops: retrain on drift",
        description=(
            f"{params.orchestrate.trigger_threshold} {RETRAIN_EVENT} event(s) within "
            f"{params.monitor.retrain.cooldown_hours:g} h start one training run"
        ),
        expect={RETRAIN_EVENT},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        posture="Reactive",
        threshold=params.orchestrate.trigger_threshold,
        within=window,
        # Jinja over the event: a lone {{ expression }} keeps its JSON type.
        parameters={
            "overrides": "{{ event.payload.overrides }}",
            "dataset": "{{ event.payload.new_data }}",
            "harvest": "{{ event.payload.harvest }}",
            "trigger": "{{ event.payload.trigger }}",
        },
    )


def api_url() -> str | None:
    """The Prefect API this process talks to; None means a temporary server of its own."""
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or os.environ.get("PREFECT_API_URL") or None
