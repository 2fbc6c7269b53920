"""Every command answers --help; bad params stop with a named error."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.commands import transferops
from tests.conftest import ROOT, STAGES, absolute_paths, write_params

COMMANDS = [
    ["transferops"],
    ["transferops", "train"],
    ["transferops", "monitor"],
    ["transferops", "serve"],
    ["transferops", "check"],
    ["transferops", "profile"],
    ["transferops", "data"],
    ["transferops", "data", "add"],
    ["transferops", "data", "list"],
    ["transferops", "data", "checkout"],
    ["transferops", "demo"],
    ["transferops", "gate"],
    ["transferops", "promote"],
    ["transferops", "rollback"],
    ["transferops", "models"],
    ["transferops", "bento"],
    ["transferops", "deploy"],
    ["transferops", "report"],
    *[["stage", s] for s in STAGES],
    ["module", "monitoring.drift"],
]


def entry_point(words: list[str]):
    """The ``main(argv)`` behind a command and the arguments before ``--help``."""
    if words[0] == "transferops":
        return importlib.import_module("flows.cli").main, words[1:]
    if words[0] == "stage":
        return importlib.import_module(f"pipelines.{words[1]}").main, []
    return importlib.import_module(words[1]).main, []


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_help(words: list[str], capsys: pytest.CaptureFixture) -> None:
    """In this process: a subprocess per command spent 5 s each importing torch."""
    main, argv = entry_point(words)
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_help_of_the_installed_commands() -> None:
    """The console script and ``python -m`` reach the same parsers."""
    for command in (
        [str(Path(sys.executable).parent / "transferops"), "--help"],
        [sys.executable, "-m", "pipelines.prepare", "--help"],
    ):
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "usage:" in result.stdout


def test_bad_params_value_is_named(tmp_path: Path) -> None:
    bad = write_params(tmp_path / "params.yaml", {"serve.top_k": 0})
    result = transferops("--params", str(bad), "train")
    assert result.returncode == 2
    assert f"{bad}: serve.top_k = 0" in result.stderr


@pytest.mark.parametrize("command", [["check"], ["profile"], ["data", "add"]], ids=" ".join)
def test_unreadable_source_is_named_without_a_traceback(tmp_path: Path, command: list) -> None:
    missing = tmp_path / "no-such-folder"
    result = transferops(
        "--params", str(ROOT / "params.yaml"), *command, str(missing), cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert f"error: {missing}: expected an ImageFolder" in result.stderr
    assert "Traceback" not in result.stderr


# A process of its own (the console command's imports): 10 s; not in make check.
@pytest.mark.slow
def test_deploy_without_a_server_explains_how_to_start_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "flows.cli", "--params", str(ROOT / "params.yaml"), "deploy"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env | {"PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert result.returncode == 2, result.stderr
    assert "prefect server start" in result.stderr
    assert "PREFECT_API_URL=http://127.0.0.1:4200/api" in result.stderr


def test_report_on_a_project_with_no_runs_yet_explains_each_section(tmp_path: Path) -> None:
    params = write_params(tmp_path / "params.yaml", absolute_paths(tmp_path))
    result = transferops("--params", str(params), "report", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "reports" / "index.html").read_text()
    assert result.stdout.strip() == str(tmp_path / "reports" / "index.html")
    for key in ("drift", "bias", "decisions", "models", "validation", "runs"):
        assert f'<section id="{key}">' in page
    assert "No drift check yet" in page and "No champion yet" in page and "No run yet" in page


@pytest.mark.parametrize(
    ("how", "named"),
    [
        (["-S", "serve.api_key_env=HOME"], "serve.api_key_env (to 'HOME')"),
        (["-S", "paths.registry=/etc/passwd"], "paths.registry (to '/etc/passwd')"),
        (["-S", "orchestrate.run_keys=[serve]"], "orchestrate.run_keys"),
    ],
    ids=["a secret's name", "a path", "the allow-list itself"],
)
def test_a_run_may_change_only_the_run_keys(tmp_path: Path, how: list[str], named: str) -> None:
    """`transferops train` refuses, by name and before anything runs, a change that
    orchestrate.run_keys does not allow; edited into params.yaml it would be the user's."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    result = transferops("train", *how, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"a run may not change {named}" in result.stderr
    assert "orchestrate.run_keys" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"], "nothing ran"
    other = write_params(tmp_path / "other.yaml", {"gate.min_improvement": -1.0})
    result = transferops("--params", str(other), "train", cwd=tmp_path)
    assert result.returncode == 2 and "gate.min_improvement (to -1.0)" in result.stderr


def test_an_activated_venv_has_telemetry_off_for_the_commands_the_docs_print() -> None:
    """`make install` appends the opt-outs to .venv/bin/activate: `prefect server start`,
    `bentoml serve`, `evidently ui` typed in an activated shell report nothing."""
    from transferops.runtime import TELEMETRY_OFF

    activated = subprocess.run(
        ["bash", "-c", f"source {Path(sys.prefix) / 'bin' / 'activate'} && env"],
        capture_output=True, text=True, env={"PATH": os.environ["PATH"]}, check=True,
    )  # fmt: skip
    env = dict(line.split("=", 1) for line in activated.stdout.splitlines() if "=" in line)
    assert {key: env.get(key) for key in TELEMETRY_OFF} == TELEMETRY_OFF


def test_version_json_and_params_after_the_command(tmp_path: Path) -> None:
    from importlib.metadata import version

    shown = transferops("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == f"transferops {version('transferops')}"
    params = write_params(tmp_path / "params.yaml", absolute_paths(tmp_path))
    listed = transferops("data", "list", "--json", "--params", str(params), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == []
    models = transferops("models", "--history", "--json", "--params", str(params), cwd=tmp_path)
    assert models.returncode == 0 and json.loads(models.stdout) == [], models.stderr
    bad = write_params(tmp_path / "bad.yaml", {"serve.top_k": 0})
    after = transferops("data", "list", "--params", str(bad), cwd=tmp_path)
    assert after.returncode == 2 and f"{bad}: serve.top_k = 0" in after.stderr


def test_an_unexpected_failure_exits_4_with_one_line_and_the_traceback_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import flows.models

    def broken(params):
        raise RuntimeError("the store's index is corrupt")

    monkeypatch.setattr(flows.models, "model_rows", broken)
    params = write_params(tmp_path / "params.yaml", absolute_paths(tmp_path))
    result = transferops("--params", str(params), "models", "--json", cwd=tmp_path)
    assert result.returncode == 4
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: unexpected RuntimeError: the store's index is corrupt")
    kept = Path(line.rsplit("traceback: ", 1)[1].rstrip(")"))
    assert kept.is_file() and "Traceback" in kept.read_text() and "broken" in kept.read_text()
