"""Tables and summaries that more than one command prints (quickstart prints most of them)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from moe_experts.modeling.sanity import SanityReport
    from moe_experts.modeling.stages import Setup


def print_corpora(setup: Setup, require: bool = False) -> None:
    """Documents, characters and tokens per domain and split (nothing when no corpora, unless ``require``)."""
    from moe_experts.data.build import corpora_dir, domain_manifest, require_corpora

    if require:
        require_corpora(setup.workspace, setup.registry, setup.preset.data)
    elif not (corpora_dir(setup.workspace) / "moe_experts.json").exists():
        return
    click.echo(f"\ncorpora ({corpora_dir(setup.workspace)})")
    click.echo(f"{'domain':<10}{'split':<7}{'docs':>9}{'chars':>13}{'tokens':>12}")
    for domain in setup.registry.domains:
        m = domain_manifest(setup.workspace, domain)
        tokens = m.get("tokens") or {}
        for split, s in m["splits"].items():
            tok = f"{tokens[split]:,}" if split in tokens else "-"
            click.echo(f"{domain:<10}{split:<7}{s['documents']:>9,}{s['characters']:>13,}{tok:>12}")
        missing = [src["fingerprint"]["kind"] for src in m["sources"] if not src["available"]]
        if missing:
            click.secho(f"{'':<10}missing source(s): {', '.join(missing)}", fg="yellow")


def print_sanity(setup: Setup, report: SanityReport) -> None:
    click.echo("\n" + report.table() + "\n\n" + report.table("bits_per_byte"))
    click.echo(f"\nsaved: {setup.workspace.reports_dir / 'sanity'}")
    if report.failures:
        click.secho("\n" + "!" * 78, fg="red", bold=True, err=True)
        for failure in report.failures:
            click.secho(f"!! EXPERT CHECK FAILED: {failure}", fg="red", bold=True, err=True)
        click.secho("!" * 78, fg="red", bold=True, err=True)
    else:
        click.echo("every expert beats the seed and the generalist(s) on its own domain")


def print_doc_router_summary(m: dict[str, Any], folder: Path) -> None:
    val, held = m["metrics"]["validation_routed"], m["metrics"]["held_out_half"]
    idx = m["index"]
    click.echo(f"document router: {folder}")
    click.echo(f"  documents   {m['documents']['train']:,} train, {m['documents']['val']:,} validation "
               f"(embedding {m['seconds']['embedding']:.1f} s)")
    click.echo(f"  index       {idx['kind']} over {idx['size']:,} vectors (dim {idx['dim']}), "
               f"recall@{idx['recall_k']} {idx['recall_at_k']:.4f}")
    cal = m["classifier"]["calibration"]
    cal_txt = f"temperature {cal['temperature']:.3f}" if cal["kind"] == "temperature" else "isotonic"
    click.echo(f"  classifier  {m['classifier']['method']} ({m['mode']}), calibration {cal_txt}")
    click.echo(f"  held-out validation half: accuracy {held['accuracy']:.4f}, macro-F1 {held['macro_f1']:.4f}, "
               f"ECE {m['metrics']['held_out_half_uncalibrated_ece']:.4f} -> {held['ece']:.4f}")
    click.echo(f"  abstain     below confidence {m['thresholds']['min_confidence']:.3f} or nearest similarity "
               f"{m['thresholds']['min_similarity']:.3f}; validation: routed accuracy {val['accuracy']:.4f}, "
               f"abstain rate {val['abstain_rate']:.4f}")
    nd = m["metrics"].get("no_domain")
    if nd is not None:  # routers saved before the "no domain" gate have none
        click.echo(f"  no domain   gate at out-of-domain score {nd['threshold']:.3f}; validation: in-domain abstained "
                   f"{nd['validation_in_domain_abstained']:.4f}, no-domain text caught {nd['validation_no_domain_caught']:.4f}"
                   f" ({nd['texts']['val']:,} texts: " + ", ".join(f"{k} {v:.2f}" for k, v in nd["caught_by_kind"].items()) + ")")
    w = m.get("windows")
    if w is not None:  # routers saved before bounded windows read every window
        reads = "every window" if w["max"] is None else f"the first {w['max']} window{'s' * (w['max'] > 1)}"
        how = "set by the recipe"
        if w["chosen_by"] == "validation":
            acc = w["validation_accuracy"]
            how = ("chosen on validation, whose accuracy is " + ", ".join(
                f"{v:.4f} with {k}" for k, v in acc.items() if k != "every") + f", {acc['every']:.4f} with all")
        click.echo(f"  windows     reads {reads} of a request (256 tokens each); {how}")
    ex = m["metrics"]["card_examples"]
    click.echo(f"  card examples: {ex['positive']} positive reach their expert, {ex['negative']} negative stay away")
    for w in ex["misrouted"]:
        click.secho(f"    ! {w['kind']} example of '{w['card']}' went to '{w['routed_to']}': {w['text'][:60]!r}", fg="yellow")
    click.echo("  confusion (validation; rows = true domain, columns = chosen expert)")
    experts = m["experts"]
    click.echo("    " + " " * 10 + "".join(f"{e:>10}" for e in experts))
    for name, row in zip(m["domains"], val["confusion"]):
        click.echo(f"    {name:<10}" + "".join(f"{v:>10,}" for v in row))


def print_token_router_summary(m: dict[str, Any], folder: Path) -> None:
    from moe_experts.routing.train_token import health_table

    t, rec = m["training"], m["recipe"]
    click.echo(f"token router: {folder}")
    click.echo(f"  experts     {', '.join(m['experts'])} (top-{rec['top_k']}); rest {rec['merge_rest']}, "
               f"gates from {rec['gate_init']}, trained {t['trained']} ({t['trainable_parameters']:,} of "
               f"{m['parameters']:,} parameters)")
    click.echo(f"  training    {t['steps']} steps on {t['device']}, {t['seconds']:.1f} s, loss "
               f"{t['first_loss']:.3f} -> {t['last_loss']:.3f}")
    click.echo("\n" + health_table(m["health"]))
    if m["health"]["dead"]:
        click.secho(f"!! dead experts saved (--allow-dead-experts): {', '.join(m['health']['dead'])}",
                    fg="red", bold=True, err=True)


def print_report_summary(report: dict[str, Any], folder: Path) -> None:
    from moe_experts.evaluation.report import headline_table, plain

    for s in report["skipped"]:
        click.echo(f"skipped {s['name']}: {s['reason']} -> {s['hint']}")
    click.echo("")
    click.echo(plain(headline_table(report)))
    missed = [t for t in report["targets"] if not t["met"]]
    if report["targets"]:
        from moe_experts.evaluation.tables import training_run

        run = training_run(report)
        by = f" by this training run ({run})" if run else ""
        click.echo(f"\ntargets: {len(report['targets']) - len(missed)}/{len(report['targets'])} met{by}")
        for t in missed:
            click.echo(f"  not met: {t['name']} on {t['domain']}: {t['value']:.4f} > {t['threshold']}")
    for note in report["notes"]:
        if not note.startswith("skipped "):
            click.echo(f"note: {note}")
    if report.get("source_held_out"):
        from moe_experts.evaluation.report import source_held_out_table

        click.echo("\n" + plain(source_held_out_table(report)))
    click.echo(f"\nreport: {folder}/report.md  (html: {folder}/report.html, json: {folder}/report.json)")
