"""Each rank of the DDP test: ``torchrun --nproc-per-node=2 ddp_worker.py OUT PARAMS``.

One launch, two checks, in one process group (gloo on CPU); a rank's start
(torch, timm) is most of what a launch costs, so the two share it:

1. The engine: fine-tunes a pretrained Lite0 on a few real Fashion-MNIST images
   under DDP, then writes which training indices this rank used and a digest
   of its final weights to ``OUT/rank<r>.json``.
2. The train stage itself on the project ``PARAMS`` names, run as
   ``torchrun -m pipelines.train --params PARAMS`` runs it (``runpy``).
"""

import hashlib
import json
import runpy
import sys
from pathlib import Path

import torch

from tests.test_finetune import config_for, small_task, snapshot
from transferops.models.finetune import World, fine_tune


def digest(state: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name in sorted(state):
        sha.update(name.encode())
        sha.update(state[name].float().numpy().tobytes())
    return sha.hexdigest()


def engine(out: Path) -> None:
    world = World.from_env("cpu")
    model, train, val = small_task(n_train=64, n_val=16)
    before = digest(snapshot(model))
    result = fine_tune(model, train, val, config_for("top_blocks", epochs=2), world=world)
    after = digest(snapshot(model))
    (out / f"rank{world.rank}.json").write_text(
        json.dumps(
            {
                "world_size": world.size,
                "seen": sorted(set(result.seen)),
                "weights": after,
                "trained": after != before,
            }
        )
    )


def main(out: Path, params: Path) -> None:
    torch.set_num_threads(1)
    try:
        engine(out)
        sys.argv = ["pipelines.train", "--params", str(params)]
        runpy.run_module("pipelines.train", run_name="__main__", alter_sys=True)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
