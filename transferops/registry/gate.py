"""The champion/challenger gate: promote a packaged candidate only when it is better.

Both models come out of the BentoML store and are scored on the same images:
the test split of the current accepted dataset. The challenger is promoted
when it beats the champion by ``gate.min_improvement`` on ``gate.metric`` and
no group (of at least ``gate.min_group_size`` test images) loses more than
``gate.max_group_drop``. Otherwise the champion stays and the verdict says
why. The first packaged model becomes champion when there is none.

Every verdict is written to ``<paths.reports>/gate/<version>.json`` with a
picture; a promotion goes through :mod:`transferops.registry.champion`. This is not a
DVC stage: DVC stages are functions of their inputs, and which model is
champion is not one. ``transferops train`` runs it after ``dvc repro``;
``transferops gate`` runs it by hand.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from transferops.config import EvaluateParams, GateParams, Params
from transferops.data.datasets import read_accepted
from transferops.figures import new_figure, save_figure
from transferops.models.evaluation import (
    NO_GROUP,
    Scored,
    accuracy,
    bootstrap_interval,
    macro_f1,
    score_split,
)
from transferops.registry import champion
from transferops.registry.lineage import data_version
from transferops.registry.packaging import candidate_tag
from transferops.registry.store import load_stored, resolve_tag, stored_model_dir
from transferops.runtime import select_device, set_threads

log = logging.getLogger(__name__)
METRICS = {"accuracy": accuracy, "macro_f1": macro_f1}
VIA = "promotion gate"


@dataclass
class GateVerdict:
    challenger: str
    champion: str | None
    promote: bool
    reasons: list[str]
    metric: str
    n: int = 0  # test images both were scored on
    challenger_score: float | None = None
    champion_score: float | None = None
    improvement: float | None = None
    improvement_ci: tuple[float, float] | None = None  # paired bootstrap
    groups: list[dict] = field(default_factory=list)
    data_version: str | None = None
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    report: str | None = None

    def summary(self) -> str:
        verdict = "PROMOTE" if self.promote else "KEEP CHAMPION"
        return f"{verdict} {self.challenger}: " + "; ".join(self.reasons)


def compare(
    champion_scored: Scored,
    challenger_scored: Scored,
    cfg: GateParams,
    evaluate_cfg: EvaluateParams,
    seed: int,
) -> tuple[bool, list[str], dict]:
    """The gate's rule on two models' answers for the same images, row for row.

    Returns (promote, reasons, numbers): the overall scores, the challenger's
    improvement with its paired bootstrap interval, and one entry per group.
    """
    if not np.array_equal(champion_scored.labels, challenger_scored.labels):
        raise ValueError("champion and challenger were not scored on the same images")
    metric = METRICS[cfg.metric]
    labels, old = champion_scored.labels, champion_scored.predictions
    new = challenger_scored.predictions

    def change(rows: np.ndarray) -> float:
        return metric(labels[rows], new[rows]) - metric(labels[rows], old[rows])

    everything = np.arange(len(labels))
    numbers = {
        "champion_score": metric(labels, old),
        "challenger_score": metric(labels, new),
        "improvement": change(everything),
        "improvement_ci": bootstrap_interval(
            change, len(labels), evaluate_cfg.bootstrap, evaluate_cfg.confidence, seed
        ),
        "groups": [],
    }
    reasons = []
    name, gain = cfg.metric, numbers["improvement"]
    versus = f"{name} {numbers['challenger_score']:.4f} vs champion {numbers['champion_score']:.4f}"
    relation = "<" if gain < cfg.min_improvement else ">="
    reasons.append(
        f"{versus}: improvement {gain:+.4f} {relation} gate.min_improvement {cfg.min_improvement}"
    )
    blocked = False
    for group in sorted(set(challenger_scored.groups) - {NO_GROUP}):
        rows = np.flatnonzero(challenger_scored.groups == group)
        entry = {
            "group": group,
            "n": len(rows),
            "champion": metric(labels[rows], old[rows]),
            "challenger": metric(labels[rows], new[rows]),
            "gated": len(rows) >= cfg.min_group_size,
        }
        entry["change"] = entry["challenger"] - entry["champion"]
        numbers["groups"].append(entry)
        if entry["gated"] and entry["change"] < -cfg.max_group_drop:
            blocked = True
            reasons.append(
                f"group {group!r} (n={len(rows)}): {name} {entry['challenger']:.4f} vs champion "
                f"{entry['champion']:.4f}, a drop of {-entry['change']:.4f} > "
                f"gate.max_group_drop {cfg.max_group_drop}"
            )
    return gain >= cfg.min_improvement and not blocked, reasons, numbers


def run_gate(params: Params, candidate: str | None = None, who: str | None = None) -> GateVerdict:
    """Gate ``candidate`` (default: the last packaged model) and promote it if it passes.

    ``who`` is recorded as the actor of a promotion (default: user@host).
    """
    paths = params.paths
    # Resolved to name:version (`latest` never becomes champion); a missing tag fails here.
    challenger = resolve_tag(candidate or candidate_tag(paths.package))
    holder = champion.current(paths.models)
    if holder is not None and holder.tag == challenger:  # nothing to decide, nothing written
        reasons = [f"the candidate is already the champion (since {holder.time})"]
        return GateVerdict(challenger, holder.tag, False, reasons, params.gate.metric)
    version = data_version(paths.prepared)
    set_threads(params.threads)
    device = select_device(params.device)
    manifest = read_accepted(paths.validation)
    test = manifest[manifest["split"] == "test"]
    if test.empty:
        raise ValueError(f"{paths.validation}: no accepted test images to score the models on")

    def score(tag: str) -> Scored:
        model, config = load_stored(tag)
        batch = params.features.batch_size
        return score_split(model, config, test, paths.prepared, batch, device, desc=tag)

    new = score(challenger)
    if holder is None:
        metric = METRICS[params.gate.metric]
        verdict = GateVerdict(
            challenger,
            None,
            True,
            ["no champion yet: the first model becomes champion"],
            params.gate.metric,
            n=len(test),
            challenger_score=metric(new.labels, new.predictions),
            data_version=version,
        )
    else:
        promote, reasons, numbers = compare(
            score(holder.tag), new, params.gate, params.evaluate, params.seed
        )
        verdict = GateVerdict(
            challenger,
            holder.tag,
            promote,
            reasons,
            params.gate.metric,
            n=len(test),
            data_version=version,
            **numbers,
        )
    return _finish(params, verdict, who)


def _finish(params: Params, verdict: GateVerdict, who: str | None) -> GateVerdict:
    """Write the verdict (and picture); promote when it says so."""
    out_dir = Path(params.paths.reports) / "gate"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = verdict.challenger.rsplit(":", 1)[-1]
    verdict.report = str(out_dir / f"{stem}.json")
    if verdict.champion_score is not None:
        plot_verdict(verdict, out_dir / f"{stem}.png")
    if verdict.promote:
        champion.promote(
            params.paths.models,
            verdict.challenger,
            reason="; ".join(verdict.reasons),
            via=VIA,
            gate={k: v for k, v in asdict(verdict).items() if k != "groups"},
            require=stored_model_dir,
            who=who,
            expected=verdict.champion,
        )
    Path(verdict.report).write_text(json.dumps(asdict(verdict), indent=2))
    log.info("gate: %s", verdict.summary())
    return verdict


def plot_verdict(verdict: GateVerdict, path: Path) -> None:
    """Champion and challenger, overall and per group, on the gate's metric."""
    names = ["all images"] + [f"{g['group']}\n(n={g['n']})" for g in verdict.groups]
    old = [verdict.champion_score] + [g["champion"] for g in verdict.groups]
    new = [verdict.challenger_score] + [g["challenger"] for g in verdict.groups]
    x = np.arange(len(names))
    figure, axes = new_figure(figsize=(max(5, 1.2 * len(names) + 2), 4))
    axes.bar(x - 0.2, old, 0.4, label=f"champion {verdict.champion}", color="tab:gray")
    axes.bar(x + 0.2, new, 0.4, label=f"challenger {verdict.challenger}", color="tab:blue")
    axes.set_xticks(x, names)
    outcome = "promoted" if verdict.promote else "champion kept"
    title = f"Gate on {verdict.n} test images: {outcome}"
    axes.set(ylabel=verdict.metric, ylim=(0, 1), title=title)
    axes.legend(loc="lower right", fontsize=8)
    save_figure(figure, path)
