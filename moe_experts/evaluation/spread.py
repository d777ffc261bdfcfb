"""The spread of headline ratios over training seeds: one report per seed, the same test split.

A ratio measured on one training run says as much about that run's seed as
about the recipe. Given reports of runs that differ only in their training seed
(``moe-experts --seed N quickstart`` each), this gives, per system and domain,
the mean of the ratio to the generalist over the seeds, its standard deviation
and a Student-t interval of the mean; and it counts a target as met only when
the mean and the whole interval clear it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from moe_experts.errors import ConfigError
from moe_experts.evaluation.tables import Table, seed_name


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float
    low: float
    high: float
    values: tuple[float, ...]


def spread_of(values: Sequence[float], confidence: float = 0.95) -> Spread:
    """Mean, sample standard deviation and the Student-t interval of the mean."""
    from scipy.stats import t as student_t

    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n) if n > 1 else math.inf
    return Spread(mean=mean, std=std, low=mean - half, high=mean + half, values=tuple(values))


def check_comparable(reports: Sequence[dict[str, Any]]) -> None:
    """Refuse reports that were not scored on the same test split, cards and settings (or come from one run)."""
    if len(reports) < 2:
        raise ConfigError("a spread needs the reports of at least two training seeds",
                          hint="train the workspace again with another `seed` and evaluate it; give every report")
    first = reports[0]
    for r in reports[1:]:
        for key in ("test_split", "cards", "settings"):
            if r["inputs"][key] != first["inputs"][key]:
                raise ConfigError(
                    f"reports {first['name']} and {r['name']} were computed from different {key.replace('_', ' ')}",
                    hint="evaluate every seed's workspace with the same cards, corpora and eval settings")
    models = [r["inputs"]["models"] for r in reports]
    if any(models[i] == models[j] for i in range(len(models)) for j in range(i)):
        raise ConfigError("two of the reports score the same weights: they are one training run, not two seeds",
                          hint="give one report per training seed")


def seed_spread(reports: Sequence[dict[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """Per system and domain, the spread of the ratio to the generalist; the targets judged on it."""
    check_comparable(reports)
    domains = reports[0]["domains"]
    systems = [s for s in reports[0]["lm"]["vs_baseline"] if all(s in r["lm"]["vs_baseline"] for r in reports)]
    ratios = {s: {d: spread_of([r["lm"]["vs_baseline"][s][d]["ratio"] for r in reports], confidence) for d in domains}
              for s in systems}
    targets = []
    for t in reports[0]["targets"]:
        if t["ci"] is None or t["system"] not in ratios:
            continue  # the oracle-gap target has no interval of its own; it is not a ratio to the generalist
        s = ratios[t["system"]][t["domain"]]
        targets.append({"name": t["name"], "system": t["system"], "domain": t["domain"], "threshold": t["threshold"],
                        "mean": s.mean, "interval": [s.low, s.high], "met": s.mean <= t["threshold"] and s.high <= t["threshold"]})
    return {"seeds": len(reports), "reports": [r["name"] for r in reports],
            "training_seeds": [r.get("training_seed") for r in reports],  # None: a report from before it was recorded
            "confidence": confidence, "domains": domains,
            "ratios": {s: {d: vars(v) | {"values": list(v.values)} for d, v in per.items()} for s, per in ratios.items()},
            "targets": targets}


def _named_reports(result: dict[str, Any]) -> str:
    seeds = result.get("training_seeds") or [None] * len(result["reports"])
    return ", ".join(f"{name} ({seed_name(seed)})" if seed is not None else name
                     for name, seed in zip(result["reports"], seeds))


def spread_tables(result: dict[str, Any]) -> list[Table]:
    level = f"{round(100 * result['confidence'])}%"
    rows = [[s, d, f"{v['mean']:.4f}", f"{v['std']:.4f}", f"[{v['low']:.4f}, {v['high']:.4f}]",
             ", ".join(f"{x:.4f}" for x in v["values"])]
            for s, per in result["ratios"].items() for d, v in per.items()]
    out = [Table(f"Bits per byte over the generalist's, across {result['seeds']} training seeds",
                 ["system", "domain", "mean", "std", f"{level} interval of the mean", "per seed"], rows,
                 [f"reports: {_named_reports(result)}"])]
    if result["targets"]:
        out.append(Table("Targets, judged on the seeds' mean and its interval",
                         ["domain", "target", "mean", "interval", "threshold", "result"],
                         [[t["domain"], t["name"], f"{t['mean']:.4f}", f"[{t['interval'][0]:.4f}, {t['interval'][1]:.4f}]",
                           f"<= {t['threshold']}", "met" if t["met"] else "**not met**"] for t in result["targets"]]))
    return out
