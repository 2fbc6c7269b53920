"""The thin command-line shell shared by every ``python -m pipelines.<stage>``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from transferops.config import DEFAULT_PARAMS, Params, ParamsError, load_stage_params
from transferops.paramstrace import traced, write_trace
from transferops.runtime import configure_runtime, end_of_startup

log = logging.getLogger(__name__)


def add_params_options(parser: argparse.ArgumentParser) -> None:
    """``--params FILE`` and DVC-style ``-S key=value`` overrides."""
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: %(default)s)"
    )
    add_override_option(parser)


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """Repeatable DVC-style ``-S key.sub=value`` into ``args.overrides``."""
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param, e.g. -S train.lr=0.01",
    )


def run_stage(
    description: str, stage: Callable[[Params], object], argv: Sequence[str] | None = None
) -> int:
    """Parse options, load params, run ``stage``; report expected failures in one line.

    Returns the process exit code: 0 on success, 1 when the stage reports a
    failure (a ``StageFailed``), 2 for a bad configuration or input.
    """
    end_of_startup(collect=False)  # the stage's libraries are imported: pipelines/__init__.py
    parser = argparse.ArgumentParser(description=description)
    add_params_options(parser)
    args = parser.parse_args(argv)
    try:
        params = load_stage_params(args.params, args.overrides)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_runtime(params.paths.bentoml_home)
    params = traced(params)  # tests/test_layout.py: what a stage reads is what DVC watches
    try:
        stage(params)
        write_trace(params)
    except StageFailed as err:
        print(f"failed: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        log.debug("stage error", exc_info=True)
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


class StageFailed(RuntimeError):
    """A stage ran and reached a negative verdict (e.g. validation failed)."""
