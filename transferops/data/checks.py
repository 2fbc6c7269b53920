"""Data checks: file faults, duplicates, leakage, label conflicts, class and group sizes.

Our code computes facts (per file, per content hash, per split and class, per
group); Great Expectations judges them (``transferops/data/expectations.py``); each
failed expectation's rows, named by path, become a :class:`Problem` a person
can act on. Used by the validate stage and by ``transferops check``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from transferops.config import ValidateParams
from transferops.data.datasets import SPLITS
from transferops.data.expectations import CheckOutcome, Expect, TableCheck, validate_tables
from transferops.data.imagecheck import inspect_files
from transferops.data.sources import Listing, list_source

log = logging.getLogger(__name__)
UNSPLIT = "all"  # the split name for data not yet split


@dataclass
class Problem:
    check: str
    detail: str
    files: list[str] = field(default_factory=list)


@dataclass
class CheckReport:
    success: bool
    images: int
    classes: int
    problems: list[Problem]
    quarantined: list[str] = field(default_factory=list)
    outcomes: list[CheckOutcome] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "success": self.success,
            "images": self.images,
            "classes": self.classes,
            "problems": [asdict(p) for p in self.problems],
            "quarantined": self.quarantined,
            "checks": [asdict(o) for o in self.outcomes],
        }

    def text(self) -> str:
        """The problems as lines a person can act on."""
        lines = []
        for problem in self.problems:
            files = f" [{', '.join(problem.files[:20])}" + (
                f", ... {len(problem.files) - 20} more]" if len(problem.files) > 20 else "]"
            )
            lines.append(f"{problem.check}: {problem.detail}" + (files if problem.files else ""))
        return "\n".join(lines)


def file_table(listing: Listing, max_pixels: int, cache_file: Path | None) -> pd.DataFrame:
    """The listing joined with each readable file's facts (inspection is cached)."""
    rows = listing.rows.copy()
    readable = rows["file"].notna()
    unique_files = list(dict.fromkeys(rows.loc[readable, "file"]))  # a file listed twice
    facts = inspect_files(unique_files, max_pixels, cache_file).set_index("file")
    for column in ("sha256", "width", "height", "mode"):
        rows[column] = rows["file"].map(facts[column]) if len(facts) else None
    rows.loc[readable, "problem"] = rows.loc[readable, "file"].map(facts["problem"])
    rows["split"] = rows["split"].fillna(UNSPLIT)
    return rows.drop(columns=["file"])


def hash_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per content hash seen more than once: how many splits and labels it spans."""
    hashed = table[table["sha256"].notna()]
    hashed = hashed[hashed["sha256"].duplicated(keep=False)]  # only repeated content matters
    columns = ["sha256", "files", "n_splits", "n_labels", "paths", "splits", "labels"]
    if hashed.empty:
        return pd.DataFrame(columns=columns).astype({"n_splits": int, "n_labels": int})
    grouped = hashed.groupby("sha256")
    summary = pd.DataFrame(
        {
            "files": grouped.size(),
            "n_splits": grouped["split"].nunique(),
            "n_labels": grouped["label"].nunique(),
            "paths": grouped["path"].agg(lambda s: " | ".join(sorted(s))),
            "splits": grouped["split"].agg(lambda s: ", ".join(sorted(set(s)))),
            "labels": grouped["label"].agg(lambda s: ", ".join(sorted(set(s)))),
        }
    )
    return summary.reset_index()


def count_table(table: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    """Images per (split, label), zero rows included, keyed ``split/label``."""
    splits = sorted(table["split"].unique()) or [UNSPLIT]
    grid = pd.MultiIndex.from_product([splits, labels], names=["split", "label"])
    usable = table[table["problem"].isna()]
    counts = usable.groupby(["split", "label"]).size().reindex(grid, fill_value=0)
    counts = counts.rename("count").reset_index()
    counts["key"] = counts["split"] + "/" + counts["label"]
    return counts


def balance_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Per split: largest class over smallest non-empty class."""
    present = counts[counts["count"] > 0]
    grouped = present.groupby("split")["count"]
    return pd.DataFrame(
        {"split": grouped.max().index, "ratio": (grouped.max() / grouped.min()).to_numpy()}
    )


def build_checks(table: pd.DataFrame, labels: list[str], cfg: ValidateParams) -> list[TableCheck]:
    """Every table this dataset is judged on, and what must hold on each."""
    files = [
        Expect.null("problem"),
        Expect.between("width", cfg.min_side, cfg.max_side),
        Expect.between("height", cfg.min_side, cfg.max_side),
        Expect.in_set("mode", cfg.allowed_modes),
        Expect.unique_together("split", "label", "sha256"),
        Expect.in_set("split", [*SPLITS, UNSPLIT]),
    ]
    if cfg.expected_labels:
        files.append(Expect.in_set("label", cfg.expected_labels))
    if cfg.require_group:
        files.append(Expect.not_null("group"))
    counts = count_table(table, labels)
    checks = [
        TableCheck("files", table, files, index_column="path"),
        TableCheck(
            "duplicates",
            hash_table(table),
            [Expect.between("n_splits", maximum=1), Expect.between("n_labels", maximum=1)],
            index_column="paths",
        ),
        TableCheck(
            "class_counts",
            counts,
            [Expect.between("count", minimum=cfg.min_per_class)],
            index_column="key",
        ),
        TableCheck(
            "class_balance",
            balance_table(counts),
            [Expect.between("ratio", maximum=cfg.max_imbalance)],
            index_column="split",
        ),
    ]
    if cfg.require_group:
        groups = table[table["group"].notna()].groupby("group").size().rename("count")
        checks.append(
            TableCheck(
                "groups",
                groups.reset_index(),
                [Expect.between("count", minimum=cfg.min_per_group)],
                index_column="group",
            )
        )
    return checks


def _size(side: str) -> Callable[[dict, ValidateParams], Problem]:
    def problem(row: dict, cfg: ValidateParams) -> Problem:
        return Problem(
            "image size",
            f"{side} {int(row[side])} px outside [{cfg.min_side}, {cfg.max_side}] "
            "(validate.min_side/max_side)",
            [row["path"]],
        )

    return problem


# (table, column) of a failed expectation -> the problem each failing row is.
PER_ROW: dict[tuple[str, str], Callable[[dict, ValidateParams], Problem]] = {
    ("files", "problem"): lambda r, cfg: Problem("bad file", r["problem"], [r["path"]]),
    ("files", "width"): _size("width"),
    ("files", "height"): _size("height"),
    ("files", "mode"): lambda r, cfg: Problem(
        "unsupported mode", f"mode {r['mode']!r} not in {cfg.allowed_modes}", [r["path"]]
    ),
    ("files", "split"): lambda r, cfg: Problem(
        "unknown split", f"split {r['split']!r} not one of {list(SPLITS)}", [r["path"]]
    ),
    ("files", "label"): lambda r, cfg: Problem(
        "unexpected label", f"label {r['label']!r} not in validate.expected_labels", [r["path"]]
    ),
    ("files", "group"): lambda r, cfg: Problem(
        "missing group", "no group value (validate.require_group)", [r["path"]]
    ),
    ("class_counts", "count"): lambda r, cfg: Problem(
        "empty class" if r["count"] == 0 else "class too small",
        f"{r['key']}: {r['count']} usable images < validate.min_per_class = {cfg.min_per_class}",
    ),
    ("class_balance", "ratio"): lambda r, cfg: Problem(
        "class imbalance",
        f"split {r['split']!r}: largest/smallest class = {r['ratio']:.1f} > "
        f"validate.max_imbalance = {cfg.max_imbalance:g}",
    ),
    ("groups", "count"): lambda r, cfg: Problem(
        "rare group",
        f"group {r['group']!r}: {r['count']} images < validate.min_per_group = {cfg.min_per_group}",
    ),
}


def problems_from(
    outcome: CheckOutcome, frames: dict[str, pd.DataFrame], cfg: ValidateParams
) -> list[Problem]:
    """Turn one failed expectation into problems that name files.

    ``frames`` are the tables the expectations ran on, by check name.
    """
    key = (outcome.table, outcome.column)
    if key in PER_ROW:
        return [PER_ROW[key](row, cfg) for row in outcome.rows]
    if key == ("files", "split,label,sha256"):
        dupes = pd.DataFrame(outcome.rows).groupby(["split", "label", "sha256"])["path"]
        return [
            Problem(
                "duplicate within split",
                f"identical content, label {label!r}, split {split!r}",
                paths,
            )
            for (split, label, _), paths in dupes.agg(sorted).items()
        ]
    if outcome.table == "duplicates":
        hashes = frames["duplicates"].set_index("paths")
        check, what = (
            ("leakage across splits", "splits")
            if outcome.column == "n_splits"
            else ("conflicting labels", "labels")
        )
        return [
            Problem(
                check,
                f"identical content in {what}: {hashes.loc[r['paths'], what]}",
                r["paths"].split(" | "),
            )
            for r in outcome.rows
        ]
    return [Problem(outcome.expectation, outcome.detail)]


def run_checks(
    table: pd.DataFrame, labels: list[str], cfg: ValidateParams, docs_dir: Path
) -> CheckReport:
    checks = build_checks(table, labels, cfg)
    frames = {check.name: check.frame for check in checks}
    outcomes = validate_tables(checks, docs_dir)
    problems = [p for o in outcomes if not o.success for p in problems_from(o, frames, cfg)]
    return CheckReport(
        success=not problems,
        images=len(table),
        classes=len(labels),
        problems=problems,
        outcomes=outcomes,
    )


def quarantine_set(problems: list[Problem]) -> set[str]:
    """Files to drop: every file a problem names (class-level problems name none),
    except that of exact duplicates within a split one copy stays."""
    dropped: set[str] = set()
    for problem in problems:
        keep_one = problem.check == "duplicate within split"
        dropped.update(problem.files[1:] if keep_one else problem.files)
    return dropped


def check_listing(
    listing: Listing, cfg: ValidateParams, out_dir: Path, cache_file: Path | None = None
) -> tuple[CheckReport, pd.DataFrame]:
    """Check a listing; with ``on_error: quarantine``, drop bad files and check again.

    Returns the report and the accepted rows (path, label, split, group, sha256).
    Writes ``result.json``, ``problems.txt`` and Data Docs under ``out_dir``.
    """
    out_dir = Path(out_dir)
    table = file_table(listing, cfg.max_pixels, cache_file)
    labels = sorted(
        set(cfg.expected_labels or []) | set(table["label"]) | set(listing.empty_classes)
    )
    report = run_checks(table, labels, cfg, out_dir / "docs")
    if not report.success and cfg.on_error == "quarantine":
        dropped = quarantine_set(report.problems)
        log.warning("quarantine: dropping %d file(s) and checking the rest again", len(dropped))
        table = table[~table["path"].isin(dropped)].reset_index(drop=True)
        first = report.problems
        report = run_checks(table, labels, cfg, out_dir / "docs")
        report.quarantined = sorted(dropped)
        report.problems = [
            Problem("quarantined", p.detail, p.files) for p in first if set(p.files) & dropped
        ] + report.problems
        report.success = not [p for p in report.problems if p.check != "quarantined"]
    else:  # on failure nothing trains, but the accepted rows still exclude faulty files
        table = table[~table["path"].isin(quarantine_set(report.problems))]
    write_report(report, out_dir)
    return report, table.reset_index(drop=True)


def write_report(report: CheckReport, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = report.to_dict() | {"data_docs": str(out_dir / "docs" / "index.html")}
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2, default=str))
    (out_dir / "problems.txt").write_text(report.text() + "\n")


def check_source(source: Path, cfg: ValidateParams, out_dir: Path) -> CheckReport:
    """Check any ImageFolder or manifest in place (nothing is copied or modified).

    File facts are cached in ``out_dir``, so a second check of an unchanged
    source does not decode or hash any file again.
    """
    report, _ = check_listing(list_source(source), cfg, out_dir, out_dir / "file_facts.parquet")
    return report
