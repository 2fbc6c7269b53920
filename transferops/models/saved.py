"""What the training stages leave on disk, readable without torch.

A model folder holds ``model.safetensors`` (``WEIGHTS``) and ``model.json``
(``CONFIG``, a :class:`ClassifierConfig`); an evaluation folder holds the
metrics, the monitoring reference and the pictures named below. Packaging,
the flows, monitoring and ``bentoml serve``'s parent process read these names
and records, and importing torch and timm for them costs a process 5 s on
2 cores; the code that builds and runs models (``classifier.py``,
``evaluation.py``) imports them from here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from transferops.data.pictures import PictureSettings

WEIGHTS = "model.safetensors"
CONFIG = "model.json"
METRICS, REFERENCE = "metrics.json", "reference.npz"
CONFUSION, RELIABILITY, GROUPS = "confusion.png", "reliability.png", "groups.png"


@dataclass
class ClassifierConfig:
    backbone: str
    classes: list[str]
    data_config: dict[str, Any]
    strategy: str
    extra: dict[str, Any] = field(default_factory=dict)
    picture: dict[str, Any] = field(default_factory=dict)  # PictureSettings, as trained

    def picture_settings(self) -> PictureSettings:
        """How files became pictures in training; serving and evaluation do the same."""
        return PictureSettings.from_dict(self.picture)

    def to_json(self) -> str:
        config = asdict(self)
        config["data_config"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()
        }
        return json.dumps(config, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClassifierConfig:
        config = json.loads(text)
        config["data_config"] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in config["data_config"].items()
        }
        return cls(**config)
