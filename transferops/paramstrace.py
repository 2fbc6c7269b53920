"""Which params a stage reads: a recording view of :class:`~transferops.config.Params`.

``run_stage`` wraps the params in :class:`Traced` when the environment variable
``TRANSFEROPS_PARAMS_TRACE`` names a file, and writes the dotted keys read
there when the stage ends. ``tests/test_layout.py`` compares them with each
stage's ``params`` in ``dvc.yaml``, so what DVC watches is what the code reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel

TRACE_ENV = "TRANSFEROPS_PARAMS_TRACE"
# Methods of a section that read fields: what each one reads.
METHOD_READS = {"picture": ("background", "max_aspect"), "on": ("cpu", "cuda")}
DUMPS = ("model_dump", "model_dump_json")


class Traced:
    """Read-through view of a params section that records every dotted key read."""

    def __init__(self, target: BaseModel, prefix: str, seen: set[str]) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_seen", seen)

    def __getattr__(self, name: str):
        value = getattr(self._target, name)
        key = f"{self._prefix}{name}"
        if isinstance(value, BaseModel):
            return Traced(value, f"{key}.", self._seen)
        if name in DUMPS:
            return self._dump(value)
        if name in METHOD_READS:
            self._seen.update(f"{self._prefix}{field}" for field in METHOD_READS[name])
            return value
        self._seen.add(key)
        return value

    def _dump(self, method):
        def dump(*args, include=None, **kwargs):
            fields = include or type(self._target).model_fields
            self._seen.update(f"{self._prefix}{field}" for field in fields)
            return method(*args, include=include, **kwargs)

        return dump

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError("params are read-only")


def traced(params):
    """``params`` itself, or a recording view when tracing is on."""
    if not os.environ.get(TRACE_ENV):
        return params
    return Traced(params, "", set())


def write_trace(params) -> None:
    """Add the keys read to the trace file (one JSON list per stage run)."""
    if isinstance(params, Traced):
        path = Path(os.environ[TRACE_ENV])
        with open(path, "a") as handle:
            handle.write(json.dumps(sorted(params._seen)) + "\n")
