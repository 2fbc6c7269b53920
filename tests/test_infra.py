"""The configuration for growing past one machine (docs/scaling.md).

What can run here runs: a DVC remote on S3-compatible object storage (a
local moto server speaks the S3 API) behind the project's own data commands.
What needs a Docker engine or a cluster (none here) is checked for agreeing
with the project: the Prefect server's version, the worker's pool, the
service's port and probes.
"""

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flows.data import add_dataset, checkout_version
from flows.serving import free_port, http_client, stop_server
from flows.workspace import create_workspace
from tests.conftest import ROOT, TINY, own_prefect_server, write_params
from tests.imagefiles import clean_folder
from transferops.config import load_params

BUCKET = "transferops-dvc"
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def s3_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A local S3 endpoint (moto's server) with an empty bucket."""
    import boto3

    port = free_port()
    with open(tmp_path / "moto.log", "wb") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                http_client().get(url, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        for key, value in S3_ENV.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield url, s3
    finally:
        stop_server(server)


@pytest.mark.integration
def test_dvc_remote_on_object_storage(tmp_path: Path, s3_endpoint, monkeypatch) -> None:
    url, s3 = s3_endpoint
    repo = create_workspace(ROOT, tmp_path / "project")
    write_params(
        repo / "params.yaml", TINY | {"validate.min_per_class": 1}, base=repo / "params.yaml"
    )
    monkeypatch.chdir(repo)

    def dvc(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    # docs/scaling.md: the remote, as a team would point it at S3/MinIO/R2.
    dvc("remote", "add", "-d", "-f", "local", f"s3://{BUCKET}/transferops")
    dvc("remote", "modify", "local", "endpointurl", url)
    params = load_params(repo / "params.yaml")

    added = add_dataset(clean_folder(tmp_path / "drop"), params, "first-drop")
    assert added.status == "passed" and added.version
    stored = s3.list_objects_v2(Bucket=BUCKET, Prefix="transferops/")
    assert stored.get("KeyCount", 0) >= added.images, "dvc push put every image in the bucket"

    # A fresh clone has no cache: the version comes back from object storage.
    dvc("cache", "dir", str(tmp_path / "empty-cache"))
    restored = checkout_version(added.version, Path("restored"))
    restored_files = sorted(p.relative_to(restored) for p in restored.rglob("*.png"))
    original = sorted(p.relative_to(tmp_path / "drop") for p in (tmp_path / "drop").rglob("*.png"))
    assert restored_files == original and len(original) == added.images
    assert any((tmp_path / "empty-cache").rglob("*")), "pulled into the new cache"


def test_prefect_server_compose_matches_the_pinned_prefect() -> None:
    from importlib.metadata import version

    compose = yaml.safe_load((ROOT / "flows/infra/docker-compose.yaml").read_text())
    server = compose["services"]["prefect-server"]
    assert server["image"].startswith(f"prefecthq/prefect:{version('prefect')}-")
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:5432/" in url
    assert "postgres" in compose["services"] and "prefect-db" in compose["volumes"]
    worker = compose["services"]["worker"]
    assert worker["build"]["dockerfile"] == "flows/infra/Dockerfile"
    assert (ROOT / "flows/infra" / worker["build"]["context"] / "pyproject.toml").is_file()


def test_worker_image_installs_the_lock_and_serves_the_compose_pool() -> None:
    dockerfile = (ROOT / "flows/infra/Dockerfile").read_text()
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN pip")]
    assert runs == [
        "RUN pip install --no-cache-dir -r requirements.lock",
        "RUN pip install --no-cache-dir --no-deps -e .",
    ], "the lock's versions, nothing resolved again"
    assert "dvc-s3==" in (ROOT / "requirements.lock").read_text(), "the remote's plugin"
    assert '"--pool", "transferops"' in dockerfile
    compose = (ROOT / "flows/infra/docker-compose.yaml").read_text()
    assert "prefect work-pool create transferops --type process" in compose


# What must never be inside an image or a Bento (docs/security.md).
NEVER_PACKED = [".dvc/config.local", ".env", "flows/infra/.env", "logs/kept/ab/x.png",
                ".bentoml/x", ".prefect/prefect.db", ".venv/bin/python", "demo-workspace/x",
                "reports/x.html"]  # fmt: skip


def test_the_image_context_leaves_out_secrets_and_local_state(tmp_path: Path) -> None:
    """.dockerignore's patterns, matched against each path and every folder above it
    (``**/`` at any depth), which is how Docker applies them (fnmatch for Go's Match)."""
    import fnmatch

    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        """A pattern that matches the path or a folder above it; ``**/`` at any depth."""
        parts = path.split("/")
        for pattern in patterns:
            starts = range(len(parts)) if pattern.startswith("**/") else [0]
            for first in starts:
                for last in range(first, len(parts)):
                    here = "/".join(parts[first : last + 1])
                    if fnmatch.fnmatchcase(here, pattern.removeprefix("**/")):
                        return True
        return False

    for path in NEVER_PACKED:
        assert ignored(path), f"{path} would be copied into the image"
    for kept in ("pyproject.toml", "requirements.lock", ".transferops/run-params.yaml",
                 "transferops/data/checks.py", "dvc.yaml"):  # fmt: skip
        assert not ignored(kept), f"{kept} is needed in the image"


def test_the_services_requirements_are_the_locks_pins() -> None:
    """services/requirements.txt (the Bento's) is what the lock says for what the service
    imports and all it requires; `make lock` rewrites it."""
    from flows.models import SERVICE_PACKAGES, canonical, service_requirements

    lock = (ROOT / "requirements.lock").read_text()
    shipped = [
        line
        for line in (ROOT / "services/requirements.txt").read_text().splitlines()
        if not line.startswith("#")
    ]
    assert shipped == service_requirements(lock), "stale: run `make lock`"
    pinned = {canonical(line.split("==")[0]) for line in shipped}
    assert {canonical(name) for name in SERVICE_PACKAGES} <= pinned
    assert all("==" in line for line in shipped)
    for absent in ("prefect", "dvc", "evidently", "scikit-learn", "matplotlib"):
        assert absent not in pinned, f"{absent} is not the service's"
    bentofile = yaml.safe_load((ROOT / "services/bentofile.yaml").read_text())
    assert bentofile["python"] == {
        "requirements_txt": "./services/requirements.txt",
        "lock_packages": False,
    }
    envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert envs["BENTOML_DO_NOT_TRACK"] == "True" and envs["DO_NOT_TRACK"] == "1"


def test_bento_manifests_agree_with_the_service() -> None:
    documents = {
        d["kind"]: d for d in yaml.safe_load_all((ROOT / "services/k8s/bento.yaml").read_text())
    }
    deployment, service = documents["Deployment"], documents["Service"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 3000, "bentoml serve's port"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "TRANSFEROPS_MODEL_TAG" in env and env["BENTOML_DO_NOT_TRACK"] == "True"
    key_env = load_params(ROOT / "params.yaml").serve.api_key_env
    (key,) = [e for e in container["env"] if e["name"] == key_env]
    assert "secretKeyRef" in key["valueFrom"], "the API key comes from a Secret, not the file"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # Safe as shipped: SQLite on one pod's own volume, and TLS in front of it.
    assert deployment["spec"]["replicas"] == 1, "SQLite is one pod's store"
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "never two pods on it"
    claim = documents["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], "not shared between pods"
    assert service["spec"]["type"] == "ClusterIP", "plain HTTP stays inside the cluster"
    ingress = documents["Ingress"]["spec"]
    (tls,) = ingress["tls"]
    assert tls["secretName"] and tls["hosts"] == [ingress["rules"][0]["host"]]
    backend = ingress["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert (
        documents["Ingress"]["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-redirect"]
        == "true"
    )
    log_dir = load_params(ROOT / "params.yaml").paths.prediction_log
    mount = container["volumeMounts"][0]["mountPath"]
    assert mount.endswith("/" + Path(log_dir).parts[0]), "the mount holds paths.prediction_log"


def test_the_compose_prefect_api_is_local_and_authenticated_with_secrets_from_the_environment():
    services = yaml.safe_load((ROOT / "flows/infra/docker-compose.yaml").read_text())["services"]
    server, postgres, worker = (services[k] for k in ("prefect-server", "postgres", "worker"))
    assert server["ports"] == ["127.0.0.1:4200:4200"], "this machine's loopback only"
    assert "ports" not in postgres, "the database is reachable on the compose network only"
    required = "${PREFECT_DB_PASSWORD:?"  # compose stops with a message when it is not set
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith(required)
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "prefect:${PREFECT_DB_PASSWORD:?}@" in url
    assert server["environment"]["PREFECT_SERVER_API_AUTH_STRING"].startswith(
        "${PREFECT_API_AUTH_STRING:?"
    )
    assert worker["environment"]["PREFECT_API_AUTH_STRING"] == "${PREFECT_API_AUTH_STRING:?}"


@pytest.mark.integration
def test_a_prefect_server_with_an_auth_string_refuses_callers_without_it(
    tmp_path: Path, empty_prefect_db: Path
) -> None:
    """What the compose file sets, on a real server: no string, no API."""
    secret = {"PREFECT_SERVER_API_AUTH_STRING": "admin:s3cret-for-test"}
    with own_prefect_server(tmp_path / "home", empty_prefect_db, settings=secret) as api:
        anonymous = httpx.post(f"{api}/flows/filter", json={}, timeout=10)
        wrong = httpx.post(f"{api}/flows/filter", json={}, auth=("admin", "guess"), timeout=10)
        admitted = httpx.post(
            f"{api}/flows/filter", json={}, auth=("admin", "s3cret-for-test"), timeout=10
        )
    assert (anonymous.status_code, wrong.status_code, admitted.status_code) == (401, 401, 200)
