"""The demo's terminal: library logs go to files, the story and its closing table stay short."""

import io
import logging
import sys
import warnings
from pathlib import Path

from rich.console import Console

from flows.cli import build_parser
from flows.demo import summary_table, where_to_look
from flows.story import Step, Story, headline, log_family, logs_to_files
from tests.conftest import ROOT
from transferops.config import load_params
from transferops.runtime import configure_runtime


def test_the_live_line_shows_what_a_stage_said_without_its_prefix() -> None:
    relayed = "2026-11-29 19:06:26,995 INFO transferops.models.candidates: lr x3 epoch 5/6"
    assert headline(relayed) == "lr x3 epoch 5/6"
    assert headline("Running stage 'train':\n> python -m pipelines.train") == (
        "> python -m pipelines.train"
    )
    assert headline("") == ""


def test_a_long_outcome_wraps_under_its_step() -> None:
    console = Console(record=True, width=40, file=io.StringIO())
    Step(console).say("gate: [bold]PROMOTED[/]: accuracy 0.8579 vs champion 0.8393: +0.0186")
    lines = console.export_text().splitlines()
    assert len(lines) == 2, lines
    assert all(line.startswith("  ") and not line.endswith(" ") for line in lines), lines
    assert "gate: PROMOTED: accuracy" in lines[0], "markup is applied, not printed"


def test_each_logger_has_one_file() -> None:
    assert log_family("prefect.task_runs") == "runs"
    assert log_family("prefect.flow_runs") == "runs"
    assert log_family("monitoring.drift") == "transferops"
    assert log_family("__main__") == "transferops"
    assert log_family("prefect") == "libraries"
    assert log_family("bentoml._internal") == "libraries"
    assert log_family("transferopsx") == "libraries", "a prefix, not a name, is not enough"


def test_what_libraries_say_at_info_before_the_story_starts_stays_quiet() -> None:
    # On a fresh machine matplotlib's first import logged "generated new
    # fontManager" at INFO, before the story moved the logs to files.
    # The commands run at INFO; under pytest, whose handlers make basicConfig a
    # no-op, the root logger is set there by hand.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    try:
        configure_runtime()
        for name in ("matplotlib.font_manager", "great_expectations.core", "dvc.repo", "httpx"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
        assert logging.getLogger("transferops.models").isEnabledFor(logging.INFO)
    finally:
        root.setLevel(level)


def test_logs_leave_the_terminal_for_files_and_come_back(tmp_path: Path, capsys) -> None:
    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.stderr)
    root.addHandler(terminal)
    # Prefect gives some loggers a console handler of their own and stops propagation.
    own = logging.getLogger("prefect.extra.story-test")
    own.propagate, own_terminal = False, logging.StreamHandler(sys.stderr)
    own.addHandler(own_terminal)
    level = root.level
    root.setLevel(logging.INFO)
    try:
        with logs_to_files(tmp_path) as files:
            logging.getLogger("prefect.task_runs").info("To track the changes with git")
            logging.getLogger("monitoring.drift").info("drift check: no_drift")
            logging.getLogger("bentoml.serve").warning("a library speaks")
            own.warning("from a logger that does not propagate")
            with warnings.catch_warnings():  # shown, whatever filters pytest set
                warnings.simplefilter("always")
                warnings.warn("a deprecation somewhere", UserWarning, stacklevel=1)
            from tqdm import tqdm

            for _ in tqdm(range(3), desc="a bar", disable=False):
                pass
        assert capsys.readouterr().err == "", "nothing reached the terminal"
        assert "To track the changes" in files["runs"].read_text()
        assert "drift check" in files["transferops"].read_text()
        libraries = files["libraries"].read_text()
        assert "a library speaks" in libraries and "does not propagate" in libraries
        assert "a deprecation somewhere" in libraries
        assert "a bar" in files["stderr"].read_text(), "tqdm's bar went to stderr.log"
        assert "drift check" not in files["runs"].read_text() + libraries
        assert terminal in root.handlers and own_terminal in own.handlers, "restored"
        logging.getLogger("monitoring.drift").warning("after the story")
        assert "after the story" in capsys.readouterr().err
    finally:
        root.removeHandler(terminal)
        own.removeHandler(own_terminal)
        root.setLevel(level)


def test_a_failing_step_names_the_logs_and_the_error_passes(tmp_path: Path) -> None:
    console = Console(record=True, width=100)
    raised = False
    with Story(console, tmp_path) as story:
        try:
            with story.step("a step that fails"):
                raise RuntimeError("boom")
        except RuntimeError:
            raised = True
    assert raised
    text = console.export_text()
    assert "0. a step that fails" in text and "failed" in text and "runs.log" in text


SUMMARY = {
    "first_model": {
        "model_tag": "transferops-classifier:lkdykwxl7ks5cax4",
        "accuracy": 0.868,
        "gate": {"promoted": True, "report": "reports/gate/lkdykwxl7ks5cax4.json"},
    },
    "normal_accuracy": 0.84,
    "normal": {"status": "no_drift", "tests": {"embedding": {"fired": False}}},
    "shifted_accuracy_before": 0.705,
    "first_alarm": {"retrain": False},
    "waiting": {"waiting": {"ankle_boot": [0, 30], "bag": [0, 30], "coat": [0, 30]}},
    "labelled": [600, 12],
    "shifted": {
        "status": "drift",
        "shift_location": "early",
        "tests": {n: {"fired": True} for n in ("embedding", "classifier", "stat:sharpness")},
        "accuracy": {"estimated": 0.73, "reference": 0.868},
        "report_dir": "reports/drift/20261129T161304055324Z",
    },
    "decision": {
        "retrain": True,
        "strategy": "surgical",
        "reason": "drift",
        "harvest": "harvest-20261207T235749",
    },
    "domains": [
        {"domain": "base", "known": True, "n": 500, "champion": 0.854, "challenger": 0.858},
        {
            "domain": "harvest-20261207T235749",
            "known": False,
            "n": 90,
            "champion": 0.611,
            "challenger": 0.744,
        },
    ],
    "retrain_run": {"name": "camouflaged-adder", "state": "COMPLETED"},
    "retrain_minutes": 3.7,
    "retrained": {
        "model_tag": "transferops-classifier:hskdqxhmcc5ooax4",
        "accuracy": 0.871,
        "gate": {"promoted": True, "report": "reports/gate/hskdqxhmcc5ooax4.json"},
        "service": {"switched": True, "after_s": 2.1},
    },
    "serving_after": "transferops-classifier:hskdqxhmcc5ooax4",
    "shifted_accuracy_after": 0.795,
    "freeze": "surgical (medium data, different task): trains stem, block0, classifier",
    "minutes": 10.0,
    "shift": "blur",
    "index": "reports/index.html",
    "prefect": {"port": 4200},
    "logs": {"runs.log": "reports/demo/logs/runs.log", "serve": "reports/demo/serve.log"},
}


def test_the_closing_table_fits_80_columns_without_breaking_words() -> None:
    narrow = Console(record=True, width=80)
    narrow.print(summary_table(SUMMARY))
    text = narrow.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    # Tags are the longest words: a cell never splits one across lines.
    assert "transferops-classifier:hskdqxhmcc5ooax4" in text
    wide = Console(record=True, width=250)
    wide.print(summary_table(SUMMARY))
    text = wide.export_text()
    for fact in ("PROMOTED", "0.705 -> 0.795", "camouflaged-adder", "DRIFT (early)", "10.0 min",
                 "3 classes short (ankle_boot 0/30, bag 0/30, ...)", "612 labels", "2 rounds",
                 "on harvest-20261207T235749", "0.854 -> 0.858 on its 500 test images",
                 "0.611 -> 0.744 on its 90"):  # fmt: skip
        assert fact in text, fact


def test_the_commands_it_suggests_parse_and_the_paths_are_the_workspace_s() -> None:
    params = load_params(ROOT / "params.yaml")
    workspace = ROOT / "demo-workspace"
    text = where_to_look(SUMMARY, params, workspace, ROOT)
    activate = text.split("source ", 1)[1].split()[0]
    assert (workspace / activate).resolve().is_file(), activate
    parser = build_parser()
    commands = [
        line.strip().split("  ")[0].split()[1:]
        for line in text.splitlines()
        if line.strip().startswith("transferops ")
    ]
    assert [c[0] for c in commands] == ["serve", "monitor", "report", "models"]
    for command in commands:
        parser.parse_args(command)  # exits (fails the test) on an unknown option
    assert "reports/drift/20261129T161304055324Z/report.html" in text
    assert (
        max(len(line) for line in text.replace("[bold]", "").replace("[/bold]", "").splitlines())
        <= 80
    )
    assert "reports/demo/serve.log" in text
