"""The docs say what the code does: links resolve, tables match params.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT
from transferops.config import load_params

PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file_in_the_repository(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text()) if "://" not in t]
    missing = [t for t in targets if not (page.parent / t).resolve().exists()]
    outside = [t for t in targets if not (page.parent / t).resolve().is_relative_to(ROOT)]
    assert (missing, outside) == ([], [])


def test_the_strategy_region_table_is_the_one_params_yaml_ships() -> None:
    text = (ROOT / "docs/strategy.md").read_text()
    table = text[text.index("| labels per class (min) | similar | different |") :]
    rows = [line.split("|")[1:4] for line in table.splitlines()[2:5]]
    documented = {
        f"{size.split()[0]}/{kind}": cell.strip()
        for size, *cells in rows
        for kind, cell in zip(("similar", "different"), cells, strict=True)
    }
    strategy = load_params(ROOT / "params.yaml").strategy
    assert documented == dict(strategy.regions)
    assert f"small (< {strategy.small_per_class})" in table
    assert f"large (≥ {strategy.large_per_class})" in table
