"""Shared fixtures: telemetry off, an isolated BentoML store, the real params shrunk.

BentoML reads BENTOML_HOME once, at import, so the whole session gets one
temporary store, set here before any test imports it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from transferops.runtime import TELEMETRY_OFF, end_of_startup, pause_garbage_collector

os.environ.update(TELEMETRY_OFF)
os.environ["BENTOML_HOME"] = tempfile.mkdtemp(prefix="transferops-bentoml-")
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="transferops-prefect-"))
# Every Prefect server a test starts (flows/prefect_server.py) takes one auth string, and
# every client of the session sends it: the workers and the processes tests start inherit.
os.environ.setdefault("TRANSFEROPS_PREFECT_AUTH", f"tests:{secrets.token_urlsafe(16)}")
os.environ["PREFECT_API_AUTH_STRING"] = os.environ["TRANSFEROPS_PREFECT_AUTH"]

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Every DVC stage, in pipeline order.
STAGES = ("prepare", "validate", "features", "profile", "strategy", "train", "evaluate", "package")

# A dataset small enough for seconds on 2 CPU cores, big enough for every class.
TINY = {
    "data.train_size": 100,
    "data.val_size": 40,
    "data.test_size": 120,
    "validate.min_per_class": 2,
    "model.image_size": 32,
    "features.batch_size": 64,
    "train.probe_epochs": 30,
    "train.min_steps": 4,  # fine-tuning strategies: a few steps, not 80
    "train.lr": 0.003,
    "train.lr_race": [1],  # one fine-tuning candidate: the race has its own tests (test_finetune)
    "serve.max_images": 16,  # small limits, so the refusal tests stay small
    "serve.max_image_bytes": 2_000_000,
    "serve.max_pixels": 10_000_000,
    "serve.switch_poll_s": 0.5,
    "monitor.window": 60,
    "monitor.min_window": 30,
    "monitor.calibration_draws": 200,
    "monitor.classifier_fits": 20,  # as params.yaml's 50 of 500 (an SGD fit on 160 rows: 0.1-0.6 s)
    "monitor.false_alarm_rate": 0.01,
    "monitor.bias.bootstrap": 200,
}
# Under pytest-xdist each worker has a core of its own: one thread per process, in the
# stages the tests run and in the tests themselves (two on a core thrash). For torch, and
# for the BLAS and OpenMP pools under numpy, SciPy and scikit-learn, set before any of them
# loads and inherited by every process a test starts: OpenBLAS's idle threads spin (3% of
# the suite's CPU, `perf`). The worker's collector pauses while the test modules import
# their libraries (transferops/runtime.py; pytest_collection_finish ends the pause).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    pause_garbage_collector()
    import torch

    TINY["threads"] = 1
    torch.set_num_threads(1)


SLOW_FIXTURES = {"trained_project", "service_client"}  # the tiny project trains for a minute

# Where the session's own Prefect server logs (set while one runs: see pytest_configure).
SESSION_PREFECT_LOG = "TRANSFEROPS_TEST_PREFECT_LOG"
SESSION_SERVER = pytest.StashKey[subprocess.Popen]()


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, one real Prefect server for the flow runs of the whole session.

    Without one, every process that runs a flow (each worker, each ``transferops
    train`` a test starts) starts Prefect's temporary server: about 10 s of CPU
    each. The workers and their subprocesses inherit ``PREFECT_API_URL``; the
    tests that need a server of their own (deployments, events, a work pool,
    auth) start it and point at it. A URL already set is used as it is, and a
    run without workers keeps the temporary servers (no start-up for one test).
    """
    if (
        os.environ.get("PYTEST_XDIST_WORKER")
        or os.environ.get("PREFECT_API_URL")
        or not config.getoption("numprocesses", None)
    ):
        return
    from flows.prefect_server import start_prefect_server

    home = Path(os.environ["PREFECT_HOME"])
    log = home / "session-server.log"
    process, api = start_prefect_server(home, log_file=log)
    config.stash[SESSION_SERVER] = process
    os.environ["PREFECT_API_URL"] = api
    os.environ[SESSION_PREFECT_LOG] = str(log)


def pytest_collection_finish(session: pytest.Session) -> None:
    end_of_startup()  # a no-op where the collector was not paused (outside xdist's workers)


def pytest_unconfigure(config: pytest.Config) -> None:
    process = config.stash.get(SESSION_SERVER, None)
    if process is not None:
        from flows.serving import stop_server

        stop_server(process)


def shared_dir(factory: pytest.TempPathFactory) -> Path:
    """A folder this session's processes share: pytest's folder for the session (under
    pytest-xdist, the parent of the workers' own folders)."""
    base = factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def empty_prefect_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session keeps an empty Prefect database (see ``own_prefect_server``)."""
    return shared_dir(tmp_path_factory) / "empty-prefect.db"


@pytest.fixture(scope="session", autouse=True)
def session_prefect_server(empty_prefect_db: Path) -> None:
    """Each worker's first test waits for the session's Prefect server (started above)."""
    log = os.environ.get(SESSION_PREFECT_LOG)
    if not log:
        return
    from flows.serving import wait_ready

    health = os.environ["PREFECT_API_URL"] + "/health"
    try:
        wait_ready(health, None, timeout=120, name="the session's Prefect server")
    except TimeoutError as err:
        pytest.fail(f"{err}: {log}")
    # Every worker passes here before its first test: nothing has written to it yet.
    keep_empty_database(Path(os.environ["PREFECT_HOME"]) / "prefect.db", empty_prefect_db)


@contextlib.contextmanager
def own_prefect_server(home: Path, empty: Path, **options) -> Iterator[str]:
    """A test's own real Prefect server (``running_prefect_server`` with ``options``),
    started on a copy of ``empty``, the session's empty database, when there is one.

    A first start creates the database through Prefect's migrations: 10 of its 16 s
    of CPU here; on a copy, a start is about 7 s. The copy is of the session's server
    before any test wrote to it (under pytest-xdist), or else of the first test server.
    """
    from flows.prefect_server import running_prefect_server
    from transferops.files import locked

    database = Path(home) / "prefect.db"  # Prefect's default: sqlite under PREFECT_HOME
    database.parent.mkdir(parents=True, exist_ok=True)
    with locked(empty.with_suffix(".lock")):
        if empty.is_file():
            shutil.copyfile(empty, database)
    with running_prefect_server(home, **options) as api:
        keep_empty_database(database, empty)  # its test has not written yet
        yield api


def keep_empty_database(database: Path, empty: Path) -> None:
    """Copy ``database``, a Prefect server's that no test has written to yet, to ``empty``,
    unless the session keeps one there already."""
    from transferops.files import locked

    if not database.is_file():  # a server configured to keep its database elsewhere
        return
    with locked(empty.with_suffix(".lock")):
        if not empty.is_file():
            sqlite_copy(database, empty)


def sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (SQLite's backup), in place at once."""
    partial = target.with_suffix(".partial")
    with (
        contextlib.closing(sqlite3.connect(source)) as live,
        contextlib.closing(sqlite3.connect(partial)) as copy,
    ):
        live.backup(copy)
    os.replace(partial, target)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests need CUDA: skipped, and saying why, where there is none. A test that
    needs the trained tiny project is ``slow`` (``make check`` leaves it to ``make test``)."""
    import torch

    skip = pytest.mark.skip(reason="needs CUDA: benchmarks/gpu_check.sh runs it on a GPU machine")
    for item in items:
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(skip)
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    heaviest_first(items)


LONGEST_GROUP = "test_integration"  # the loop: two trainings, drift, a retrain (5 min on 2 cores)


def heaviest_first(items: list[pytest.Item]) -> None:
    """Order the session so that the long tests start first.

    pytest-xdist hands work out in collection order, so alphabetical order left
    a two-minute test for the end, run by one worker while the other idled.
    Long first, the short ones fill in at the end. A group (``xdist_group``)
    moves as one block, so its module-scoped fixtures are still built once.
    """

    def rank(item: pytest.Item) -> int:
        slow, integration = item.get_closest_marker("slow"), item.get_closest_marker("integration")
        return 0 if slow and integration else 1 if slow else 2 if integration else 3

    def group(item: pytest.Item) -> str:
        marker = item.get_closest_marker("xdist_group")
        return marker.args[0] if marker else item.nodeid

    ranks: dict[str, int] = {LONGEST_GROUP: -1}
    for item in items:
        ranks[group(item)] = min(ranks.get(group(item), 3), rank(item))
    items.sort(key=lambda item: ranks[group(item)])


def write_params(path: Path, changes: dict[str, object], base: Path = ROOT / "params.yaml") -> Path:
    """Copy the real params.yaml to ``path`` with dotted-key ``changes`` applied."""
    raw = yaml.safe_load(base.read_text())
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def absolute_paths(root: Path) -> dict[str, str]:
    """Every ``paths.*`` entry moved under ``root``."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {f"paths.{key}": str(root / value) for key, value in raw["paths"].items()}


@pytest.fixture
def tiny_params_file(tmp_path: Path) -> Path:
    """The real params.yaml, shrunk to a tiny dataset, with all outputs under tmp_path."""
    return write_params(tmp_path / "params.yaml", TINY | absolute_paths(tmp_path))


def train_tiny_project(root: Path) -> Path:
    """The stages, for real, on the tiny dataset under ``root``; returns the params file.

    The packaged model is also exported to ``root/model.tar``.
    """
    from tests.commands import run_stage
    from transferops.registry.store import export_model

    if not FASHION_MNIST.is_dir():
        pytest.fail(f"{FASHION_MNIST} missing: run `make data` (Debian dataset-fashion-mnist)")
    params = write_params(root / "params.yaml", TINY | absolute_paths(root))
    for stage in STAGES:
        # Each stage also records the params it reads (tests/test_layout.py checks dvc.yaml).
        trace = {"TRANSFEROPS_PARAMS_TRACE": str(root / f"params-read-{stage}.jsonl")}
        run_stage(stage, params, env=trace)
    # .tar: uncompressed. BentoML's own .bentomodel is xz, 10 s of CPU for this tiny model.
    export_model(packaged_tag(params), root / "model.tar")
    return params


def packaged_tag(params: Path) -> str:
    package = Path(yaml.safe_load(params.read_text())["paths"]["package"])
    return json.loads((package / "bento_model.json").read_text())["tag"]


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stages run once, for real, on the tiny dataset; returns the params file.

    Used by the evaluation, packaging, service and monitoring tests, which
    need a real trained and packaged model. Under pytest-xdist the first worker
    that needs it trains it; every worker gets a copy of its own (the tests write
    prediction logs and champions into it) and the model in its own BentoML store.
    """
    from transferops.files import locked
    from transferops.registry.store import import_model, stored_model

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return train_tiny_project(tmp_path_factory.mktemp("project"))
    built = shared_dir(tmp_path_factory) / "trained-project"
    with locked(built.with_suffix(".lock")):
        if not (built / "built").is_file():  # none yet, or a worker failed half-way
            shutil.rmtree(built, ignore_errors=True)
            built.mkdir()
            train_tiny_project(built)
            (built / "built").touch()
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(built, root, dirs_exist_ok=True)
    params = write_params(root / "params.yaml", TINY | absolute_paths(root))
    try:
        stored_model(packaged_tag(params))  # the worker that trained it has it
    except FileNotFoundError:
        import_model(root / "model.tar")
    return params


@pytest.fixture(scope="session")
def service_client(trained_project: Path):
    """The real BentoML service app, in-process, on the tiny trained model.

    One per session: BentoML registers its Prometheus metrics globally, so a
    second app in the same process would collide.
    """
    import importlib

    from starlette.testclient import TestClient

    paths = yaml.safe_load(trained_project.read_text())["paths"]
    tag = json.loads((Path(paths["package"]) / "bento_model.json").read_text())["tag"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSFEROPS_PARAMS", str(trained_project))
        # Pinned: other tests package newer models into the same session store.
        patch.setenv("TRANSFEROPS_MODEL_TAG", tag)
        service = importlib.reload(importlib.import_module("services.service"))
        with TestClient(service.Classifier.to_asgi()) as client:
            yield client
