"""False alarms and detection margin of the calibrated embedding-drift check.

For a packaged model (default: the champion), embeds
held-out Fashion-MNIST images unshifted, inverted and blurred, then for each
PCA dimension calibrates the MMD threshold on the model's reference and scores
random windows. Run from a project (or demo) workspace after training:

    cd demo-workspace && ../.venv/bin/python ../benchmarks/drift_margin.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from sklearn.decomposition import PCA

from flows.traffic import HeldOutPool
from monitoring.drift import calibrate_mmd_threshold, load_reference
from monitoring.evidently_report import mmd_score
from pipelines import champion
from pipelines.classifier import embed_and_classify, eval_transform
from pipelines.config import load_params
from pipelines.package import load_stored
from pipelines.runtime import configure_runtime

SHIFTS = ("none", "invert", "blur")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tag", help="BentoML model tag (default: the champion)")
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--windows", type=int, default=20, help="windows per cell")
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 16, 32, 64])
    args = parser.parse_args()
    params = load_params(Path("params.yaml"))
    configure_runtime(params.paths.bentoml_home)
    holder = champion.current(params.paths.models)
    tag = args.tag or (holder.tag if holder else None)
    if tag is None:
        parser.error(f"no champion in {params.paths.models}: pass --tag")
    model, config = load_stored(tag)
    transform = eval_transform(config)
    reference = load_reference(tag).embeddings
    pool = HeldOutPool(params.data.source, params.paths.prepared, seed=1)
    embedded = {}
    for shift in SHIFTS:
        items = pool.take(1000, shift)
        batch = torch.stack([transform(image.convert("RGB")) for image, _ in items])
        embedded[shift] = embed_and_classify(model, batch)[0]
    rng = np.random.default_rng(0)
    table = Table(
        title=f"embedding drift, {tag}, windows of {args.window}, p_value {params.monitor.p_value}"
    )
    for column in ("PCA dims", "threshold", *[f"{s}: alarms (median/threshold)" for s in SHIFTS]):
        table.add_column(column, justify="right")
    for dims in args.dims:
        pca = PCA(dims, random_state=params.seed).fit(reference)
        ref_z = pca.transform(reference)
        threshold = calibrate_mmd_threshold(
            ref_z,
            args.window,
            params.monitor.p_value,
            params.monitor.calibration_draws,
            params.seed,
        )
        cells = []
        for shift in SHIFTS:
            z = pca.transform(embedded[shift])
            scores = np.array(
                [
                    mmd_score(z[rng.choice(len(z), args.window, replace=False)], ref_z)
                    for _ in range(args.windows)
                ]
            )
            cells.append(
                f"{int((scores > threshold).sum())}/{args.windows} "
                f"({np.median(scores) / threshold:.2f})"
            )
        table.add_row(str(dims), f"{threshold:.4f}", *cells)
    Console().print(table)


if __name__ == "__main__":
    main()
