"""One rank of the two-process DDP test: ``torchrun --nproc-per-node=2 ddp_worker.py OUT``.

Fine-tunes a pretrained Lite0 on a few real Fashion-MNIST images with the
engine under DDP (gloo on CPU), then writes which training indices this rank
used and a digest of its final weights to ``OUT/rank<r>.json``.
"""

import hashlib
import json
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


def main(out: Path) -> None:
    torch.set_num_threads(1)
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
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
