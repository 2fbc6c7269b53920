"""The model store for people: which models exist, which one serves, and why.

``transferops models`` lists the packaged models (BentoML's store) with their
lineage and marks the champion; ``--history`` shows every champion change;
``transferops models TAG`` prints one model's whole lineage;
``transferops bento`` builds a Bento of the champion with ``bentoml build``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from rich.table import Table

from transferops.config import Params
from transferops.registry import champion
from transferops.registry.store import list_models, stored_model

BENTOFILE = Path("services/bentofile.yaml")


def lineage_of(tag: str) -> dict:
    """Everything a packaged model says about where it came from."""
    model = stored_model(tag)
    info = model.info
    metadata = dict(info.metadata)
    return {
        "tag": str(model.tag),
        "created": info.creation_time.isoformat(timespec="seconds"),
        "data_version": info.labels.get("data_version"),
        "git_revision": info.labels.get("git_revision"),
        "backbone": info.labels.get("backbone"),
        "strategy": metadata.get("strategy"),
        "metrics": json.loads(metadata.get("metrics_json", "{}")),
        "classes": metadata.get("classes"),
        "preprocessing": metadata.get("preprocessing"),
        "params": json.loads(metadata.get("params_json", "{}")),
        "files": sorted(p.name for p in Path(model.path).iterdir()),
    }


def model_rows(params: Params) -> list[dict]:
    """Every version of ``package.model_name``, newest first, the champion marked."""
    holder = champion.current(params.paths.models)
    models = sorted(
        list_models(params.package.model_name), key=lambda m: m.info.creation_time, reverse=True
    )
    return [
        {
            "champion": bool(holder and str(model.tag) == holder.tag),
            "tag": str(model.tag),
            "created": model.info.creation_time.isoformat(timespec="seconds"),
            "data_version": model.info.labels.get("data_version"),
            "git_revision": model.info.labels.get("git_revision"),
            "strategy": model.info.labels.get("strategy"),
            "accuracy": model.info.labels.get("accuracy"),
        }
        for model in models
    ]


def models_table(params: Params) -> Table:
    """:func:`model_rows` as a table; the champion starred."""
    table = Table(title=f"models in the BentoML store ({params.package.model_name})")
    for column in ("", "tag", "created", "data version", "git", "strategy", "accuracy"):
        table.add_column(column, overflow="fold")
    for row in model_rows(params):
        table.add_row(
            "★ champion" if row["champion"] else "",
            row["tag"],
            row["created"].replace("T", " ")[:19],
            (row["data_version"] or "-")[:16],
            (row["git_revision"] or "-")[:12],
            row["strategy"] or "-",
            row["accuracy"] or "-",
        )
    return table


def history_table(params: Params) -> Table:
    table = Table(title=f"champion changes ({params.paths.models})", show_lines=True)
    for column in ("time", "action", "champion", "replaced", "who", "via", "why"):
        table.add_column(column, overflow="fold")
    for record in champion.history(params.paths.models):
        table.add_row(
            record.time,
            record.action,
            record.tag,
            record.previous or "-",
            record.actor,
            record.via,
            record.reason,
        )
    return table


# What the prediction service imports (services/ and the core modules it loads), by
# distribution name; services/requirements.txt is these and all they require, at the
# versions of requirements.lock (make lock writes both).
SERVICE_PACKAGES = (
    "bentoml", "fastapi", "numpy", "orjson", "pandas", "pillow", "psutil", "pydantic",
    "pyyaml", "safetensors", "threadpoolctl", "timm", "torch", "torchvision", "tqdm",
)  # fmt: skip
SERVICE_REQUIREMENTS = Path("services/requirements.txt")
LOCK = Path("requirements.lock")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def service_requirements(lock: str, direct: tuple[str, ...] = SERVICE_PACKAGES) -> list[str]:
    """The lock's lines for ``direct`` and everything they require, in the lock's order:
    read from uv's ``# via`` notes (who requires each line), so no resolver and no network
    is needed. A package locked twice (per Python version or platform) keeps both lines,
    each with its marker."""
    entries: list[tuple[str, str, set[str]]] = []
    for line in lock.splitlines():
        if line and not line.startswith((" ", "#")):
            entries.append((canonical(line.split("==")[0]), line.strip(), set()))
        elif entries and (parent := line.strip().removeprefix("#").strip()):
            entries[-1][2].add(canonical(parent.removeprefix("via").strip()))
    wanted = {canonical(name) for name in direct}
    missing = wanted - {name for name, _, _ in entries}
    if missing:
        raise ValueError(f"{sorted(missing)} not in the lock: add them to pyproject.toml")
    grew = True
    while grew:
        before = len(wanted)
        wanted |= {name for name, _, parents in entries if parents & wanted}
        grew = len(wanted) > before
    return [line for name, line, _ in entries if name in wanted]


def write_service_requirements(root: Path = Path()) -> Path:
    """services/requirements.txt from requirements.lock (``make lock`` runs it)."""
    lines = service_requirements((root / LOCK).read_text())
    header = (
        "# What the prediction service needs, at requirements.lock's versions. Written by\n"
        "# `make lock` (flows/models.py::write_service_requirements); do not edit.\n"
    )
    path = root / SERVICE_REQUIREMENTS
    path.write_text(header + "\n".join(lines) + "\n")
    return path


def build_bento(params: Params, root: Path = Path()) -> str:
    """``bentoml build`` of the service with the champion; returns the Bento's tag.

    The Bento holds the service and core code, ``params.yaml``, the champion
    record and the champion model: the build pins it (``TRANSFEROPS_MODEL_TAG``)
    so the service declares it and BentoML packs it. ``lock_packages: false``
    keeps the build offline.
    """
    holder = champion.current(params.paths.models)
    if holder is None:
        raise champion.ChampionError("no champion to pack: run `transferops gate` first")
    bentoml = Path(sys.executable).parent / "bentoml"
    result = subprocess.run(
        [str(bentoml), "build", "-f", str(BENTOFILE), "--output", "tag", "."],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "TRANSFEROPS_MODEL_TAG": holder.tag},
    )
    if result.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    # `-o tag` prints `__tag__:<name>:<version>` as its last line.
    return result.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
