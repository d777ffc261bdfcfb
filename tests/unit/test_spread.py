"""The spread of headline ratios over training seeds (``moe-experts eval spread``)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from moe_experts.errors import ConfigError
from moe_experts.evaluation.spread import seed_spread, spread_tables


def _report(name: str, ratios: dict[str, float], *, models: str, split: str = "s1") -> dict:
    vs = {"doc-top1": {d: {"ratio": r, "ratio_ci": [r - 0.01, r + 0.01], "diff": 0.0, "diff_ci": [0, 0]}
                       for d, r in ratios.items()}}
    targets = [{"name": "routed top-1 / generalist, bits per byte", "system": "doc-top1", "domain": d,
                "value": r, "ci": [r - 0.01, r + 0.01], "threshold": 1.0 if d == "general" else 0.96, "met": True}
               for d, r in ratios.items()]
    targets.append({"name": "routed top-1 / oracle - 1", "system": "doc-top1", "domain": "law", "value": 0.0,
                    "ci": None, "threshold": 0.01, "met": True})
    return {"name": name, "domains": list(ratios), "lm": {"vs_baseline": vs}, "targets": targets,
            "inputs": {"test_split": {"law": split}, "cards": "c", "settings": {"top_k": 2}, "models": {"law": models}}}


def test_mean_std_and_t_interval_over_seeds():
    law, general = [0.94, 0.95, 0.97], [0.97, 0.975, 0.98]
    reports = [_report(f"r{i}", {"law": law[i], "general": general[i]}, models=f"w{i}") for i in range(3)]
    result = seed_spread(reports)
    s = result["ratios"]["doc-top1"]["law"]
    assert s["mean"] == pytest.approx(np.mean(law)) and s["std"] == pytest.approx(np.std(law, ddof=1))
    half = stats.t.ppf(0.975, 2) * np.std(law, ddof=1) / np.sqrt(3)
    assert (s["low"], s["high"]) == pytest.approx((np.mean(law) - half, np.mean(law) + half))
    by_domain = {t["domain"]: t for t in result["targets"]}
    # law's mean (0.953) is under 0.96, but its interval reaches past it: not met
    assert by_domain["law"]["mean"] < 0.96 and not by_domain["law"]["met"]
    assert by_domain["general"]["met"]  # mean 0.975, the whole interval under 1.00
    assert len(result["targets"]) == 2  # the oracle gap has no interval to judge
    assert "per seed" in spread_tables(result)[0].header


def test_reports_of_other_splits_or_of_one_run_are_refused():
    a = _report("a", {"law": 0.95}, models="w1")
    with pytest.raises(ConfigError, match="test split"):
        seed_spread([a, _report("b", {"law": 0.95}, models="w2", split="other")])
    with pytest.raises(ConfigError, match="same weights"):
        seed_spread([a, _report("b", {"law": 0.95}, models="w1")])
    with pytest.raises(ConfigError, match="at least two"):
        seed_spread([a])


def test_each_report_is_named_with_its_training_seed_when_it_recorded_one():
    reports = [_report(f"r{i}", {"law": 0.95 + i / 100}, models=f"w{i}") for i in range(3)]
    reports[0]["training_seed"], reports[1]["training_seed"] = 1234, 7  # r2 was written before seeds were recorded
    result = seed_spread(reports)
    assert result["training_seeds"] == [1234, 7, None]
    assert spread_tables(result)[0].notes == ["reports: r0 (training seed 1234), r1 (training seed 7), r2"]
