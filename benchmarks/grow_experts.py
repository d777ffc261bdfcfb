"""Grow a built expert set by one domain, measure it, prune it again; and the full rebuild it replaces.

    python benchmarks/grow_experts.py --base runs/tiny --card experts/extra/unix.yaml

On copies of the ``--base`` workspace and its cards (the originals are not touched):

1. the report before: the base workspace's evaluation report (``quickstart``'s settings: 300 test
   documents a domain; reused when one was computed from the same inputs);
2. ``experts add CARD``: its wall time, stage by stage; then a new report;
3. whether the new expert beats the seed and the generalist on its own domain (test bits per byte);
4. whether the old domains held: per system, the bits-per-byte difference to the generalist after the add
   inside the bootstrap interval of the one before, and routing accuracy per domain within 0.5 points;
5. ``experts remove`` of the same expert, a new report, and the largest difference to the report before;
6. unless ``--skip-rebuild``: the full rebuild with the new card among the cards (``quickstart --rebuild``
   in a fresh workspace), its wall time stage by stage, up to and without the report.

The result goes to ``benchmarks/results/grow_experts-<date>-<preset>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model, usable_cores, write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ACCURACY_POINTS = 0.5  # routing accuracy of an old domain may move by at most this many points


def _setup(workspace: Path, cards: Path, preset_name: str) -> Any:
    from moe_experts.config import load_preset, load_registry
    from moe_experts.modeling.stages import Setup
    from moe_experts.workspace import Workspace

    preset = load_preset(preset_name)
    ws = Workspace(workspace.absolute())
    ws.open(preset.name, preset.fingerprint())
    return Setup(workspace=ws, registry=load_registry(cards), preset=preset)


def _report(setup: Any, max_docs: int) -> tuple[Path, dict[str, Any]]:
    from moe_experts.evaluation.options import EvalOptions
    from moe_experts.pipeline import ensure_report

    folder, report, _ = ensure_report(setup, EvalOptions(max_docs=max_docs, suite_recipe=REPO / "eval/suites.yaml"))
    return folder, report


def _accuracy(report: dict[str, Any], domain: str) -> float | None:
    routing = report["routing"].get("doc-top1")
    if not routing or domain not in routing["labels"]:
        return None
    i = routing["labels"].index(domain)
    row = routing["confusion"][i]
    j = routing["experts"].index(domain) if domain in routing["experts"] else None
    return None if j is None else row[j] / max(1, sum(row))


def held(before: dict[str, Any], after: dict[str, Any], domains: list[str]) -> dict[str, Any]:
    """Per old domain and system: bits per byte before and after, and whether the change is inside the
    bootstrap interval of the difference to the generalist before; routing accuracy before and after."""
    out: dict[str, Any] = {}
    bpb_b, bpb_a = before["lm"]["bits_per_byte"], after["lm"]["bits_per_byte"]
    vs_b, vs_a = before["lm"]["vs_baseline"], after["lm"]["vs_baseline"]
    for d in domains:
        rows = {}
        for system in bpb_b:
            if system not in bpb_a or d not in bpb_a[system]:
                continue
            row = {"before": bpb_b[system][d], "after": bpb_a[system][d],
                   "change": round(bpb_a[system][d] - bpb_b[system][d], 5)}
            if system in vs_b and system in vs_a:
                lo, hi = vs_b[system][d]["diff_ci"]
                row["diff_to_generalist"] = {"before": vs_b[system][d]["diff"], "after": vs_a[system][d]["diff"],
                                             "before_ci": [lo, hi]}
                row["within_interval"] = lo <= vs_a[system][d]["diff"] <= hi
            rows[system] = row
        acc_b, acc_a = _accuracy(before, d), _accuracy(after, d)
        change = None if acc_b is None or acc_a is None else round(100 * (acc_a - acc_b), 3)
        out[d] = {"bits_per_byte": rows, "routing_accuracy": {
            "before": acc_b, "after": acc_a, "change_points": change,
            "within_0.5_points": None if change is None else abs(change) <= ACCURACY_POINTS}}
    return out


def largest_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The largest absolute bits-per-byte difference between two reports over their common systems and domains."""
    worst = {"system": None, "domain": None, "difference": 0.0}
    for system, row in a["lm"]["bits_per_byte"].items():
        for d, v in row.items():
            w = b["lm"]["bits_per_byte"].get(system, {}).get(d)
            if w is not None and abs(w - v) > worst["difference"]:
                worst = {"system": system, "domain": d, "difference": round(abs(w - v), 5)}
    accuracy = {d: (_accuracy(a, d), _accuracy(b, d)) for d in a["domains"] if d in b["domains"]}
    return {"bits_per_byte": worst, "routing_accuracy": accuracy}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=Path, required=True, help="a built workspace (quickstart done); only copied")
    ap.add_argument("--card", type=Path, required=True, help="the card of the expert to add")
    ap.add_argument("--cards", type=Path, default=REPO / "experts", help="the base workspace's cards folder")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/grow-experts"), help="where the copies go (replaced)")
    ap.add_argument("--init", choices=["seed", "average", "nearest"], default="seed")
    ap.add_argument("--max-docs", type=int, default=300, help="test documents a domain in every report")
    ap.add_argument("--skip-rebuild", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from moe_experts.config import load_card
    from moe_experts.lifecycle import add_expert, remove_expert
    from moe_experts.recipes import load_recipe

    recipe = load_recipe(REPO / "router_training/doc.yaml")
    new = load_card(args.card)
    if args.scratch.exists():
        shutil.rmtree(args.scratch)
    cards = args.scratch / "cards"
    cards.mkdir(parents=True)
    for path in args.cards.glob("*.yaml"):
        shutil.copy(path, cards / path.name)
    ws = args.scratch / "grown"
    shutil.copytree(args.base, ws, ignore=shutil.ignore_patterns("checkpoints"))
    base = _setup(ws, cards, args.preset)
    old_domains = list(base.registry.domains)

    before_dir, before = _report(base, args.max_docs)
    started = time.monotonic()
    added = add_expert(base, args.card, init=args.init, recipe=recipe)
    add_seconds = round(time.monotonic() - started, 1)
    grown = _setup(ws, cards, args.preset)
    after_dir, after = _report(grown, args.max_docs)
    bpb = after["lm"]["bits_per_byte"]
    d = new.domain
    new_expert = {s: bpb[s][d] for s in ("seed", "generalist", f"expert:{new.name}", "doc-top1", "oracle") if s in bpb}
    new_expert["beats_seed"] = new_expert[f"expert:{new.name}"] < new_expert["seed"]
    new_expert["beats_generalist"] = new_expert[f"expert:{new.name}"] < new_expert["generalist"]
    new_expert["routing_accuracy_test"] = _accuracy(after, d)

    started = time.monotonic()
    removed = remove_expert(grown, new.name, recipe=recipe)
    remove_seconds = round(time.monotonic() - started, 1)
    pruned = _setup(ws, cards, args.preset)
    removed_dir, removed_report = _report(pruned, args.max_docs)

    rebuild: dict[str, Any] | None = None
    if not args.skip_rebuild:
        full_cards = args.scratch / "cards-full"
        shutil.copytree(cards, full_cards, ignore=shutil.ignore_patterns("removed"))
        shutil.copy(args.card, full_cards / f"{new.name}.yaml")
        full = _setup(args.scratch / "rebuilt", full_cards, args.preset)
        started = time.monotonic()
        stages = _rebuild_without_report(full, recipe)  # no report: the add is timed without one too
        rebuild = {"seconds": round(time.monotonic() - started, 1), "stages": stages}

    held_up = held(before, after, old_domains)
    result = {
        "benchmark": "grow_experts", "preset": args.preset, "date": dt.date.today().isoformat(),
        "machine": {"cpu": cpu_model(), "cores": usable_cores()},
        "card": str(args.card), "expert": new.name, "init": args.init, "max_docs": args.max_docs,
        "add": {"seconds": add_seconds, "stages": added.seconds, "documents": added.documents,
                "duplicates_of": added.duplicates_of, "init": added.init,
                "router_accuracy_validation": round(added.router_accuracy, 4),
                "router_validation_accuracy_all": added.router["metrics"]["validation_routed"]["accuracy"],
                "generalist": added.generalist, "token_router": added.token_router},
        "rebuild": rebuild,
        "add_over_rebuild": None if rebuild is None else round(add_seconds / rebuild["seconds"], 4),
        "new_expert_test": new_expert,
        "old_domains": held_up,
        "old_domains_all_within_interval": all(r.get("within_interval", True) for v in held_up.values()
                                               for r in v["bits_per_byte"].values()),
        "old_domains_accuracy_within_0.5_points": all(v["routing_accuracy"]["within_0.5_points"] is not False
                                                      for v in held_up.values()),
        "remove": {"seconds": remove_seconds, "stages": removed.seconds,
                   "largest_difference_to_before": largest_difference(before, removed_report)},
        "reports": {"before": str(before_dir), "after": str(after_dir), "after_remove": str(removed_dir)},
    }
    stem = f"grow_experts-{result['date']}-{args.preset}"
    write_result(result, args.out, stem)


def _rebuild_without_report(setup: Any, recipe: Any) -> list[dict[str, Any]]:
    """``quickstart --rebuild`` up to the document router (every stage timed), without the evaluation report."""
    from moe_experts.modeling.sanity import run_sanity
    from moe_experts.modeling.generalist import train_generalists
    from moe_experts.modeling.stages import TrainOptions, train_experts, train_seed
    from moe_experts.pipeline import ensure_corpora, ensure_doc_router, ensure_tokenizer

    opts = TrainOptions(update=True)
    stages = [("corpora", lambda: ensure_corpora(setup, rebuild=True)),
              ("tokenizer", lambda: ensure_tokenizer(setup)),
              ("seed", lambda: train_seed(setup, opts)),
              ("experts", lambda: train_experts(setup, None, opts)),
              ("generalist", lambda: train_generalists(setup, opts)),
              ("sanity check", lambda: run_sanity(setup)),
              ("document router", lambda: ensure_doc_router(setup, recipe))]
    out = []
    for name, fn in stages:
        started = time.monotonic()
        fn()
        out.append({"stage": name, "seconds": round(time.monotonic() - started, 1)})
        logging.info("rebuild: %s %.1f s", name, out[-1]["seconds"])
    return out


if __name__ == "__main__":
    main()
