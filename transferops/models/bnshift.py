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


def _moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: mean and mean square over positions.

    Reduced along the tensor's own memory layout: a channels-last activation
    is read as N x positions x C without a copy (the serving model runs
    channels-last: about a third faster on CPU here, hooks included).
    E[x^2] - E[x]^2 later: torch's own var() is about 12x slower on CPU here.
    """
    x = x.float()
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not x.is_contiguous():
        rows = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])  # a view
        return rows.mean(1), (rows * rows).mean(1)
    rows = x.flatten(2)  # N x C x positions
    return rows.mean(2), (rows * rows).mean(2)


class StageProbe:
    """Records per-image, per-stage BatchNorm distances while a model runs.

    A hook per BatchNorm layer keeps only each image's channel means and mean
    squares; after the forward pass one vectorised step turns every layer's
    into the Gaussian KL to its running statistics (the formula of
    ``transferability.gaussian_kl``), averages over each layer's channels and
    then over a stage's layers. On the serving path that is a handful of
    tensor operations per batch instead of a dozen per layer.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        stage = stage_namer(model)
        self.layers = [
            (m, stage(name))
            for name, m in model.named_modules()
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
        ]
        self.stages = list(dict.fromkeys(s for _, s in self.layers))
        layers_per_stage = {s: sum(1 for _, t in self.layers if t == s) for s in self.stages}
        weights = torch.zeros(sum(m.num_features for m, _ in self.layers), len(self.stages))
        start = 0
        for layer, name in self.layers:
            channels = layer.num_features
            column = self.stages.index(name)
            weights[start : start + channels, column] = 1 / (channels * layers_per_stage[name])
            start += channels
        self.weights = weights  # channel -> stage: mean over a layer's channels, then layers

    @contextmanager
    def _recording(self):
        moments: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(index: int):
            def record(_module, inputs) -> None:
                moments[index] = _moments(inputs[0])

            return record

        handles = [m.register_forward_pre_hook(hook(i)) for i, (m, _) in enumerate(self.layers)]
        try:
            yield moments
        finally:
            for handle in handles:
                handle.remove()

    def _distances(self, moments: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        mean = torch.cat([moments[i][0] for i in range(len(self.layers))], dim=1)
        square = torch.cat([moments[i][1] for i in range(len(self.layers))], dim=1)
        var = (square - mean * mean).clamp_min(1e-8)
        running_mean = torch.cat([m.running_mean.float() for m, _ in self.layers]).to(mean)
        running_var = torch.cat([m.running_var.float() for m, _ in self.layers]).to(mean)
        running_var = running_var.clamp_min(1e-8)
        kl = 0.5 * (
            torch.log(running_var / var) + (var + (mean - running_mean) ** 2) / running_var - 1
        )
        return kl @ self.weights.to(kl)

    def run(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(embeddings, probabilities, stage distances ``(n, len(stages))``) for a batch."""
        with self._recording() as moments:
            embeddings, probabilities = embed_and_classify(self.model, batch)
        distances = self._distances(moments)
        return embeddings, probabilities, distances.cpu().numpy().astype(np.float32)

    def stage_features(
        self, batch: torch.Tensor, dims: int = 32, seed: int = 0
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(embeddings, per stage ``(n, dims)``): each image's BatchNorm-input channel means
        (standardised by the layer's running statistics) and log variances (over the
        running variance), projected at random (seeded). Means alone miss zero-mean
        changes such as noise, which move the variances.

        A richer per-stage reading than :meth:`run`'s one scalar: the drift benchmark
        tries it for locating shifts (a per-stage MMD); the service does not log it.
        """
        with self._recording() as moments:
            embeddings, _ = embed_and_classify(self.model, batch)
        generator = torch.Generator().manual_seed(seed)
        features = {}
        for stage in self.stages:
            parts = []
            for i, (layer, name) in enumerate(self.layers):
                if name == stage:
                    mean, square = (m.float().cpu() for m in moments[i])
                    running = layer.running_var.float().cpu().clamp_min(1e-8)
                    parts.append((mean - layer.running_mean.float().cpu()) / running.sqrt())
                    variance = (square - mean * mean).clamp_min(1e-8)
                    parts.append(torch.log(variance / running))
            joined = torch.cat(parts, dim=1)
            projection = torch.randn(joined.shape[1], dims, generator=generator)
            features[stage] = (joined @ projection / joined.shape[1] ** 0.5).numpy()
        return embeddings, features
