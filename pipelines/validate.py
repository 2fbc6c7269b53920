"""Stage ``validate``: Great Expectations checks on the prepared dataset.

Runs the same checks as ``transferops check`` (``transferops/data/checks.py``)
on the prepared images plus the rows prepare refused: file faults (empty,
not an image, truncated, decompression bomb, size, mode), duplicates,
leakage across splits, conflicting labels, class sizes and balance, expected
labels, groups. Writes ``result.json``, ``problems.txt``, Data Docs HTML and
``accepted.csv`` (what trains). With ``validate.on_error: quarantine`` bad
files are dropped and listed; the stage fails (exit 1) when what remains
still has problems, so a bad drop never replaces the last good dataset.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from transferops.commands import StageFailed, run_stage
from transferops.config import Params
from transferops.data.checks import CheckReport, check_listing
from transferops.data.datasets import ACCEPTED, REFUSED, read_manifest
from transferops.data.sources import LISTING_COLUMNS, Listing

log = logging.getLogger(__name__)
FACTS_CACHE = "file_facts.parquet"


def prepared_listing(prepared: Path, manifest: pd.DataFrame) -> Listing:
    """The prepared manifest (and refused rows) as a listing for the checks."""
    root = Path(prepared).resolve()  # prepare writes plain files: no per-file resolve
    rows = manifest.assign(file=[str(root / p) for p in manifest["path"]], problem=None)[
        LISTING_COLUMNS
    ]
    refused_file = root / REFUSED
    if refused_file.is_file() and refused_file.stat().st_size > 1:
        refused = pd.read_csv(refused_file, dtype=str).assign(file=None)
        rows = pd.concat([rows, refused[LISTING_COLUMNS]], ignore_index=True)
    return Listing(Path(prepared), rows)


def validate(params: Params) -> CheckReport:
    """Check the prepared dataset; write accepted.csv; raise StageFailed on problems."""
    prepared, out_dir = Path(params.paths.prepared), Path(params.paths.validation)
    manifest = read_manifest(prepared)
    report, accepted = check_listing(
        prepared_listing(prepared, manifest),
        params.validate_,
        out_dir,
        cache_file=out_dir / FACTS_CACHE,
    )
    manifest[manifest["path"].isin(accepted["path"])].to_csv(out_dir / ACCEPTED, index=False)
    for problem in report.problems:
        log.error("%s: %s %s", problem.check, problem.detail, problem.files[:5])
    if not report.success:
        raise StageFailed(
            f"{len(report.problems)} data problem(s); see "
            f"{out_dir / 'problems.txt'} and {out_dir / 'docs' / 'index.html'}"
        )
    log.info(
        "validation passed: %d images, %d classes, %d quarantined",
        report.images,
        report.classes,
        len(report.quarantined),
    )
    return report


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], validate, argv)


if __name__ == "__main__":
    sys.exit(main())
