"""The freeze-strategy selector: regions, forcing, layer-wise rates, and the CLI on real images."""

import json
from pathlib import Path

import pytest

from tests.commands import transferops
from tests.conftest import FASHION_MNIST, ROOT
from tests.imagefiles import fashion_mnist_folder
from transferops.config import CLASSIC_REGIONS, load_params
from transferops.models.strategy import decide, trainable_stages

STAGES = ["stem", *[f"block{i}" for i in range(7)], "head"]


def numbers(per_class: int, knn_similarity: float) -> dict:
    return {
        "images": per_class * 10,
        "classes": 10,
        "per_class_min": per_class,
        "knn_accuracy": 0.1 + 0.9 * knn_similarity,
        "knn_similarity": knn_similarity,
        "logme": 0.1,
        "leep": -1.0,
        "backbone": "tf_efficientnet_lite0",
        "bn_distance": dict.fromkeys(STAGES, 0.1) | {"stem": 0.9},
        "shift_location": "early",
    }


# The mechanics of the plane are tested on the classic table (thresholds 50/500),
# whatever table params.yaml ships; the shipped one has its own test below.
CLASSIC = [
    "strategy.small_per_class=50",
    "strategy.large_per_class=500",
    *(f"strategy.regions.{region}={strategy}" for region, strategy in CLASSIC_REGIONS.items()),
]


def strategy_params(*overrides: str):
    return load_params(ROOT / "params.yaml", [*CLASSIC, *overrides]).strategy


def shipped_params():
    return load_params(ROOT / "params.yaml", []).strategy


def train_params(*overrides: str):
    return load_params(ROOT / "params.yaml", ["train.finetune_lr=0.001", *overrides]).train


@pytest.mark.parametrize(
    ("per_class", "similarity", "expected"),
    [
        (10, 0.95, "linear_probe"),
        (10, 0.2, "most_blocks"),
        (100, 0.95, "top_blocks"),
        (100, 0.2, "most_blocks"),
        (1000, 0.95, "most_blocks"),
        (1000, 0.2, "full"),
    ],
)
def test_regions_of_the_size_similarity_plane(
    per_class: int, similarity: float, expected: str
) -> None:
    decision = decide(numbers(per_class, similarity), STAGES, strategy_params(), train_params())
    assert decision.strategy == expected
    assert expected in decision.reason and f"{per_class} per class" in decision.reason


@pytest.mark.parametrize(
    ("per_class", "similarity", "expected"),
    [(4, 0.95, "linear_probe"), (4, 0.2, "linear_probe"), (5, 0.2, "full"), (30, 0.95, "full")],
)
def test_the_shipped_rule_fine_tunes_everything_from_five_labels_per_class(
    per_class: int, similarity: float, expected: str
) -> None:
    """params.yaml's table: the held-out fit of docs/strategy.md."""
    decision = decide(numbers(per_class, similarity), STAGES, shipped_params(), train_params())
    assert decision.strategy == expected, decision.reason


def test_few_and_many_labels_decide_differently_and_say_why() -> None:
    few = decide(numbers(10, 0.75), STAGES, strategy_params(), train_params())
    many = decide(numbers(1000, 0.75), STAGES, strategy_params(), train_params())
    assert few.strategy != many.strategy
    assert "small" in few.reason and "large" in many.reason
    assert "input-level" in many.reason, "an early BN shift is named"


def test_layer_wise_learning_rates_decay_away_from_the_head() -> None:
    decision = decide(
        numbers(1000, 0.2), STAGES, strategy_params("strategy.layer_decay=0.5"), train_params()
    )
    rates = decision.learning_rates
    assert rates["classifier"] == 1e-3 and rates["head"] == 5e-4 and rates["block6"] == 2.5e-4
    assert rates["stem"] == pytest.approx(1e-3 * 0.5**9)
    assert [p["phase"] for p in decision.schedule] == ["linear_probe", "fine_tune"]


def test_forced_strategy_wins_and_is_recorded() -> None:
    decision = decide(
        numbers(10, 0.9), STAGES, strategy_params("strategy.force=full"), train_params()
    )
    assert decision.strategy == "full" and decision.forced
    assert "strategy.force" in decision.reason and "would choose linear_probe" in decision.reason
    assert trainable_stages("full", STAGES) == [*STAGES, "classifier"]


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_profile_command_on_an_unseen_image_folder(tmp_path: Path) -> None:
    unseen = fashion_mnist_folder(tmp_path / "unseen", 200)
    out = tmp_path / "out"
    result = transferops(
        "--params",
        str(ROOT / "params.yaml"),
        "profile",
        str(unseen),
        "--out",
        str(out),
        "-S",
        "model.image_size=32",
        "-S",
        "profile.bn_images=32",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((out / "decision.json").read_text())
    assert record["size"] == "medium", "about 16 labels per class"
    assert record["strategy"] == "full", "the shipped table fine-tunes from 5 labels per class"
    for key in (
        "logme",
        "leep",
        "knn_accuracy",
        "knn_similarity",
        "per_class_min",
        "bn_distance",
        "shift_location",
    ):
        assert key in record["numbers"], key
        assert key.split("_")[0].upper() in result.stdout.upper() or key in result.stdout
    assert (out / "strategy.png").stat().st_size > 10_000


def test_surgical_trains_the_first_stages_only() -> None:
    decision = decide(
        numbers(100, 0.5), STAGES, strategy_params("strategy.force=surgical"), train_params()
    )
    assert decision.strategy == "surgical" and decision.forced
    assert decision.trainable_stages == ["stem", "block0", "classifier"]
    three = strategy_params("strategy.force=surgical", "strategy.surgical_stages=3")
    assert decide(numbers(100, 0.5), STAGES, three, train_params()).trainable_stages == [
        "stem",
        "block0",
        "block1",
        "classifier",
    ]


def test_the_similarity_measure_and_the_regions_come_from_params() -> None:
    profile = numbers(100, 0.2) | {"leep": -0.1}  # far by k-NN, near by LEEP
    by_knn = decide(profile, STAGES, strategy_params(), train_params())
    assert (by_knn.size, by_knn.similar, by_knn.strategy) == ("medium", False, "most_blocks")
    by_leep = decide(
        profile,
        STAGES,
        strategy_params("strategy.similarity=leep", "strategy.similar_at=0.5"),
        train_params(),
    )
    assert by_leep.similar and by_leep.strategy == "top_blocks"
    assert "LEEP, normalised" in by_leep.reason and "threshold 0.5" in by_leep.reason
    table = strategy_params("strategy.regions.medium/different=full")
    assert decide(profile, STAGES, table, train_params()).strategy == "full"


def test_a_region_table_missing_a_region_is_refused() -> None:
    from transferops.config import ParamsError

    with pytest.raises(ParamsError, match="regions needs exactly the keys"):
        strategy_params("strategy.regions={small/similar: full}")
