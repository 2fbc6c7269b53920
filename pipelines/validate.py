"""Stage ``validate``: Great Expectations checks on the prepared manifest.

Checks: no nulls, labels in the label set, known splits, well-formed hashes
and sizes, and at least ``validate.min_per_class`` images of every class in
every split. Writes ``result.json`` and Data Docs HTML; exits 1 on failure.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from pipelines.config import Params
from pipelines.datasets import SPLITS, read_classes, read_manifest
from pipelines.expectations import CheckOutcome, TableCheck, validate_tables
from pipelines.stage import StageFailed, run_stage

log = logging.getLogger(__name__)
RESULT = "result.json"


def class_counts(manifest: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Images per (split, label), with zero rows for empty combinations."""
    grid = pd.MultiIndex.from_product([SPLITS, labels], names=["split", "label"])
    counts = manifest.groupby(["split", "label"]).size().reindex(grid, fill_value=0)
    return counts.rename("count").reset_index()


def build_checks(manifest: pd.DataFrame, labels: list[str], min_per_class: int) -> list:
    import great_expectations as gx

    ex = gx.expectations
    not_null = [
        ex.ExpectColumnValuesToNotBeNull(column=c)
        for c in ("path", "label", "split", "sha256", "width", "height")
    ]
    return [
        TableCheck(
            "manifest",
            manifest,
            [
                *not_null,
                ex.ExpectColumnValuesToBeInSet(column="label", value_set=labels),
                ex.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
                ex.ExpectColumnValuesToMatchRegex(column="sha256", regex=r"^[0-9a-f]{64}$"),
                ex.ExpectColumnValuesToBeBetween(column="width", min_value=1),
                ex.ExpectColumnValuesToBeBetween(column="height", min_value=1),
            ],
        ),
        TableCheck(
            "class_counts",
            class_counts(manifest, labels),
            [
                ex.ExpectColumnValuesToBeBetween(column="count", min_value=min_per_class),
            ],
        ),
    ]


def validate(params: Params) -> list[CheckOutcome]:
    """Validate the prepared dataset; raise StageFailed when a check fails."""
    prepared, out_dir = params.paths.prepared, Path(params.paths.validation)
    manifest = read_manifest(prepared)
    labels = params.validate_.expected_labels or read_classes(prepared)
    outcomes = validate_tables(
        build_checks(manifest, labels, params.validate_.min_per_class), out_dir / "docs"
    )
    failures = [o for o in outcomes if not o.success]
    counts = class_counts(manifest, labels)
    underfilled = counts[counts["count"] < params.validate_.min_per_class]
    summary = {
        "success": not failures,
        "images": len(manifest),
        "splits": manifest["split"].value_counts().to_dict(),
        "classes": len(labels),
        "checks": [asdict(o) for o in outcomes],
        "underfilled_classes": underfilled.to_dict(orient="records"),
        "data_docs": str(out_dir / "docs" / "index.html"),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT).write_text(json.dumps(summary, indent=2))
    for failure in failures:
        log.error(
            "%s: %s on %s: %s", failure.table, failure.expectation, failure.column, failure.detail
        )
    for row in underfilled.itertuples():
        log.error(
            "split %r, class %r: %d images, fewer than validate.min_per_class = %d",
            row.split,
            row.label,
            row.count,
            params.validate_.min_per_class,
        )
    if failures and params.validate_.fail_on_error:
        raise StageFailed(
            f"{len(failures)} of {len(outcomes)} data checks failed; see "
            f"{out_dir / RESULT} and {summary['data_docs']}"
        )
    log.info("validation: %d checks, %d failed", len(outcomes), len(failures))
    return outcomes


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], validate, argv)


if __name__ == "__main__":
    sys.exit(main())
