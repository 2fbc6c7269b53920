"""The installed environment is coherent (the torch/torchvision trap of ENVIRONMENT.md)."""

import os
import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_torchvision_ops_work_with_this_torch() -> None:
    import torch
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [50, 50, 60, 60]])
    kept = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert kept.tolist() == [0, 2]


def test_pip_check_is_clean() -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_names_the_python_it_needs_instead_of_failing_halfway(tmp_path) -> None:
    """With no Python 3.11 or 3.12 on PATH (a 3.13 here), `make install` stops before any
    venv or resolver and says what to install."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "python3.11", "python3.12"):  # each answers like Python 3.13
        fake = bin_dir / name
        fake.write_text("#!/bin/bash\n[ \"$1\" = --version ] && echo 'Python 3.13.1'\nexit 1\n")
        fake.chmod(0o755)
    venv = tmp_path / "venv"
    result = subprocess.run(
        [shutil.which("make"), "-f", str(ROOT / "Makefile"), "install", f"VENV={venv}"],
        cwd=ROOT,
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "needs Python 3.11 or 3.12" in result.stdout, result.stdout + result.stderr
    assert "Python 3.13.1" in result.stdout, "it says what python3 is"
    assert not venv.exists(), "nothing created"


def test_the_lock_pins_every_requirement_of_pyproject() -> None:
    """requirements.lock (what `make install` installs) satisfies pyproject.toml's ranges,
    dev extras included: a dependency added without `make lock` fails here, offline."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        wanted += [Requirement(r) for r in extra if not r.startswith("transferops")]
    pins: dict[str, list[str]] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name, version = line.split(";")[0].strip().split("==")
            pins.setdefault(canonical(name), []).append(version)
    for requirement in wanted:
        versions = pins.get(canonical(requirement.name))
        assert versions, f"{requirement.name} is not in requirements.lock: run `make lock`"
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {requirement.name}=={version}, pyproject.toml asks "
                f"{requirement.specifier}: run `make lock`"
            )


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_xdist_keeps_a_group_on_one_worker(tmp_path) -> None:
    """`make test` relies on --dist loadgroup keeping a module's tests (and so its
    module-scoped fixtures) on one worker; pytest 9.2 silently broke that
    (pytest-xdist#1386), hence the pin in pyproject.toml."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's settings
    (tmp_path / "test_grouped.py").write_text(
        "import pytest\n"
        "pytestmark = pytest.mark.xdist_group('together')\n"
        + "".join(f"def test_{i}():\n    pass\n" for i in range(6))
    )
    # Only xdist: the venv's other plugins (hydra, Faker...) would load in all three processes.
    quiet = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "xdist", "-n", "2", "--dist", "loadgroup", "-v",
         "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env=quiet,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:]
    workers = {line.split("]")[0] for line in result.stdout.splitlines() if "PASSED" in line}
    assert len(workers) == 1, result.stdout[-2000:]
    assert sum("@together" in line for line in result.stdout.splitlines() if "PASSED" in line) == 6
