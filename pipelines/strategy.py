"""Stage ``strategy``: the freeze decision for the profiled dataset, and why.

Reads ``profile.json``; writes the decision record ``decision.json``, the
paragraph ``decision.txt`` and the size x similarity picture ``strategy.png``
(transferops/models/strategy.py, docs/strategy.md).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from transferops.commands import run_stage
from transferops.config import Params
from transferops.models.recipe import PROFILE
from transferops.models.strategy import Decision, decide_and_record

log = logging.getLogger(__name__)


def strategy(params: Params) -> Decision:
    """Decide from the profile; write the decision record and picture."""
    out_dir = Path(params.paths.profile)
    numbers = json.loads((out_dir / PROFILE).read_text())
    decision = decide_and_record(numbers, params, out_dir)
    log.info("%s", decision.reason)
    return decision


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], strategy, argv)


if __name__ == "__main__":
    sys.exit(main())
