"""The one place that speaks Great Expectations (1.x API).

GX changes its API often; everything else in transferops states its
expectations in our own words (:class:`Expect`), calls :func:`validate_tables`
with plain pandas frames and gets plain values back: one outcome per
expectation, with the failing rows named by an index column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Expect:
    """One expectation on a column (or a set of columns), in our words."""

    kind: str  # null | not_null | between | in_set | unique_together
    column: str | tuple[str, ...]
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def null(cls, column: str) -> Expect:
        return cls("null", column)

    @classmethod
    def not_null(cls, column: str) -> Expect:
        return cls("not_null", column)

    @classmethod
    def between(
        cls, column: str, minimum: float | None = None, maximum: float | None = None
    ) -> Expect:
        return cls("between", column, (("min_value", minimum), ("max_value", maximum)))

    @classmethod
    def in_set(cls, column: str, values: list) -> Expect:
        return cls("in_set", column, (("value_set", list(values)),))

    @classmethod
    def unique_together(cls, *columns: str) -> Expect:
        return cls("unique_together", tuple(columns))


def _to_gx(expect: Expect):
    """The GX 1.x expectation object for one of ours."""
    import great_expectations as gx

    ex = gx.expectations
    options = {k: v for k, v in expect.options if v is not None}
    if expect.kind == "unique_together":
        return ex.ExpectCompoundColumnsToBeUnique(column_list=list(expect.column))
    made = {
        "null": ex.ExpectColumnValuesToBeNull,
        "not_null": ex.ExpectColumnValuesToNotBeNull,
        "between": ex.ExpectColumnValuesToBeBetween,
        "in_set": ex.ExpectColumnValuesToBeInSet,
    }[expect.kind]
    return made(column=expect.column, **options)


@dataclass
class TableCheck:
    """A named frame and the expectations to hold on it.

    ``index_column`` names the rows GX reports as failing (e.g. ``path``).
    """

    name: str
    frame: pd.DataFrame
    expectations: list[Expect] = field(default_factory=list)
    index_column: str | None = None


@dataclass(frozen=True)
class CheckOutcome:
    table: str
    expectation: str
    column: str | None
    success: bool
    detail: str
    rows: list[dict] = field(default_factory=list)  # failing rows: index column + values


def validate_tables(checks: list[TableCheck], docs_dir: Path) -> list[CheckOutcome]:
    """Run each table's suite in GX and build Data Docs HTML under ``docs_dir``."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
    )

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # An ephemeral context keeps Data Docs in a temp dir that vanishes: add a
    # filesystem site so reviewers get the HTML.
    context.add_data_docs_site(
        site_name="transferops",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(Path(docs_dir).resolve()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    source = context.data_sources.add_pandas("transferops")
    outcomes: list[CheckOutcome] = []
    pages: list = []  # what Data Docs shows: each table's suite and its validation result
    for check in checks:
        batch = source.add_dataframe_asset(check.name).add_batch_definition_whole_dataframe(
            check.name
        )
        suite = context.suites.add(gx.ExpectationSuite(name=check.name))
        for expectation in check.expectations:
            suite.add_expectation(_to_gx(expectation))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=check.name, data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=check.name,
                validation_definitions=[definition],
                result_format=_result_format(check.index_column),
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": check.frame})
        for identifier, run in result.run_results.items():
            outcomes.extend(_outcome(check.name, item) for item in run.results)
            pages += [identifier, ExpectationSuiteIdentifier(name=check.name)]
    # One build for every table: an UpdateDataDocsAction per checkpoint rebuilt the site
    # (and recompiled its templates) once per table, half of a small validation's time.
    context.build_data_docs(site_names=["transferops"], resource_identifiers=pages)
    return outcomes


def _result_format(index_column: str | None) -> dict:
    if index_column is None:
        return {"result_format": "SUMMARY", "partial_unexpected_count": 10}
    return {"result_format": "COMPLETE", "unexpected_index_column_names": [index_column]}


def _outcome(table: str, item: Any) -> CheckOutcome:
    config = item.expectation_config
    kwargs = config.kwargs
    detail, rows = "", []
    if not item.success:
        found = item.result or {}
        sample = (
            found.get("partial_unexpected_list")
            or found.get("unexpected_list")
            or found.get("observed_value")
        )
        count = found.get("unexpected_count")
        detail = f"{count} unexpected, e.g. {list(sample)[:5]}" if count else f"observed {sample}"
        rows = [
            {key: _plain(value) for key, value in row.items()}
            for row in found.get("unexpected_index_list") or []
        ]
    column = kwargs.get("column") or ",".join(kwargs.get("column_list") or []) or None
    return CheckOutcome(
        table=table,
        expectation=config.type,
        column=column,
        success=bool(item.success),
        detail=detail,
        rows=rows,
    )


def _plain(value: Any) -> Any:
    """numpy scalars to Python values, so outcomes serialise to JSON."""
    return value.item() if hasattr(value, "item") else value
