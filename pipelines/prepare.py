"""Stage ``prepare``: a source of labelled images -> images on disk + manifest.

Sources: the built-in Fashion-MNIST (a seeded, stratified subset), an
ImageFolder, or a CSV/Parquet manifest (``path,label[,split,group]``); every
labelled drop under ``paths.incoming`` is merged in. Splits are kept when
given, otherwise drawn seeded and stratified by label (and group). Files are
copied byte for byte, never decoded or modified: judging them is the validate
stage's job. Rows that may not be read (paths escaping the root, missing
files) go to ``refused.csv``. The output is written to a staging folder and
swapped in at the end, so a failed run leaves the last dataset intact.
"""

from __future__ import annotations

import logging
import sys

import pandas as pd

from transferops.commands import run_stage
from transferops.config import Params
from transferops.data.preparation import (
    drop_source,
    incoming_drops,
    listing_items,
    split_fashion_mnist,
    write_dataset,
)
from transferops.data.sources import list_source

log = logging.getLogger(__name__)


def prepare(params: Params) -> pd.DataFrame:
    """Collect every source's items and write the prepared dataset."""
    data = params.data
    refused = []
    if data.format == "fashion_mnist":
        items = split_fashion_mnist(
            data.source,
            train_size=data.train_size,
            val_size=data.val_size,
            test_size=data.test_size,
            seed=params.seed,
        )
        sources = []
    else:
        items, sources = [], [data.source]
    drops = [drop_source(d) for d in incoming_drops(params.paths.incoming)]
    for source in [*sources, *drops]:
        more, bad = listing_items(list_source(source), data.holdout_fraction, params.seed)
        items += more
        refused.append(bad.drop(columns=["file"]))
    refused_rows = (
        pd.concat(refused)
        if refused
        else pd.DataFrame(columns=["path", "label", "split", "group", "problem"])
    )
    manifest = write_dataset(items, refused_rows, params.paths.prepared)
    log.info(
        "prepared %d images in %s: %s; %d refused",
        len(manifest),
        params.paths.prepared,
        manifest["split"].value_counts().to_dict(),
        len(refused_rows),
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    return run_stage(__doc__.splitlines()[0], prepare, argv)


if __name__ == "__main__":
    sys.exit(main())
