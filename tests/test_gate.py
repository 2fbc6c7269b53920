"""The promotion gate and the champion record, on really trained and packaged models.

Two real models share the session's tiny project: ``trained`` (the pipeline's
own model) and ``untrained`` (the same pipeline with a zero-epoch linear
probe, packaged into the same store). Each test gets its own champion folder
and reports, so they do not see each other's promotions.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.client import png_bytes
from tests.bento_env import venv_from_requirements
from tests.commands import run_stage
from tests.commands import transferops as run_command
from tests.conftest import ROOT, STAGES, absolute_paths, write_params
from tests.models import always_answering
from transferops.config import load_params
from transferops.data.datasets import ACCEPTED, read_accepted
from transferops.data.shifts import HeldOutPool, write_labelled_drop
from transferops.models.evaluation import score_split
from transferops.registry import champion
from transferops.registry.gate import run_gate
from transferops.registry.packaging import candidate_tag
from transferops.registry.store import load_stored

# Its module-scoped fixtures are built once: under xdist every test here runs on one worker.
pytestmark = pytest.mark.xdist_group("test_gate")


@dataclass(frozen=True)
class Models:
    trained: str
    untrained: str
    project: Path  # the trained project's params file


@pytest.fixture(scope="module")
def models(trained_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Models:
    """The session's trained model, and a zero-epoch one packaged beside it."""
    params = load_params(trained_project)
    side = tmp_path_factory.mktemp("untrained")
    outputs = {f"paths.{k}": str(side / k) for k in ("profile", "model", "checkpoints")}
    outputs |= {f"paths.{k}": str(side / k) for k in ("train_log", "evaluation", "package")}
    untrained = write_params(
        side / "params.yaml",
        outputs | {"train.probe_epochs": 0, "strategy.force": "linear_probe"},
        base=trained_project,
    )
    (side / "profile").mkdir()
    shutil.copy2(params.paths.profile / "profile.json", side / "profile")
    for stage in ("strategy", "train", "evaluate", "package"):
        run_stage(stage, untrained)
    return Models(
        trained=candidate_tag(params.paths.package),
        untrained=candidate_tag(side / "package"),
        project=trained_project,
    )


def gate_params(models: Models, tmp_path: Path, **changes):
    """The trained project's params with this test's own champion folder and reports."""
    own = {"paths.models": str(tmp_path / "models"), "paths.reports": str(tmp_path / "reports")}
    return load_params(write_params(tmp_path / "params.yaml", own | changes, base=models.project))


def test_first_model_becomes_champion(models: Models, tmp_path: Path) -> None:
    params = gate_params(models, tmp_path)
    verdict = run_gate(params, models.trained)
    assert verdict.promote and verdict.champion is None
    record = champion.current(params.paths.models)
    assert record.tag == models.trained and record.previous is None
    assert record.via == "promotion gate" and record.gate["challenger_score"] > 0.4
    assert json.loads(Path(verdict.report).read_text())["promote"] is True


def test_worse_challenger_is_not_promoted_and_champion_is_untouched(
    models: Models, tmp_path: Path
) -> None:
    params = gate_params(models, tmp_path)
    run_gate(params, models.trained)
    pointer, log = params.paths.models / "champion.json", params.paths.models / "history.jsonl"
    before = (pointer.read_bytes(), log.read_bytes())

    verdict = run_gate(params, models.untrained)

    assert not verdict.promote
    assert verdict.challenger_score < verdict.champion_score - 0.2, "zero epochs: near chance"
    assert "< gate.min_improvement" in verdict.reasons[0]
    assert (pointer.read_bytes(), log.read_bytes()) == before, "champion and history untouched"
    saved = json.loads(Path(verdict.report).read_text())
    assert saved["champion"] == models.trained and saved["promote"] is False
    assert Path(verdict.report).with_suffix(".png").stat().st_size > 5_000


def test_better_challenger_is_promoted(models: Models, tmp_path: Path) -> None:
    params = gate_params(models, tmp_path)
    champion.promote(params.paths.models, models.untrained, reason="test setup", via="test")

    verdict = run_gate(params, models.trained)

    assert verdict.promote, verdict.reasons
    low, high = verdict.improvement_ci
    assert 0 < low <= verdict.improvement <= high, "paired bootstrap interval around the gain"
    record = champion.current(params.paths.models)
    assert (record.tag, record.previous) == (models.trained, models.untrained)
    assert [r.tag for r in champion.history(params.paths.models)] == [
        models.untrained,
        models.trained,
    ]


def test_challenger_worse_for_one_group_is_not_promoted(models: Models, tmp_path: Path) -> None:
    """Better overall, but one group loses: the champion stays, and the reason names the group.

    The champion always answers one class, so it is perfect on the group of
    images of that class (say, a product line); the trained challenger is far
    better overall but misses some of them.
    """
    project = load_params(models.project)
    accepted = read_accepted(project.paths.validation)
    test = accepted[accepted["split"] == "test"]
    model, config = load_stored(models.trained)
    scored = score_split(model, config, test, project.paths.prepared, 64, "cpu")
    recall = {c: scored.correct[scored.labels == c].mean() for c in set(scored.labels)}
    weakest = min(recall, key=recall.get)
    assert recall[weakest] < 0.9, "precondition: the challenger misses some of one class"
    grouped = accepted.copy()
    grouped.loc[test.index, "group"] = np.where(test["label"] == weakest, weakest, "other")
    validation = tmp_path / "validation"
    validation.mkdir()
    grouped.to_csv(validation / ACCEPTED, index=False)
    holder = always_answering(models.trained, weakest)
    settings = {"paths.validation": str(validation), "gate.min_group_size": 5}

    strict = gate_params(models, tmp_path, **settings)
    champion.promote(strict.paths.models, holder, reason="test setup", via="test")
    verdict = run_gate(strict, models.trained)

    assert verdict.improvement > 0.2, "better overall by far"
    assert not verdict.promote
    assert any(r.startswith(f"group {weakest!r}") for r in verdict.reasons), verdict.reasons
    entry = next(g for g in verdict.groups if g["group"] == weakest)
    assert entry["champion"] == 1.0 and entry["challenger"] == pytest.approx(recall[weakest])
    assert champion.current(strict.paths.models).tag == holder

    # The same challenger passes once the group margin allows the drop.
    lenient = gate_params(models, tmp_path, **settings, **{"gate.max_group_drop": 1.0})
    assert run_gate(lenient, models.trained).promote


def test_a_challenger_trained_on_the_drop_alone_forgets_and_is_refused(
    models: Models, tmp_path: Path
) -> None:
    """Trained on inverted images alone, the challenger gains on them and loses the original
    domain: the gate scores both apart and refuses it for forgetting."""
    project = load_params(models.project)
    pool = HeldOutPool(project.data.source, project.paths.prepared, seed=1)
    incoming = tmp_path / "incoming"
    drop = write_labelled_drop(pool.take(200, "invert"), incoming / "inverted")
    alone = write_params(
        tmp_path / "alone.yaml",
        absolute_paths(tmp_path / "alone")
        | {"data.format": "imagefolder", "data.source": str(drop), "strategy.force": "full"},
        base=models.project,
    )
    for stage in STAGES:
        run_stage(stage, alone)
    merged = {k: str(tmp_path / k) for k in ("prepared", "validation")}
    gate = gate_params(
        models, tmp_path, **{f"paths.{k}": v for k, v in merged.items()},
        **{"paths.incoming": str(incoming)},
    )  # fmt: skip
    for stage in ("prepare", "validate"):  # the base data and the drop, together
        run_stage(stage, tmp_path / "params.yaml")
    champion.promote(gate.paths.models, models.trained, reason="test setup", via="test")

    verdict = run_gate(gate, candidate_tag(load_params(alone).paths.package))

    domains = {d["domain"]: d for d in verdict.domains}
    assert set(domains) == {"base", "inverted"}, domains
    assert domains["base"]["known"] and not domains["inverted"]["known"]
    assert domains["inverted"]["change"] > 0, "it learned the new domain"
    assert domains["base"]["change_ci"][0] < -gate.gate.max_forgetting, domains["base"]
    assert not verdict.promote
    assert any(r.startswith("forgetting: domain 'base'") for r in verdict.reasons), verdict.reasons
    assert champion.current(gate.paths.models).tag == models.trained
    saved = json.loads(Path(verdict.report).read_text())
    assert [d["domain"] for d in saved["domains"]] == ["base", "inverted"]


KILL_AT = {
    # SIGKILL instead of the rename that commits the new champion.
    "before the commit": "os.replace = crash",
    # SIGKILL after the rename, before the history line is written.
    "after the commit": "champion._append = crash",
}


def crash_promotion(models_dir: Path, tag: str, point: str) -> subprocess.CompletedProcess:
    code = "\n".join(
        [
            "import os, signal",
            "from transferops.registry import champion",
            "def crash(*args, **kwargs): os.kill(os.getpid(), signal.SIGKILL)",
            KILL_AT[point],
            f"champion.promote({str(models_dir)!r}, {tag!r}, reason='crash test', via='test')",
        ]
    )
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)


def test_crash_mid_promotion_leaves_the_previous_champion(models: Models, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    champion.promote(models_dir, models.trained, reason="first", via="test")
    before = (models_dir / "champion.json").read_bytes()

    killed = crash_promotion(models_dir, models.untrained, "before the commit")

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (models_dir / "champion.json").read_bytes() == before
    assert champion.current(models_dir).tag == models.trained
    assert list(models_dir.glob(".champion.json.*.tmp")), "the crash left its half-done file"
    # The next promotion works and clears the leftover.
    champion.promote(models_dir, models.untrained, reason="after the crash", via="test")
    assert champion.current(models_dir).tag == models.untrained
    assert not list(models_dir.glob(".champion.json.*.tmp"))


def test_crash_after_the_commit_is_logged_by_the_next_change(
    models: Models, tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    champion.promote(models_dir, models.trained, reason="first", via="test")

    killed = crash_promotion(models_dir, models.untrained, "after the commit")

    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert champion.current(models_dir).tag == models.untrained, "the rename had happened"
    assert len((models_dir / "history.jsonl").read_text().splitlines()) == 1
    assert [r.tag for r in champion.history(models_dir)] == [models.trained, models.untrained]
    champion.rollback(models_dir, reason="repairs the log first", via="test")
    logged = [json.loads(line) for line in (models_dir / "history.jsonl").read_text().splitlines()]
    assert [(r["tag"], r["action"]) for r in logged] == [
        (models.trained, "promote"),
        (models.untrained, "promote"),
        (models.trained, "rollback"),
    ]


def test_promotion_refuses_when_the_champion_changed_since_the_comparison(
    models: Models, tmp_path: Path
) -> None:
    models_dir = tmp_path / "models"
    champion.promote(models_dir, models.trained, reason="first", via="test", expected=None)
    with pytest.raises(champion.ChampionError, match="champion changed"):
        champion.promote(models_dir, models.untrained, reason="r", via="t", expected=None)
    assert champion.current(models_dir).tag == models.trained
    assert len(champion.history(models_dir)) == 1


def transferops(params: Path, *args: str) -> subprocess.CompletedProcess:
    return run_command("--params", str(params), *args)


def test_promote_rollback_and_models_commands(models: Models, tmp_path: Path) -> None:
    params = gate_params(models, tmp_path)
    params_file = tmp_path / "params.yaml"

    gated = transferops(params_file, "gate", models.trained)
    assert gated.returncode == 0 and "PROMOTE" in gated.stdout, gated.stderr
    kept = transferops(params_file, "gate", models.untrained)
    assert kept.returncode == 1 and "KEEP CHAMPION" in kept.stdout, kept.stderr

    promoted = transferops(params_file, "promote", models.untrained, "--reason", "A/B by hand")
    assert promoted.returncode == 0, promoted.stderr
    assert champion.current(params.paths.models).tag == models.untrained
    rolled = transferops(params_file, "rollback", "--reason", "A/B over")
    assert rolled.returncode == 0, rolled.stderr
    assert champion.current(params.paths.models).tag == models.trained

    history = [r for r in champion.history(params.paths.models)]
    assert [(r.action, r.via, r.reason) for r in history[1:]] == [
        ("promote", "transferops promote", "A/B by hand"),
        ("rollback", "transferops rollback", "A/B over"),
    ]
    assert all(r.actor for r in history)
    listing = transferops(params_file, "models")
    assert listing.returncode == 0
    starred = [line for line in listing.stdout.splitlines() if "★ champion" in line]
    assert len(starred) == 1 and models.trained in starred[0], listing.stdout

    missing = transferops(
        params_file, "promote", "transferops-classifier:nosuchversion", "--reason", "x"
    )
    assert missing.returncode == 2
    assert "'transferops-classifier:nosuchversion' is not in the BentoML store" in missing.stderr
    first = transferops(params_file, "rollback", "--reason", "too far")
    assert first.returncode == 2 and "first champion" in first.stderr


def test_model_lineage_answers_where_it_came_from(models: Models) -> None:
    result = transferops(models.project, "models", models.trained)
    assert result.returncode == 0, result.stderr
    lineage = json.loads(result.stdout)
    project = load_params(models.project)
    decision = json.loads((project.paths.profile / "decision.json").read_text())
    metrics = json.loads((project.paths.evaluation / "metrics.json").read_text())
    assert lineage["data_version"].startswith("manifest-"), "outside DVC: the manifest's hash"
    assert lineage["git_revision"]
    assert lineage["strategy"]["name"] == decision["strategy"]
    assert lineage["strategy"]["trainable_stages"] == decision["trainable_stages"]
    assert lineage["metrics"]["accuracy"] == metrics["accuracy"]
    assert lineage["metrics"]["ci"]["accuracy"] == metrics["ci"]["accuracy"]
    assert lineage["params"]["data.train_size"] == 100
    assert lineage["preprocessing"]["input_size"] == [3, 32, 32]
    assert {"model.safetensors", "reference.npz", "decision.json", "reliability.png"} <= set(
        lineage["files"]
    )


def requirements_in(path: Path) -> set[tuple[str, str, str]]:
    """(name, version pin, marker) of each line, as packaging reads them (BentoML rewrites
    the lines it copies, and adds its own pin, which the file has too)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    parsed = [Requirement(line) for line in path.read_text().splitlines()
              if line.strip() and not line.startswith("#")]  # fmt: skip
    return {(canonicalize_name(r.name), str(r.specifier), str(r.marker)) for r in parsed}


@pytest.mark.slow
def test_bento_builds_offline_and_serves_the_champion(models: Models, tmp_path: Path) -> None:
    """``transferops bento`` in a project copy; the Bento, served, answers with the champion."""
    from flows.serving import running_service

    context = tmp_path / "project"
    for part in ("pipelines", "services", "transferops"):
        shutil.copytree(ROOT / part, context / part, ignore=shutil.ignore_patterns("__pycache__"))
    relative = {"paths.models": "models", "paths.prediction_log": "logs"}
    write_params(context / "params.yaml", relative, base=models.project)
    champion.promote(context / "models", models.trained, reason="bento test", via="test")
    planted = [".env", "services/.env.local", ".dvc/config.local", "logs/kept/ab/x.png",
               "transferops/__pycache__/x.py", ".prefect/x.py"]  # fmt: skip
    for secret in planted:  # what a project holds and no Bento may
        (context / secret).parent.mkdir(parents=True, exist_ok=True)
        (context / secret).write_text("secret = 1\n")
    (context / "services" / "requirements.txt").write_text(
        (ROOT / "services" / "requirements.txt").read_text()
    )

    built = subprocess.run(
        [sys.executable, "-m", "flows.cli", "bento"], cwd=context, capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr
    bento_tag = built.stdout.strip().splitlines()[-1]
    assert bento_tag.startswith("transferops:")
    import bentoml

    bento = bentoml.get(bento_tag)
    assert [str(m.tag) for m in bento.info.all_models] == [models.trained]
    packed = {p.relative_to(Path(bento.path) / "src").as_posix()
              for p in (Path(bento.path) / "src").rglob("*") if p.is_file()}  # fmt: skip
    assert not packed & set(planted), sorted(packed & set(planted))
    needed = {"services/service.py", "models/champion.json", "transferops/logs/kept.py"}
    assert needed <= packed, sorted(needed - packed)  # an exclude must not hide code
    bento_pins = requirements_in(Path(bento.path) / "env" / "python" / "requirements.txt")
    assert bento_pins == requirements_in(ROOT / "services" / "requirements.txt"), "the lock's"

    # Served from the Bento, elsewhere, in a fresh venv holding only the Bento's own
    # requirements (and what they require): no project files, no champion folder around.
    python = venv_from_requirements(
        Path(bento.path) / "env" / "python" / "requirements.txt", tmp_path / "bento-venv"
    )
    for absent in ("sklearn", "matplotlib", "prefect", "dvc", "evidently", "transferops"):
        probe = subprocess.run(
            [python, "-c", f"import {absent}"],
            capture_output=True,
            cwd=tmp_path,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        assert probe.returncode != 0, f"{absent} is not in the Bento's environment"
    with running_service(
        cwd=tmp_path,
        target=bento_tag,
        log_file=tmp_path / "bento.log",
        env={"PYTHONPATH": ""},
        python=python,
    ) as url:
        import httpx

        answer = httpx.get(f"{url}/v1/metadata", timeout=30).json()
        image = ("images", ("x.png", png_bytes(Image.new("RGB", (40, 30), "gray")), "image/png"))
        classified = httpx.post(f"{url}/v1/classify", files=[image], timeout=60)
    assert answer["model"] == models.trained
    assert answer["labels"]["data_version"].startswith("manifest-")
    assert classified.status_code == 200, classified.text
    assert classified.json()[0]["model"] == models.trained


def answers(labels: list[str], predictions: list[str]):
    """A Scored of these answers alone (the gate reads labels, predictions and groups)."""
    from transferops.models.evaluation import NO_GROUP, Scored

    n = len(labels)
    return Scored(
        labels=np.asarray(labels), predictions=np.asarray(predictions),
        probabilities=np.zeros((n, 2)), embeddings=np.zeros((n, 2)),
        groups=np.full(n, NO_GROUP), stats=np.zeros((n, 1)), bn=np.zeros((n, 1)), bn_stages=(),
    )  # fmt: skip


def test_forgetting_needs_a_loss_the_interval_cannot_bound() -> None:
    """On 60 base images: a dip the interval cannot bound within the margin is refused, even
    one smaller than the margin; a gain with as wide an interval is not. The new domain's
    gain clears zero."""
    from transferops.registry.gate import compare

    params = load_params(ROOT / "params.yaml")
    truth = ["a"] * 60 + ["b"] * 30
    domains = np.asarray(["base"] * 60 + ["new"] * 30)
    champion_says = ["a"] * 50 + ["b"] * 10 + ["a"] * 30  # base 50/60, new 0/30
    # Mixed disagreement: a net dip of 1 image (-1.7 points: inside the margin, but the
    # interval cannot bound it), and a net gain of 3 with an interval as wide.
    for base_change, refused in ((-1, True), (3, False)):
        says = list(champion_says)
        worse, better = (range(0, 4), range(50, 53)) if refused else (range(0, 3), range(50, 56))
        for i in [*worse, *better]:
            says[i] = "b" if says[i] == "a" else "a"
        says[60:80] = ["b"] * 20  # the new domain: 20 of 30 right now
        promote, reasons, numbers = compare(
            answers(truth, champion_says), answers(truth, says), params.gate,
            params.evaluate, params.seed, domains, {"base"},
        )  # fmt: skip
        base = next(d for d in numbers["domains"] if d["domain"] == "base")
        assert base["change"] == pytest.approx(base_change / 60)
        assert base["change_ci"][0] < -params.gate.max_forgetting, "a wide interval either way"
        assert any(r.startswith("forgetting") for r in reasons) is refused, reasons
        assert promote is not refused, reasons
        assert any("a real gain" in r for r in reasons), "20 of 30 new images: the gain shows"
