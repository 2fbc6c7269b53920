"""The champion/challenger gate: promote a packaged candidate only when it is better.

Both models come out of the BentoML store and are scored on the same images:
the test split of the current accepted dataset. Each domain of it (the base
data, each drop: ``preparation.regime_of``) is also scored apart, paired, with
a bootstrap interval of the challenger's change. The challenger is promoted when

- **no forgetting**: on no domain the champion was trained on (its
  evaluation's ``domains``) did the challenger lose ground (a change below
  zero) with the change's interval reaching below ``-gate.max_forgetting``,
  whatever it gains elsewhere;
- **a real gain**: where the test split holds domains the champion never
  trained on (a new harvest), their change is at least
  ``gate.min_improvement`` and its interval clears zero; otherwise the
  change on all images is at least ``gate.min_improvement``;
- no group (of at least ``gate.min_group_size`` test images) loses more than
  ``gate.max_group_drop``.

Domains with fewer than ``gate.min_domain_size`` test images are shown but
neither block nor justify. Otherwise the champion stays and the verdict says
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
from transferops.data.preparation import BASE_REGIME, regime_of
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
from transferops.registry.store import load_stored, resolve_tag, stored_model, stored_model_dir
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
    domains: list[dict] = field(default_factory=list)  # per domain: paired scores, interval
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
    domains: np.ndarray | None = None,
    trained_on: set[str] | frozenset[str] = frozenset({BASE_REGIME}),
) -> tuple[bool, list[str], dict]:
    """The gate's rule on two models' answers for the same images, row for row.

    ``domains`` names each row's domain (None: one domain, as before drops);
    ``trained_on`` are the domains the champion was trained on. Returns
    (promote, reasons, numbers): the overall scores, the challenger's
    improvement with its paired bootstrap interval, one entry per group and
    one per domain.
    """
    if not np.array_equal(champion_scored.labels, challenger_scored.labels):
        raise ValueError("champion and challenger were not scored on the same images")
    paired = Paired(champion_scored, challenger_scored, cfg.metric, evaluate_cfg, seed)
    overall = paired.on(np.arange(len(champion_scored.labels)))
    numbers = {
        "champion_score": overall["champion"],
        "challenger_score": overall["challenger"],
        "improvement": overall["change"],
        "improvement_ci": overall["change_ci"],
        "groups": [],
        "domains": [],
    }
    name = cfg.metric
    versus = f"{name} {overall['challenger']:.4f} vs champion {overall['champion']:.4f}"
    gain, relation = overall["change"], "<" if overall["change"] < cfg.min_improvement else ">="
    reasons = [
        f"{versus}: improvement {gain:+.4f} {relation} gate.min_improvement {cfg.min_improvement}"
    ]
    gained, blocked = gain >= cfg.min_improvement, False
    if domains is not None:
        numbers["domains"], domain_reasons, gained, blocked = judge_domains(
            paired, np.asarray(domains, dtype=str), set(trained_on), cfg, gained
        )
        reasons += domain_reasons
    for group in sorted(set(challenger_scored.groups) - {NO_GROUP}):
        rows = np.flatnonzero(challenger_scored.groups == group)
        entry = {"group": group, "n": len(rows), **paired.scores(rows)}
        entry["gated"] = len(rows) >= cfg.min_group_size
        numbers["groups"].append(entry)
        if entry["gated"] and entry["change"] < -cfg.max_group_drop:
            blocked = True
            reasons.append(
                f"group {group!r} (n={len(rows)}): {name} {entry['challenger']:.4f} vs champion "
                f"{entry['champion']:.4f}, a drop of {-entry['change']:.4f} > "
                f"gate.max_group_drop {cfg.max_group_drop}"
            )
    return gained and not blocked, reasons, numbers


class Paired:
    """Champion and challenger on the same rows: scores, change, the change's interval."""

    def __init__(
        self, old: Scored, new: Scored, metric: str, evaluate_cfg: EvaluateParams, seed: int
    ) -> None:
        self.labels, self.old, self.new = old.labels, old.predictions, new.predictions
        self.metric, self.evaluate_cfg, self.seed = METRICS[metric], evaluate_cfg, seed

    def scores(self, rows: np.ndarray) -> dict:
        champion = self.metric(self.labels[rows], self.old[rows])
        challenger = self.metric(self.labels[rows], self.new[rows])
        return {"champion": champion, "challenger": challenger, "change": challenger - champion}

    def on(self, rows: np.ndarray) -> dict:
        """:meth:`scores` with the change's paired bootstrap interval."""

        def change(picked: np.ndarray) -> float:
            chosen = rows[picked]
            labels = self.labels[chosen]
            return self.metric(labels, self.new[chosen]) - self.metric(labels, self.old[chosen])

        cfg = self.evaluate_cfg
        interval = bootstrap_interval(change, len(rows), cfg.bootstrap, cfg.confidence, self.seed)
        return self.scores(rows) | {"change_ci": interval}


def judge_domains(
    paired: Paired, domains: np.ndarray, trained_on: set[str], cfg: GateParams, gained: bool
) -> tuple[list[dict], list[str], bool, bool]:
    """Each domain apart: (entries, reasons, gained, blocked).

    Forgetting blocks: a domain the champion trained on where the challenger lost
    ground (change < 0) and the change's interval reaches below ``-max_forgetting``
    (the loss cannot be bounded within the margin). New domains, pooled, decide the gain
    instead of all images: their change must reach ``min_improvement`` and its
    interval clear zero.
    """
    entries, reasons, blocked = [], [], False
    for domain in sorted(set(domains.tolist())):
        rows = np.flatnonzero(domains == domain)
        entry = {"domain": domain, "n": len(rows), "known": domain in trained_on, **paired.on(rows)}
        entry["gated"] = len(rows) >= cfg.min_domain_size
        entries.append(entry)
        low, high = entry["change_ci"]
        shown = f"{entry['change']:+.4f} (interval {low:+.4f} to {high:+.4f})"
        unbounded_loss = entry["change"] < 0 and low < -cfg.max_forgetting
        if entry["known"] and entry["gated"] and unbounded_loss:
            blocked = True
            reasons.append(
                f"forgetting: domain {domain!r} (n={len(rows)}), which the champion was trained "
                f"on, changes {shown}: it lost ground, and the interval's lower end is below "
                f"-gate.max_forgetting {cfg.max_forgetting}"
            )
        elif entry["known"]:
            reasons.append(f"domain {domain!r} (n={len(rows)}, known): {shown}")
    new = [e for e in entries if not e["known"] and e["gated"]]
    if new:
        rows = np.flatnonzero(np.isin(domains, [e["domain"] for e in new]))
        pooled = paired.on(rows)
        low, high = pooled["change_ci"]
        gained = pooled["change"] >= cfg.min_improvement and low > 0
        verdict = "a real gain" if gained else "no gain shown"
        reasons.append(
            f"new domain(s) {[e['domain'] for e in new]} (n={len(rows)}): {verdict}, change "
            f"{pooled['change']:+.4f} (interval {low:+.4f} to {high:+.4f}; needs >= "
            f"gate.min_improvement {cfg.min_improvement} and a lower end above 0)"
        )
    return entries, reasons, gained, blocked


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

    domains = np.asarray([regime_of(source, paths.incoming) for source in test["source"]])

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
            score(holder.tag),
            new,
            params.gate,
            params.evaluate,
            params.seed,
            domains,
            trained_domains(holder.tag),
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


def trained_domains(tag: str) -> set[str]:
    """The domains a stored model was evaluated on, i.e. trained on (its metrics' ``domains``;
    ``base`` alone for a model packaged before domains were recorded)."""
    metrics = json.loads(stored_model(tag).info.metadata.get("metrics_json", "{}"))
    return set(metrics.get("domains") or [BASE_REGIME])


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
            gate={k: v for k, v in asdict(verdict).items() if k not in ("groups", "domains")},
            require=stored_model_dir,
            who=who,
            expected=verdict.champion,
        )
    Path(verdict.report).write_text(json.dumps(asdict(verdict), indent=2))
    log.info("gate: %s", verdict.summary())
    return verdict


def plot_verdict(verdict: GateVerdict, path: Path) -> None:
    """Champion and challenger, overall, per domain and per group, on the gate's metric."""
    parts = [
        *({**d, "name": f"{d['domain']}\n({'known' if d['known'] else 'new'}, n={d['n']})"}
          for d in verdict.domains),
        *({**g, "name": f"group {g['group']}\n(n={g['n']})"} for g in verdict.groups),
    ]  # fmt: skip
    names = ["all images"] + [p["name"] for p in parts]
    old = [verdict.champion_score] + [p["champion"] for p in parts]
    new = [verdict.challenger_score] + [p["challenger"] for p in parts]
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
