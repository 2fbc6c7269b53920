"""The typed params loader: the real file loads; bad values are named precisely."""

from pathlib import Path

import pytest

from tests.conftest import ROOT, write_params
from transferops.config import ParamsError, load_params


def test_real_params_file_loads() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.model.backbone == "tf_efficientnet_lite0"
    assert params.model.weights == "offline", "the default must work without network"


def test_override_in_dvc_form_changes_the_value() -> None:
    params = load_params(ROOT / "params.yaml", ["train.lr=0.01", "data.train_size=10"])
    assert params.train.lr == 0.01
    assert params.data.train_size == 10


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("train.lr", -1, "train.lr = -1"),
        ("train.epochs", "many", "train.epochs = 'many'"),
        ("device", "tpu", "device = 'tpu'"),
        ("monitor.false_alarm_rate", 1.5, "monitor.false_alarm_rate = 1.5"),
    ],
)
def test_bad_value_names_key_value_and_file(
    tmp_path: Path, key: str, value: object, expected: str
) -> None:
    path = write_params(tmp_path / "bad.yaml", {key: value})
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    message = str(caught.value)
    assert str(path) in message, message
    assert expected in message, message


def test_unknown_key_is_refused_with_its_name(tmp_path: Path) -> None:
    path = write_params(tmp_path / "p.yaml", {"train.learning_rate": 0.1})
    with pytest.raises(ParamsError, match=r"unknown key 'train.learning_rate'"):
        load_params(path)


def test_bad_override_is_named() -> None:
    with pytest.raises(ParamsError, match=r"train\.lr = 'fast'"):
        load_params(ROOT / "params.yaml", ["train.lr=fast"])
    with pytest.raises(ParamsError, match="not of the form"):
        load_params(ROOT / "params.yaml", ["train.lr"])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "none.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)


def test_stage_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipelines.prepare import main

    path = write_params(tmp_path / "bad.yaml", {"data.val_size": 0})
    assert main(["--params", str(path)]) == 2
    assert "data.val_size = 0" in capsys.readouterr().err


def test_more_alarms_than_checks_is_refused() -> None:
    with pytest.raises(
        ParamsError, match=r"monitor.retrain.alarms = 4 > monitor.retrain.checks = 3"
    ):
        load_params(ROOT / "params.yaml", ["monitor.retrain.alarms=4"])


def test_run_overrides_are_written_keeping_comments_and_a_bad_one_writes_nothing(
    tmp_path: Path,
) -> None:
    from transferops.config import write_overrides

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    original = path.read_text()
    write_overrides(path, ["train.lr=0.01", "strategy.force=surgical"])
    changed = path.read_text()
    diff = [
        (a, b) for a, b in zip(original.splitlines(), changed.splitlines(), strict=True) if a != b
    ]
    assert len(diff) == 2 and len(changed.splitlines()) == len(original.splitlines())
    assert all("#" in new for _, new in diff), "the lines keep their comments"
    assert load_params(path).train.lr == 0.01 and load_params(path).strategy.force == "surgical"
    assert "force: null" not in changed and "retrain_cron: null" in changed, "nulls stay null"

    with pytest.raises(ParamsError, match=r"strategy\.force"):
        write_overrides(path, ["strategy.force=everything"])
    assert path.read_text() == changed


def test_a_cron_that_is_not_five_fields_is_refused() -> None:
    with pytest.raises(ParamsError, match=r"orchestrate\.monitor_cron = 'hourly'"):
        load_params(ROOT / "params.yaml", ["orchestrate.monitor_cron=hourly"])


def test_the_allow_list_comes_from_params_yaml_not_from_the_run() -> None:
    from transferops.config import RunRefused, changed_keys, refuse_unlisted_changes

    base = load_params(ROOT / "params.yaml")
    allowed = load_params(ROOT / "params.yaml", ["train.lr=0.01", "strategy.force=full"])
    assert changed_keys(base, allowed) == {"strategy.force": "full", "train.lr": 0.01}
    refuse_unlisted_changes(base, allowed, "a run")  # allowed: no error
    widened = load_params(ROOT / "params.yaml", ["orchestrate.run_keys=[serve]", "serve.top_k=9"])
    with pytest.raises(RunRefused) as refused:
        refuse_unlisted_changes(base, widened, "a run")
    assert "orchestrate.run_keys (to ['serve'])" in str(refused.value)
    assert "serve.top_k (to 9)" in str(refused.value)
