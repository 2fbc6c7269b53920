"""Dataset versions: check, snapshot with DVC, push, and keep a registry.

``add_dataset`` checks a labelled ImageFolder or manifest first; only one
that passes is copied under ``paths.incoming`` (the source is only read),
tracked with ``dvc add`` and pushed to the DVC remote, so a failed check
never changes what trains. Every attempt, passed or failed, is recorded in
``paths.registry`` (JSON Lines) with its DVC hash, size, classes and status.
``harvest_dataset`` turns kept production images whose labels came back into
such a drop (``transferops/data/harvest.py``), with its provenance.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import yaml

from flows.dvc import run_dvc
from transferops.config import Params
from transferops.data.checks import check_source
from transferops.data.datasets import MANIFEST, DataSourceError
from transferops.data.harvest import PROVENANCE, plan_harvest, read_provenance, write_harvest
from transferops.data.preparation import DROP_MANIFEST, incoming_drops
from transferops.data.sources import list_source
from transferops.logs.jsonl import append_jsonl, read_jsonl
from transferops.logs.keptfiles import read_kept
from transferops.logs.runs import read_records
from transferops.names import name_problem
from transferops.registry import champion
from transferops.registry.store import stored_model

log = logging.getLogger(__name__)


@dataclass
class DatasetVersion:
    name: str
    status: str  # "passed" | "failed"
    version: str | None  # DVC's md5 of the snapshot; None when not snapshotted
    images: int
    classes: int
    bytes: int
    problems: int
    quarantined: int
    report: str
    source: str
    added_at: str
    provenance: dict | None = None  # a harvest's summary (the drop's provenance.json has it all)


def add_dataset(
    source: Path,
    params: Params,
    name: str | None = None,
    repo: Path = Path(),
    provenance: dict | None = None,
) -> DatasetVersion:
    """Check ``source``; when it passes, snapshot it as drop ``name`` and push it.

    ``provenance`` (a harvest's) is written into the drop as ``provenance.json``
    and summarised in the registry record.
    """
    source = Path(source).resolve()
    name = name or source.stem
    problem = name_problem("dataset name", name)
    if problem:  # the name becomes a folder under paths.incoming: refuse it before any write
        raise DataSourceError(f"{problem} (give one with --name)")
    report_dir = Path(params.paths.reports) / "data" / name
    report = check_source(source, params.validate_, report_dir)
    record = DatasetVersion(
        name=name,
        status="passed" if report.success else "failed",
        version=None,
        images=report.images - len(report.quarantined),
        classes=report.classes,
        bytes=0,
        problems=len(report.problems),
        quarantined=len(report.quarantined),
        report=str(report_dir / "problems.txt"),
        source=str(source),
        added_at=datetime.now(UTC).isoformat(timespec="seconds"),
        provenance={k: v for k, v in (provenance or {}).items() if k != "request_ids"} or None,
    )
    if report.success:
        drop = copy_drop(source, Path(params.paths.incoming) / name, set(report.quarantined))
        if provenance:
            (drop / PROVENANCE).write_text(json.dumps(provenance, indent=1))
        run_dvc(["add", str(drop)], repo, log)
        run_dvc(["push", f"{drop}.dvc"], repo, log)
        record.version, record.bytes = dvc_hash(Path(f"{drop}.dvc"))
    append_jsonl(params.paths.registry, asdict(record))
    return record


def copy_drop(source: Path, target: Path, excluded: set[str]) -> Path:
    """Copy the source's images (not the quarantined ones) into a drop folder.

    An ImageFolder stays one (``<label>/...``). A manifest's images keep their
    paths relative to the manifest's folder, under ``images/``, beside a
    ``manifest.csv`` with ``path,label,split,group``: the given splits and
    groups survive, and two files of the same name in different folders stay
    two files. The copy is staged and swapped in, so a new version replaces
    the old one whole (the old one stays in the DVC cache and remote).
    """
    listing = list_source(source)
    staging = target.with_name(target.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    kept = listing.rows[listing.rows["problem"].isna() & ~listing.rows["path"].isin(excluded)]
    real_root = listing.root.resolve()
    relative = [Path(f).relative_to(real_root) for f in kept["file"]]
    if not source.is_dir():
        relative = [Path("images") / r for r in relative]
        table = kept[["label", "split", "group"]].assign(path=[r.as_posix() for r in relative])
        table[["path", "label", "split", "group"]].to_csv(staging / DROP_MANIFEST, index=False)
    for file, destination in zip(kept["file"], relative, strict=True):
        (staging / destination).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, staging / destination)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def dvc_hash(dvc_file: Path) -> tuple[str, int]:
    """The md5 and size DVC recorded for a tracked folder."""
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    return out["md5"], int(out.get("size", 0))


def list_versions(registry: Path) -> list[DatasetVersion]:
    """Every recorded attempt, oldest first."""
    return [DatasetVersion(**row) for row in read_jsonl(registry)]


def require_passed(record: DatasetVersion) -> DatasetVersion:
    if record.status != "passed":
        raise DataSourceError(
            f"{record.source}: {record.problems} data problem(s), not added; see {record.report}"
        )
    return record


def checkout_version(version: str, dest: Path, repo: Path = Path()) -> Path:
    """Materialise any DVC-tracked folder version (e.g. a model's ``data_version``).

    Writes ``<dest>.dvc`` pointing at that hash and runs ``dvc checkout`` on it,
    fetching from the DVC remote first when the local cache lacks it.
    """
    dest = Path(dest)
    if dest.exists():
        raise DataSourceError(f"{dest} already exists: choose a new folder")
    pointer = dest.with_name(dest.name + ".dvc")
    pointer.write_text(
        yaml.safe_dump({"outs": [{"md5": version, "path": dest.name, "hash": "md5"}]})
    )
    try:
        run_dvc(["fetch", str(pointer)], repo, log)
    except RuntimeError:
        log.info("no remote copy of %s; using the local cache", version)
    run_dvc(["checkout", str(pointer)], repo, log)
    return dest


def harvest_dataset(
    params: Params,
    *,
    since: datetime | None = None,
    name: str | None = None,
    min_per_class: int | None = None,
    repo: Path = Path(),
) -> DatasetVersion:
    """The kept images whose feedback labels came back (since ``since``) as a new drop.

    Refused (:class:`~transferops.data.harvest.HarvestRefused`), before anything
    is written, when a label is not a class of the champion or a class has
    fewer than ``min_per_class`` labels (default
    ``monitor.retrain.min_labels_per_class``). What is left passes
    :func:`add_dataset`'s checks like any drop, with its provenance.
    """
    holder = champion.current(params.paths.models)
    if holder is None:
        raise DataSourceError("no champion yet: a harvest takes the champion's classes")
    classes = stored_model(holder.tag).info.metadata["classes"]
    name = name or "harvest-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    if problem := name_problem("dataset name", name):
        raise DataSourceError(f"{problem} (give one with --name)")
    if (Path(params.paths.incoming) / name).exists():
        raise DataSourceError(f"a drop named {name!r} exists already: give another --name")
    requests, hashes = harvested_before(Path(params.paths.incoming))
    plan = plan_harvest(
        read_kept(params.paths.prediction_log, since=since),
        classes,
        min_per_class=min_per_class or params.monitor.retrain.min_labels_per_class,
        known_sha256=hashes | dataset_hashes(Path(params.paths.prepared)),
        known_requests=requests,
        fractions=params.data.holdout_fraction,
        seed=params.seed,
    )
    for reason, ids in plan.left_out.items():
        log.info("harvest %s: %d labelled image(s) left out: %s", name, len(ids), reason)
    Path(params.paths.reports).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".harvest-", dir=Path(params.paths.reports)) as tmp:
        staged = write_harvest(plan, Path(tmp) / name)
        provenance = plan.provenance(name) | {"champion": holder.tag}
        return add_dataset(staged / DROP_MANIFEST, params, name, repo, provenance)


def harvested_before(incoming: Path) -> tuple[set[str], set[str]]:
    """Request ids and image hashes that earlier harvested drops hold."""
    requests, hashes = set(), set()
    for drop in incoming_drops(incoming):
        if (record := read_provenance(drop)) is not None:
            requests.update(record.get("request_ids", []))
            hashes.update(p.name.split(".")[0] for p in (drop / "images").rglob("*.*"))
    return requests, hashes


def pending_harvest(params: Params, since: datetime | None = None) -> DatasetVersion | None:
    """The newest harvest of the traffic since ``since`` that passed its checks and that no
    training run has completed on: a retrain that failed after its harvest, or a harvest
    made by hand (``data harvest``) during the drift. Every completed training run trains
    on every drop under ``paths.incoming``, so one that started after the harvest was
    added has used it."""
    completed = [
        datetime.fromisoformat(record["started_at"])
        for record in read_records(Path(params.paths.reports))
        if record.get("flow") == "training" and record.get("status") == "completed"
    ]
    last_trained = max(completed, default=None)
    incoming = Path(params.paths.incoming)
    for version in reversed(list_versions(params.paths.registry)):
        summary = version.provenance
        if summary is None or version.status != "passed" or not (incoming / version.name).is_dir():
            continue
        if since is not None and datetime.fromisoformat(summary["from"]) < since:
            continue
        if last_trained is not None and last_trained >= datetime.fromisoformat(version.added_at):
            return None  # this one and every older one have been trained on
        return version
    return None


def dataset_hashes(prepared: Path) -> set[str]:
    """The sha256 of every image in the prepared dataset (none before the first prepare)."""
    manifest = Path(prepared) / MANIFEST
    if not manifest.is_file():
        return set()
    return set(pd.read_csv(manifest, usecols=["sha256"])["sha256"].dropna())
