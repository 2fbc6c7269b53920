"""The one typed loader for ``params.yaml``.

Every stage and command reads its settings through :func:`load_params`. An
unknown key, a wrong type or an out-of-range value stops with
:class:`ParamsError`, which names the key, the value and the file. Overrides use
DVC's form, ``-S section.key=value``, with the value parsed as YAML.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from transferops.data.pictures import SUPPORTED_MODES, PictureSettings

DEFAULT_PARAMS = Path("params.yaml")

PositiveInt = Annotated[int, Field(gt=0)]
Channel = Annotated[int, Field(ge=0, le=255)]
Probability = Annotated[float, Field(gt=0, lt=1)]
Fraction = Annotated[float, Field(gt=0, le=1)]
ForcedStrategy = Literal["linear_probe", "top_blocks", "most_blocks", "full", "surgical"]
FORCEABLE_STRATEGIES: tuple[str, ...] = get_args(ForcedStrategy)
# Five cron fields (minute hour day month weekday); Prefect checks the values at deploy.
CronText = Annotated[str, Field(pattern=r"^\s*\S+(\s+\S+){4}\s*$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsParams(Section):
    incoming: Path
    registry: Path
    prepared: Path
    validation: Path
    features: Path
    model: Path
    checkpoints: Path
    train_log: Path
    profile: Path
    evaluation: Path
    package: Path
    models: Path
    bentoml_home: Path
    prediction_log: Path
    reports: Path


class DataParams(Section):
    format: Literal["fashion_mnist", "imagefolder"]
    source: Path
    train_size: PositiveInt
    val_size: PositiveInt
    test_size: PositiveInt
    holdout_fraction: tuple[Probability, Probability, Probability]
    background: tuple[Channel, Channel, Channel] = (255, 255, 255)
    max_aspect: Annotated[float, Field(ge=1, le=100)] = 4.0

    def picture(self) -> PictureSettings:
        """How image files become the RGB pictures the model sees (transferops/data/pictures.py)."""
        return PictureSettings(background=tuple(self.background), max_aspect=self.max_aspect)

    @field_validator("holdout_fraction")
    @classmethod
    def _fractions_sum_to_one(cls, value: tuple[float, float, float]) -> tuple:
        if abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"train/val/test fractions must sum to 1, got {sum(value):g}")
        return value


class ValidateParams(Section):
    min_per_class: Annotated[int, Field(ge=1)]
    expected_labels: list[str] | None = None
    on_error: Literal["fail", "quarantine"] = "fail"
    min_side: Annotated[int, Field(ge=1)] = 8
    max_side: Annotated[int, Field(ge=1)] = 8192
    max_pixels: Annotated[int, Field(ge=1)] = 40_000_000
    allowed_modes: list[str] = list(SUPPORTED_MODES)
    max_imbalance: Annotated[float, Field(ge=1)] = 10.0
    require_group: bool = False
    min_per_group: Annotated[int, Field(ge=1)] = 20

    @field_validator("allowed_modes", mode="before")
    @classmethod
    def _every_supported_mode(cls, value: list[str] | None) -> list[str]:
        return list(SUPPORTED_MODES) if value is None else value


class PerDevice(Section):
    cpu: Annotated[float, Field(gt=0)]
    cuda: Annotated[float, Field(gt=0)]

    def on(self, device: str) -> float:
        return self.cuda if device == "cuda" else self.cpu


class AutoSideParams(Section):
    """``model.image_size: auto`` (transferops/models/resolution.py)."""

    budget_s: PerDevice  # estimated fine-tuning time of one training run, at most
    images_per_s: PerDevice  # full fine-tuning throughput at 64 px (train_throughput.py)
    max_upsample: Annotated[float, Field(ge=1, le=64)] = 4.0


class ModelParams(Section):
    backbone: str
    weights: str = Field(description="offline | hub | path to a checkpoint file")
    image_size: Annotated[int, Field(ge=16, le=1024)] | Literal["auto"] | None = "auto"
    auto: AutoSideParams = AutoSideParams(
        budget_s=PerDevice(cpu=360, cuda=600), images_per_s=PerDevice(cpu=140, cuda=20_000)
    )


class FeaturesParams(Section):
    batch_size: PositiveInt


class ProfileParams(Section):
    bn_images: Annotated[int, Field(ge=8)] = 256
    max_per_class: Annotated[int, Field(ge=2)] = 500
    side: Annotated[int, Field(ge=32, le=1024)] = 64


ChosenStrategy = Literal["linear_probe", "top_blocks", "most_blocks", "full"]
REGION_KEYS = tuple(
    f"{size}/{kind}" for size in ("small", "medium", "large") for kind in ("similar", "different")
)
# The classic plane (probe small similar data, unfreeze more as data grows and
# differs), which the oracle benchmark fits thresholds for ("table" rules).
CLASSIC_REGIONS = dict(
    zip(
        REGION_KEYS,
        ["linear_probe", "most_blocks", "top_blocks", "most_blocks", "most_blocks", "full"],
        strict=True,
    )
)
# What ships (params.yaml): the rule with the lowest held-out regret on the oracle
# suite, fine-tuning everything from 5 labels per class (docs/strategy.md).
DEFAULT_REGIONS = dict.fromkeys(REGION_KEYS, "full") | {
    "small/similar": "linear_probe",
    "small/different": "linear_probe",
}


class StrategyParams(Section):
    force: ForcedStrategy | None = None
    surgical_stages: PositiveInt = 2  # `surgical`: how many stages from the input train
    small_per_class: Annotated[int, Field(ge=1)] = 5
    large_per_class: Annotated[int, Field(ge=1)] = 500
    similarity: Literal["knn", "logme", "leep", "bn"] = "knn"
    similar_at: float = 0.9  # the similarity measure at or above this: similar
    regions: dict[str, ChosenStrategy] = Field(default_factory=lambda: dict(DEFAULT_REGIONS))
    layer_decay: Annotated[float, Field(gt=0, le=1)] = 0.7

    @field_validator("regions")
    @classmethod
    def _every_region(cls, value: dict[str, str]) -> dict[str, str]:
        if set(value) != set(REGION_KEYS):
            raise ValueError(f"regions needs exactly the keys {list(REGION_KEYS)}")
        return value

    @model_validator(mode="after")
    def _sizes_in_order(self) -> StrategyParams:
        if self.small_per_class > self.large_per_class:
            raise ValueError(
                f"strategy.small_per_class = {self.small_per_class} > strategy.large_per_class"
                f" = {self.large_per_class}"
            )
        return self


class TrainParams(Section):
    probe_epochs: Annotated[int, Field(ge=0)]
    lr: Annotated[float, Field(gt=0, le=10)]
    epochs: Annotated[int, Field(ge=0)]
    finetune_lr: Annotated[float, Field(gt=0, le=10)]
    weight_decay: Annotated[float, Field(ge=0)]
    batch_size: PositiveInt
    min_steps: Annotated[int, Field(ge=0)] = 40
    warmup: Annotated[float, Field(ge=0, lt=1)] = 0.1
    augment: bool = True
    augment_scale: tuple[Fraction, Fraction] = (0.6, 1.0)
    hflip: Annotated[float, Field(ge=0, le=1)] = 0.5
    cache_mb: Annotated[int, Field(ge=0)] = 2048
    cache_views: PositiveInt = 4
    gradual_unfreeze: bool = False
    batchnorm: Literal["frozen", "adapt"] = "frozen"
    compile: bool = False
    lr_race: list[Annotated[float, Field(gt=0, le=100)]] = Field(default=[1.0], min_length=1)
    race_margin: Annotated[float, Field(ge=0, le=1)] = 0.02
    patience: Annotated[int, Field(ge=0)] = 5
    patience_from: Annotated[float, Field(ge=0, le=1)] = 0.3
    warm_start: bool = True


class EvaluateParams(Section):
    calibration_bins: Annotated[int, Field(ge=2, le=100)] = 15
    bootstrap: Annotated[int, Field(ge=100, le=100_000)] = 1000
    confidence: Probability = 0.95


class GateParams(Section):
    metric: Literal["accuracy", "macro_f1"] = "accuracy"
    min_improvement: Annotated[float, Field(ge=-1, le=1)] = 0.005
    max_group_drop: Annotated[float, Field(ge=0, le=1)] = 0.05
    min_group_size: PositiveInt = 20
    max_forgetting: Annotated[float, Field(ge=0, le=1)] = 0.03
    min_domain_size: PositiveInt = 20


class PackageParams(Section):
    model_name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")]


class KeepParams(Section):
    """Production images kept for the next dataset version (transferops/logs/kept.py)."""

    enabled: bool = True
    fraction: Fraction = 1.0
    per_hour: PositiveInt = 10_000
    side_factor: Annotated[float, Field(ge=1, le=16)] = 2.0
    min_free_mb: Annotated[int, Field(ge=0)] = 1024
    queue_mb: Annotated[float, Field(gt=0, le=100_000)] = 64.0


class ServeParams(Section):
    top_k: PositiveInt
    max_batch_size: PositiveInt
    batching: bool = True
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    threads: Annotated[int, Field(ge=1, le=256)] = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_queue: PositiveInt = 512
    batch_wait_ms: Annotated[float, Field(ge=0)] = 10.0
    max_images: PositiveInt = 32
    max_image_bytes: PositiveInt = 10_000_000
    max_request_bytes: PositiveInt = 50_000_000
    max_pixels: PositiveInt = 40_000_000
    max_request_pixels: PositiveInt = 100_000_000
    max_pixels_in_flight: PositiveInt = 50_000_000
    max_bytes_in_flight: PositiveInt = 200_000_000
    budget_wait_s: Annotated[float, Field(ge=0)] = 5.0
    formats: list[str] = Field(
        default_factory=lambda: ["PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF"], min_length=1
    )
    api_key_env: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")] = "TRANSFEROPS_API_KEY"
    allow_unauthenticated: bool = False
    switch_poll_s: Annotated[float, Field(gt=0)] = 2.0
    log_fsync_s: Annotated[float, Field(gt=0)] = 1.0
    log_thumbnails: bool = True
    keep: KeepParams = KeepParams()
    retention_days: Annotated[float, Field(gt=0)] | None = 30.0

    @model_validator(mode="after")
    def _budgets_fit(self) -> ServeParams:
        for bound in ("max_request_pixels", "max_pixels_in_flight"):
            if getattr(self, bound) < self.max_pixels:
                raise ValueError(
                    f"serve.{bound} = {getattr(self, bound):,} < serve.max_pixels = "
                    f"{self.max_pixels:,}: an image the service accepts could never be decoded"
                )
        if self.max_bytes_in_flight < self.max_request_bytes:
            raise ValueError(
                f"serve.max_bytes_in_flight = {self.max_bytes_in_flight:,} < "
                f"serve.max_request_bytes = {self.max_request_bytes:,}"
            )
        return self


class BiasParams(Section):
    min_group_size: PositiveInt
    min_labelled: PositiveInt
    min_class_labelled: PositiveInt
    max_gap_change: Fraction
    confidence: Probability
    bootstrap: Annotated[int, Field(ge=100, le=100_000)]


class RetrainParams(Section):
    alarms: PositiveInt
    checks: PositiveInt
    cooldown_hours: Annotated[float, Field(ge=0)]
    surgical: bool
    urgent_drop: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_labels_per_class: Annotated[int, Field(ge=1)] = 20

    @model_validator(mode="after")
    def _k_of_n(self) -> RetrainParams:
        if self.alarms > self.checks:
            raise ValueError(
                f"monitor.retrain.alarms = {self.alarms} > monitor.retrain.checks = "
                f"{self.checks}: K alarms out of the last N checks needs K <= N"
            )
        return self


class MonitorParams(Section):
    window: PositiveInt
    min_window: PositiveInt
    max_rows: Annotated[int, Field(ge=50, le=20_000)]
    embedding_components: Annotated[int, Field(ge=2, le=256)]
    false_alarm_rate: Probability
    min_effect: Annotated[float, Field(ge=0, le=10)]
    calibration_draws: Annotated[int, Field(ge=100, le=100_000)]
    classifier_fits: Annotated[int, Field(ge=1, le=100_000)] = 50
    min_regime_rows: Annotated[int, Field(ge=20)]
    gallery: Annotated[int, Field(ge=0, le=32)] = 8
    bias: BiasParams
    retrain: RetrainParams


# What a run may change (from a retrain event, `-S`, `--params FILE`) unless params.yaml
# says otherwise: what the monitoring flow itself sends (strategy.force, model.weights)
# and the keys that choose how to train and on how much data. Not the service, the
# paths, the gate, the checks or the orchestration: those are params.yaml's to change.
DEFAULT_RUN_KEYS = [
    "seed", "device", "threads", "strategy", "model", "features", "profile", "train",
    "data.train_size", "data.val_size", "data.test_size", "data.holdout_fraction",
]  # fmt: skip


class OrchestrateParams(Section):
    monitor_cron: CronText | None
    retrain_cron: CronText | None
    timezone: str
    trigger_threshold: PositiveInt
    stage_retries: Annotated[int, Field(ge=0, le=10)]
    retry_delay_s: Annotated[float, Field(ge=0, le=3600)]
    service_url: str | None
    switch_timeout_s: Annotated[float, Field(gt=0, le=3600)]
    run_keys: list[Annotated[str, Field(pattern=r"^[a-z_]+(\.[a-z_]+)*$")]] = Field(
        default_factory=lambda: list(DEFAULT_RUN_KEYS)
    )


class Params(Section):
    seed: Annotated[int, Field(ge=0)]
    device: Literal["auto", "cpu", "cuda"]
    threads: Annotated[int, Field(ge=1, le=256)]
    paths: PathsParams
    data: DataParams
    validate_: ValidateParams = Field(alias="validate")
    model: ModelParams
    features: FeaturesParams
    profile: ProfileParams
    strategy: StrategyParams
    train: TrainParams
    evaluate: EvaluateParams
    package: PackageParams
    gate: GateParams
    serve: ServeParams
    monitor: MonitorParams
    orchestrate: OrchestrateParams

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ParamsError(ValueError):
    """A params file (or an override) that does not fit the schema."""


class RunRefused(ParamsError):
    """A run's params change keys that runs may not change (``orchestrate.run_keys``)."""


def load_params(path: Path = DEFAULT_PARAMS, overrides: Sequence[str] = ()) -> Params:
    """Read, override and validate a params file.

    Args:
        path: the YAML file.
        overrides: DVC-style ``key.sub=value`` strings, applied in order.

    Raises:
        ParamsError: naming the file, the key and the offending value.
    """
    path = Path(path)
    raw = _read_mapping(path)
    for override in overrides:
        apply_override(raw, override, source=path)
    return _validated(raw, path)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as err:
        raise ParamsError(f"{path}: params file not found") from err
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def _validated(raw: dict[str, Any], path: Path) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(format_validation_error(err, path)) from None


# A run's params (``transferops --params FILE train -S key=value``) are never written into
# params.yaml: the run writes what differs from params.yaml here, every DVC stage lists
# this file's sections beside params.yaml's (so DVC re-runs what a change touches) and
# loads it on top (:func:`load_stage_params`). The training flow empties it when the run
# ends, and rewrites it when the next run starts. docs/orchestration.md, "Run params".
RUN_PARAMS = Path(".transferops") / "run-params.yaml"
# dvc.yaml templates its outputs from params.yaml: a run may not move them.
RUN_MAY_CHANGE_PATHS = ("incoming",)


def run_changes(base: Params, effective: Params) -> dict[str, Any]:
    """What ``effective`` changes from ``base``, as the full tree of params' keys.

    Every leaf is there, ``{}`` when unchanged and ``{"value": ...}`` when
    changed: DVC fails a stage whose listed param is missing from the file, so
    dvc.yaml can list the same keys here as in params.yaml (``train.lr``), and
    a change re-runs only the stages that list it.
    """
    old = base.model_dump(mode="json", by_alias=True)
    new = effective.model_dump(mode="json", by_alias=True)
    moved = [k for k in old["paths"] if old["paths"][k] != new["paths"][k]]
    moved = [k for k in moved if k not in RUN_MAY_CHANGE_PATHS]
    if moved:
        raise ParamsError(
            f"paths.{moved[0]} = {new['paths'][moved[0]]!r} differs from params.yaml "
            f"({old['paths'][moved[0]]!r}): dvc.yaml's outputs come from params.yaml, so a "
            "run cannot move them; change them in params.yaml itself"
        )
    return _leaf_changes(old, new)


def changed_keys(base: Params, effective: Params) -> dict[str, Any]:
    """Every dotted key whose value ``effective`` changes from ``base``, with its new value."""
    changed: dict[str, Any] = {}

    def walk(old: Any, new: Any, prefix: str) -> None:
        if isinstance(new, dict) and isinstance(old, dict) and new:
            for key in new.keys() | old.keys():
                walk(old.get(key), new.get(key), f"{prefix}{key}.")
        elif old != new:
            changed[prefix.rstrip(".")] = new

    walk(base.model_dump(mode="json", by_alias=True),
         effective.model_dump(mode="json", by_alias=True), "")  # fmt: skip
    return dict(sorted(changed.items()))


def run_may_change(key: str, run_keys: Sequence[str]) -> bool:
    """Whether dotted ``key`` is one of ``run_keys`` or inside one of them."""
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in run_keys)


def refuse_unlisted_changes(base: Params, effective: Params, source: str) -> None:
    """Raise :class:`RunRefused` naming every key (and value) a run changes from params.yaml
    (``base``) outside ``base.orchestrate.run_keys``. The list comes from ``base``: a run
    cannot widen its own allow-list."""
    allowed = base.orchestrate.run_keys
    refused = {
        key: value
        for key, value in changed_keys(base, effective).items()
        if not run_may_change(key, allowed)
    }
    if refused:
        named = ", ".join(f"{key} (to {value!r})" for key, value in refused.items())
        raise RunRefused(
            f"{source}: a run may not change {named}: orchestrate.run_keys in params.yaml "
            f"allows {', '.join(allowed)}; to change the others, edit params.yaml itself"
        )


def _leaf_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in new.items():
        if isinstance(value, dict) and value and isinstance(old.get(key), dict):
            tree[key] = _leaf_changes(old[key], value)
        else:
            tree[key] = {} if old.get(key) == value else {"value": value}
    return tree


def write_run_params(changes: dict[str, Any], path: Path = RUN_PARAMS) -> Path:
    """Write a run's changes (:func:`run_changes`) in one step; ``{}`` sections mean none."""
    from transferops.files import write_atomic

    header = (
        "# Written by transferops for the training run in progress (empty between runs):\n"
        "# what the run changes from params.yaml. Edit params.yaml, not this file.\n"
    )
    return write_atomic(path, header + yaml.safe_dump(changes, sort_keys=False))


def load_stage_params(
    path: Path = DEFAULT_PARAMS, overrides: Sequence[str] = (), run_params: Path = RUN_PARAMS
) -> Params:
    """What a DVC stage runs with: ``path``, the run's changes (when any), then ``overrides``."""
    path, run_params = Path(path), Path(run_params)
    raw = _read_mapping(path)
    if run_params.is_file():
        _apply_changes(raw, _read_mapping(run_params))
    for override in overrides:
        apply_override(raw, override, source=path)
    return _validated(raw, path)


def _apply_changes(raw: dict[str, Any], tree: dict[str, Any]) -> None:
    """Set every ``{"value": ...}`` leaf of a :func:`run_changes` tree into ``raw``."""
    for key, node in tree.items():
        if not isinstance(node, dict) or not node:
            continue
        if set(node) == {"value"}:
            raw[key] = node["value"]
        else:
            child = raw.setdefault(key, {})
            if isinstance(child, dict):
                _apply_changes(child, node)


def apply_override(raw: dict[str, Any], override: str, *, source: Path) -> None:
    """Set ``a.b.c=value`` inside ``raw`` (value parsed as YAML), in place."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ParamsError(f"{source}: override {override!r} is not of the form key.sub=value")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ParamsError(f"{source}: override {override!r}: {part!r} is not a section")
        node = child
    node[leaf] = yaml.safe_load(text) if text else None


def format_validation_error(err: ValidationError, path: Path) -> str:
    """One line per problem: ``file: key = value: what is wrong``."""
    lines = [f"{path}: {err.error_count()} invalid setting(s)"]
    for item in err.errors():
        key = ".".join(str(part) for part in item["loc"]).replace("validate_", "validate")
        if item["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key {key!r} (value {item['input']!r})")
        elif item["type"] == "missing":
            lines.append(f"  {path}: missing key {key!r}")
        else:
            lines.append(f"  {path}: {key} = {item['input']!r}: {item['msg']}")
    return "\n".join(lines)


def write_overrides(path: Path, overrides: Sequence[str]) -> None:
    """Write ``key.sub=value`` overrides into the params file, keeping its comments.

    The overrides are validated first (:func:`load_params`), so a bad one
    changes nothing. For setting up a project's own file (the demo's
    workspace); a run never writes params.yaml (:data:`RUN_PARAMS`).
    """
    from ruamel.yaml import YAML

    load_params(path, overrides)
    document = YAML()  # round-trip: comments and key order survive
    document.width = 4096
    document.preserve_quotes = True
    document.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    raw = document.load(Path(path).read_text())
    for override in overrides:
        apply_override(raw, override, source=path)
    with open(path, "w") as handle:
        document.dump(raw, handle)


def to_flat_dict(params: Params) -> dict[str, Any]:
    """Params as plain JSON-able values, keyed by dotted path (for lineage)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            flat[prefix] = value

    walk("", params.model_dump(mode="json", by_alias=True))
    return flat
