"""BentoML's model store: the one module that calls ``bentoml.models``.

Packaged models are saved, found, listed and loaded here; everything else
asks this module, so a BentoML upgrade touches one file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def save_model(name: str, files: list[Path], labels: dict[str, str], metadata: dict) -> str:
    """A new version of model ``name`` holding ``files``, labels and metadata; its tag."""
    import bentoml

    with bentoml.models.create(name, labels=labels, metadata=metadata) as model:
        for file in files:
            shutil.copy2(file, Path(model.path) / file.name)
    return str(model.tag)


def copy_model(tag: str, change_files) -> str:
    """A new version of ``tag``'s model: its files copied, then ``change_files(folder)``."""
    import bentoml

    source = stored_model(tag)
    with bentoml.models.create(
        source.tag.name, labels=dict(source.info.labels), metadata=dict(source.info.metadata)
    ) as model:
        for file in Path(source.path).iterdir():
            shutil.copy2(file, Path(model.path) / file.name)
        change_files(Path(model.path))
    return str(model.tag)


def export_model(tag: str, path: Path) -> Path:
    """``tag``'s model as one archive file, to carry into another BentoML store.

    The suffix picks the archive: ``.bentomodel`` (BentoML's, xz-compressed),
    ``.tar`` (uncompressed, the fastest to write), ``.gz``, ``.zip``.
    """
    import bentoml

    return Path(bentoml.models.export_model(tag, str(path)))


def import_model(path: Path) -> str:
    """A model archive from ``export_model`` into this store; its tag."""
    import bentoml

    return str(bentoml.models.import_model(str(path)).tag)


def list_models(name: str) -> list:
    """Every stored version of model ``name``, as BentoML lists them."""
    import bentoml

    return bentoml.models.list(name)


def stored_model(tag: str):
    """``tag`` (``name:version``, ``name:latest`` or ``name``) in the local BentoML store.

    Raises FileNotFoundError naming the tag and the store when it is absent.
    """
    import bentoml

    try:
        return bentoml.models.get(tag)
    except (bentoml.exceptions.BentoMLException, ValueError) as err:
        store = os.environ.get("BENTOML_HOME", "~/bentoml")
        problem = "is not in" if isinstance(err, bentoml.exceptions.NotFound) else "is not a tag of"
        raise FileNotFoundError(
            f"model {tag!r} {problem} the BentoML store at {store} "
            "(list them with `transferops models`)"
        ) from err


def stored_model_dir(tag: str) -> Path:
    return Path(stored_model(tag).path)


def resolve_tag(tag: str) -> str:
    """The full ``name:version`` of ``tag``: a champion is never ``latest``."""
    return str(stored_model(tag).tag)


def load_stored(tag: str):
    """A packaged model and its config, rebuilt from the store (safetensors, no pickle)."""
    from transferops.models.classifier import load_classifier  # torch: only where one loads

    return load_classifier(stored_model_dir(tag))
