"""The layout holds: rooms import one way, stages are stages, dvc.yaml matches the code,
and ruff sees every file.

- Dependencies point one way: ``flows`` -> ``pipelines``, ``monitoring``,
  ``services`` -> ``transferops`` (the core). The core imports none of the
  others; nothing outside ``flows`` imports ``flows``; nothing imports a stage
  module as a library.
- ``pipelines/`` holds exactly the DVC stages.
- Every module a stage imports is one of its DVC deps (DVC re-runs a stage
  only when a listed dependency changes), and nothing else is listed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT
from transferops.config import RUN_PARAMS, load_params, run_changes

ROOMS = ("transferops", "pipelines", "flows", "monitoring", "services")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(module: str) -> Path | None:
    path = ROOT / (module.replace(".", "/") + ".py")
    return path if path.is_file() else None


def project_imports(module: str) -> set[str]:
    """Project modules ``module`` imports, anywhere in the file (lazy imports too)."""
    tree = ast.parse(module_file(module).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            candidates = [node.module, *[f"{node.module}.{a.name}" for a in node.names]]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c.split(".")[0] in ROOMS and module_file(c)}
    return found


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += project_imports(current)
    return seen


def modules_of(room: str) -> list[str]:
    return [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in sorted((ROOT / room).rglob("*.py"))
        if p.name != "__init__.py"
    ]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_module_is_a_dependency_of_its_stage(stage: str) -> None:
    needed = {f"{m.replace('.', '/')}.py" for m in import_closure(f"pipelines.{stage}")}
    listed = {d for d in STAGES[stage]["deps"] if isinstance(d, str) and d.endswith(".py")}
    assert needed - listed == set(), f"dvc.yaml stage {stage!r} misses deps {needed - listed}"
    assert listed - needed == set(), f"dvc.yaml stage {stage!r} lists unused {listed - needed}"


def test_pipelines_holds_the_stages_and_nothing_else() -> None:
    assert {m.split(".")[1] for m in modules_of("pipelines")} == set(STAGES)


ALLOWED = {
    "transferops": {"transferops"},
    "pipelines": {"transferops"},  # a stage imports the core, never another stage
    # nothing imports a stage module: flows run stages with `dvc repro`
    "monitoring": {"transferops", "monitoring"},
    "services": {"transferops", "services"},
    "flows": {"transferops", "monitoring", "services", "flows"},
}


@pytest.mark.parametrize("room", ROOMS)
def test_dependencies_point_one_way(room: str) -> None:
    wrong = {
        (module, imported)
        for module in modules_of(room)
        for imported in project_imports(module)
        if imported.split(".")[0] not in ALLOWED[room]
    }
    assert wrong == set(), f"{room} imports what it may not: {sorted(wrong)}"


NOT_PARAMS = ("paths.", "threads")  # paths: dvc.yaml templates them; threads: speed only
# The package stage snapshots every param into the model's lineage; a change to
# one repackages the model only through the stages that read it.
READS_ALL = {"package"}


def declared_params(stage: str) -> list[str]:
    """The params.yaml keys a stage lists (the run-params file is checked on its own)."""
    return [e for e in STAGES[stage].get("params", []) if isinstance(e, str)]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_runs_changes_are_watched_like_params_yaml(stage: str) -> None:
    files = [e for e in STAGES[stage].get("params", []) if isinstance(e, dict)]
    assert files == [{str(RUN_PARAMS): declared_params(stage)}]


def test_the_shipped_run_params_file_has_every_key_and_no_change() -> None:
    """DVC fails a stage whose listed key is missing, and between runs nothing is changed."""
    params = load_params(ROOT / "params.yaml")
    shipped = yaml.safe_load((ROOT / RUN_PARAMS).read_text())
    assert shipped == run_changes(params, params)


def covers(declared: str, key: str) -> bool:
    return key == declared or key.startswith(f"{declared}.")


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_the_params_a_stage_reads_are_the_params_dvc_watches(
    stage: str, trained_project: Path
) -> None:
    trace = trained_project.parent / f"params-read-{stage}.jsonl"
    runs = [json.loads(line) for line in trace.read_text().splitlines()]
    assert runs, f"the {stage} stage recorded what it read"
    read = {
        key.replace("validate_.", "validate.")
        for run in runs
        for key in run
        if not key.startswith(NOT_PARAMS)
    }
    declared = declared_params(stage)
    if stage not in READS_ALL:
        unwatched = {key for key in read if not any(covers(d, key) for d in declared)}
        assert unwatched == set(), f"dvc.yaml stage {stage!r}: add params {sorted(unwatched)}"
    unread = {d for d in declared if not any(covers(d, key) for key in read)}
    assert unread == set(), f"dvc.yaml stage {stage!r} declares params it never reads: {unread}"


def test_ruff_checks_every_python_file_of_the_project() -> None:
    """An exclude pattern can hide a package (a bare "data" once hid transferops/data)."""
    ruff = Path(sys.executable).parent / "ruff"
    listed = subprocess.run(
        [str(ruff), "check", "--show-files", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert listed.returncode == 0, listed.stderr
    checked = {Path(line).resolve() for line in listed.stdout.split()}
    tracked = subprocess.run(
        ["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    missed = sorted(name for name in tracked if (ROOT / name).resolve() not in checked)
    assert tracked and missed == [], missed
    assert (ROOT / "transferops" / "data" / "checks.py").resolve() in checked
