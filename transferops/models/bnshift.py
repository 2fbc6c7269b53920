"""Per image and per stage: how far the BatchNorm inputs sit from the model's running statistics.

The profile stage measures, per stage, the KL divergence between a dataset's
BatchNorm inputs and the running statistics the network learnt. Monitoring
needs the same reading for traffic it cannot see again (images are not
kept), so the service records it per image: for every BatchNorm layer the
mean and variance of each channel over the image's positions, the Gaussian
KL divergence to the layer's running statistics, averaged over channels and
then over the layers of a stage. A few floats per prediction; the evaluation
reference stores the same numbers for its images, so a window of traffic can
be compared with it stage by stage. A shift that moves the early stages more
than the late ones is input-level (noise, blur, a new camera); one that
moves only the late stages is semantic.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from transferops.models.backbones import stage_namer
from transferops.models.classifier import embed_and_classify
from transferops.models.transferability import gaussian_kl


def _kl_to_running(x: torch.Tensor, layer: nn.BatchNorm2d) -> np.ndarray:
    """Per image: mean over channels of KL(N(image mean, image var) || N(running stats))."""
    x = x.float().flatten(2)  # N x C x positions
    mean = x.mean(2)
    # E[x^2] - E[x]^2: torch's own var() is about 12x slower on CPU here, on the serving path.
    var = (x * x).mean(2) - mean * mean
    kl = gaussian_kl(
        mean.cpu().numpy(),
        var.cpu().numpy(),
        layer.running_mean.float().cpu().numpy(),
        layer.running_var.float().cpu().numpy(),
    )
    return kl.mean(1)


class StageProbe:
    """Records per-image, per-stage BatchNorm distances while a model runs."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        stage = stage_namer(model)
        self.layers = [
            (m, stage(name))
            for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
        ]
        self.stages = list(dict.fromkeys(s for _, s in self.layers))

    @contextmanager
    def _recording(self):
        sums: dict[str, list] = {s: [] for s in self.stages}

        def hook(stage: str, layer: nn.BatchNorm2d):
            def record(_module, inputs) -> None:
                sums[stage].append(_kl_to_running(inputs[0], layer))

            return record

        handles = [m.register_forward_pre_hook(hook(s, m)) for m, s in self.layers]
        try:
            yield sums
        finally:
            for handle in handles:
                handle.remove()

    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings, probabilities, stage distances ``(n, len(stages))``) for a batch."""
        with self._recording() as sums:
            embeddings, probabilities = embed_and_classify(self.model, batch)
        distances = np.stack([np.mean(sums[s], axis=0) for s in self.stages], axis=1)
        return embeddings, probabilities, distances.astype(np.float32)
