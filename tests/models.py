"""Packaged models made for tests, without training."""

from pathlib import Path

from transferops.models.backbones import HEAD
from transferops.models.classifier import WEIGHTS
from transferops.registry.store import copy_model, stored_model


def always_answering(tag: str, label: str) -> str:
    """A packaged copy of ``tag`` whose head answers ``label`` for every image."""
    from safetensors.torch import load_file, save_file

    classes = stored_model(tag).info.metadata["classes"]

    def answer_label(folder: Path) -> None:
        weights = load_file(str(folder / WEIGHTS))
        weights[f"{HEAD}.weight"].zero_()
        weights[f"{HEAD}.bias"].zero_()
        weights[f"{HEAD}.bias"][classes.index(label)] = 1.0
        save_file(weights, str(folder / WEIGHTS))

    return copy_model(tag, answer_label)
