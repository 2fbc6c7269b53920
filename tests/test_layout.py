"""The stage graph matches the code: every module a stage imports is one of its DVC deps.

DVC re-runs a stage only when a listed dependency changes; a module missing
from the list would let stale outputs stand after a code change.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("pipelines",)


def project_imports(module: str) -> set[str]:
    """Project modules ``module`` imports, anywhere in the file (lazy imports too)."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        names = (
            [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        found |= {n for n in names if n.split(".")[0] in PACKAGES and "." in n}
    return found


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += project_imports(current)
    return seen


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_imported_module_is_a_dependency_of_its_stage(stage: str) -> None:
    needed = {f"{m.replace('.', '/')}.py" for m in import_closure(f"pipelines.{stage}")}
    listed = {d for d in STAGES[stage]["deps"] if isinstance(d, str) and d.endswith(".py")}
    assert needed - listed == set(), f"dvc.yaml stage {stage!r} misses deps {needed - listed}"
    assert listed - needed == set(), f"dvc.yaml stage {stage!r} lists unused {listed - needed}"
    assert all(Path(ROOT / d).is_file() for d in listed)
