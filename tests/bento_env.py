"""A fresh virtual environment holding only what a Bento's requirements name.

``bentoml containerize`` would install the Bento's ``requirements.txt`` into
a clean image; here the same set is assembled offline: a new venv (no
system site-packages, no project on the path) into which every distribution
the requirements name, and every distribution those require, is linked from
this environment, after checking that its version satisfies the requirement.
A module the service imports but the Bento does not list is then missing,
exactly as it would be in the container.
"""

from __future__ import annotations

import importlib.metadata as metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def requirements_closure(lines: list[str]) -> dict[str, metadata.Distribution]:
    """Every installed distribution the requirement lines need, by canonical name."""
    todo = [(Requirement(line), "") for line in lines if line.strip() and line[0] != "#"]
    found: dict[str, metadata.Distribution] = {}
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        try:
            dist = metadata.distribution(requirement.name)
        except metadata.PackageNotFoundError:
            raise AssertionError(f"{requirement}: not installed here, cannot assemble") from None
        if not requirement.specifier.contains(dist.version, prereleases=True):
            raise AssertionError(f"{requirement}: installed {dist.version} does not satisfy it")
        wanted = set(requirement.extras) | {""}
        if name in found:
            continue
        found[name] = dist
        for needed in dist.requires or []:
            todo += [(Requirement(needed), e) for e in wanted]
    return found


def venv_from_requirements(requirements: Path, dest: Path) -> Path:
    """Create ``dest`` as a venv with exactly the requirements' closure; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    version = sysconfig.get_python_version()
    site = dest / "lib" / f"python{version}" / "site-packages"
    for dist in requirements_closure(Path(requirements).read_text().splitlines()).values():
        for top in {
            f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")
        }:
            link = site / top
            if not link.exists():
                link.symlink_to(Path(dist.locate_file(top)).resolve())
    return dest / "bin" / "python"
