"""``moe-experts train-router`` and ``moe-experts ask``: the router command family.

Thin like the rest of the CLI: parse, call the library, print. Registered on the
main group by ``moe_experts.cli``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from moe_experts.cli import _setup, _train_options, cli, restart_option, resume_option

KINDS = ["doc", "token"]


@cli.command("train-router")
@click.option("--kind", type=click.Choice(KINDS), default="doc", show_default=True,
              help="doc: document-level (embeddings, FAISS, classifier); token: merge the experts into a sparse MoE "
              "and train its gates (Branch-Train-MiX).")
@click.option("--recipe", type=click.Path(path_type=Path, dir_okay=False), metavar="YAML",
              help="Router recipe [default: router_training/<kind>.yaml, else built-in defaults].")
@click.option("--unsupervised", is_flag=True, help="doc: no domain labels: FAISS k-means clusters mapped to experts (c-BTM).")
@click.option("--merge-rest", type=click.Choice(["average", "seed"]),
              help="token: attention, norms and embeddings averaged over the experts or taken from the seed [recipe].")
@click.option("--gate-init", type=click.Choice(["hidden", "random"]),
              help="token: gates from each expert's mean hidden state on its domain, or random [recipe].")
@click.option("--train", "train_mode", type=click.Choice(["gates", "all"]),
              help="token: train the gates only (all else frozen) or every weight [recipe].")
@click.option("--include-seed", is_flag=True, default=None, help="token: add the seed's FFN as one more expert [recipe].")
@click.option("--allow-dead-experts", is_flag=True, help="token: save even when an expert gets under the recipe's dead_expert_share (5% by default) of a layer's tokens.")
@click.option("--force", is_flag=True, help="Retrain even when the router is up to date.")
@click.option("--no-build", is_flag=True, help="Stop instead of building missing corpora or experts first.")
@resume_option
@restart_option
@click.pass_context
def train_router(ctx: click.Context, kind: str, recipe: Path | None, unsupervised: bool, merge_rest: str | None,
                 gate_init: str | None, train_mode: str | None, include_seed: bool | None, allow_dead_experts: bool,
                 force: bool, no_build: bool, resume: bool, restart: bool) -> None:
    """Train a router over the experts: document-level (routers/doc/) or token-level (routers/token/)."""
    from moe_experts.config import load_recipe
    from moe_experts.errors import ConfigError, MissingArtifactError
    from moe_experts.pipeline import ensure_doc_router, ensure_experts
    from moe_experts.routing.doc_router import router_dir

    setup = _setup(ctx)
    token_flags = {"--merge-rest": merge_rest, "--gate-init": gate_init, "--train": train_mode,
                   "--include-seed": include_seed, "--allow-dead-experts": allow_dead_experts or None}
    if kind == "doc" and any(v is not None for v in token_flags.values()):
        used = ", ".join(k for k, v in token_flags.items() if v is not None)
        raise ConfigError(f"{used} only apply to --kind token", hint="add --kind token, or drop them")
    if kind == "token" and unsupervised:
        raise ConfigError("--unsupervised only applies to --kind doc")
    missing = _missing_prerequisites(setup)
    if missing and no_build:
        raise MissingArtifactError(f"missing: {', '.join(missing)}", hint="run `moe-experts quickstart` first")
    if missing:
        click.echo(f"missing prerequisites ({', '.join(missing)}): building them first", err=True)
        ensure_experts(setup, _train_options(resume, False, update=True))
    if kind == "token":
        _train_token(setup, recipe, {"merge_rest": merge_rest, "gate_init": gate_init, "train": train_mode,
                                     "include_seed": include_seed}, allow_dead_experts, force, resume, restart)
        return
    rec = load_recipe(recipe)
    manifest = ensure_doc_router(setup, rec, force=force, update=True, unsupervised=unsupervised)
    folder = router_dir(setup.workspace.root)
    if manifest is None:
        click.echo(f"document router: up to date ({folder}); --force retrains it")
        return
    print_router_summary(manifest, folder)


def _train_token(setup: Any, recipe: Path | None, overrides: dict[str, Any], allow_dead: bool, force: bool,
                 resume: bool, restart: bool) -> None:
    from moe_experts.config import load_token_recipe
    from moe_experts.routing.train_token import health_table, token_router_dir, token_router_status, train_token_router

    rec = load_token_recipe(recipe)
    rec = rec.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    folder = token_router_dir(setup.workspace.root)
    status, diffs = token_router_status(setup, rec)
    if status == "current" and not force:
        click.echo(f"token router: up to date ({folder}); --force retrains it")
        return
    if status == "stale":
        click.echo("token router: stale, retraining:\n  " + "\n  ".join(diffs), err=True)
    manifest = train_token_router(setup, rec, _train_options(resume, restart), allow_dead_experts=allow_dead)
    t = manifest["training"]
    click.echo(f"token router: {folder}")
    click.echo(f"  experts     {', '.join(manifest['experts'])} (top-{rec.top_k}); rest {rec.merge_rest}, "
               f"gates from {rec.gate_init}, trained {t['trained']} ({t['trainable_parameters']:,} of "
               f"{manifest['parameters']:,} parameters)")
    click.echo(f"  training    {t['steps']} steps on {t['device']}, {t['seconds']:.1f} s, loss "
               f"{t['first_loss']:.3f} -> {t['last_loss']:.3f}")
    click.echo("\n" + health_table(manifest["health"]))
    if manifest["health"]["dead"]:
        click.secho(f"!! dead experts saved (--allow-dead-experts): {', '.join(manifest['health']['dead'])}",
                    fg="red", bold=True, err=True)


def _missing_prerequisites(setup: Any) -> list[str]:
    from moe_experts.data.build import corpora_status
    from moe_experts.workspace import MANIFEST

    missing = []
    if corpora_status(setup.workspace, setup.registry, setup.preset.data) != "current":
        missing.append("corpora")
    starters = [c.name for c in setup.registry.starters]
    needed = ["seed", *starters] if starters else []  # user-supplied experts need no training
    return missing + [f"model {n}" for n in needed if not (setup.workspace.model_dir(n) / MANIFEST).exists()]


def print_router_summary(m: dict[str, Any], folder: Path) -> None:
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
    ex = m["metrics"]["card_examples"]
    click.echo(f"  card examples: {ex['positive']} positive reach their expert, {ex['negative']} negative stay away")
    for w in ex["misrouted"]:
        click.secho(f"    ! {w['kind']} example of '{w['card']}' went to '{w['routed_to']}': {w['text'][:60]!r}", fg="yellow")
    click.echo("  confusion (validation; rows = true domain, columns = chosen expert)")
    experts = m["experts"]
    click.echo("    " + " " * 10 + "".join(f"{e:>10}" for e in experts))
    for name, row in zip(m["domains"], val["confusion"]):
        click.echo(f"    {name:<10}" + "".join(f"{v:>10,}" for v in row))


@cli.command()
@click.option("--text", "-t", metavar="TEXT", help="The request; '-' reads it from stdin.")
@click.option("--file", "-f", "file_", type=click.Path(path_type=Path, dir_okay=False), metavar="JSONL",
              help='Many requests, one JSON object per line: {"text": ..., "id": ...}.')
@click.option("--router", type=click.Choice(KINDS), default="doc", show_default=True, help="Which router answers.")
@click.option("--top-k", "-k", type=int, default=1, show_default=True, help="Mix the k most probable experts token by token (c-BTM).")
@click.option("--expert", "-e", metavar="NAME", help="Skip the decision: answer with this expert.")
@click.option("--max-new-tokens", type=int, help="Tokens to generate [default: the expert card's].")
@click.option("--temperature", type=float, help="Sampling temperature, 0 = greedy [default: the expert card's].")
@click.option("--seed", type=int, help="Sampling seed: the same seed gives the same answer.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per request: decision, posteriors, experts, text, timings.")
@click.option("--explain", is_flag=True, help="Show the nearest training documents and every expert's probability.")
@click.option("--max-bytes", type=int, default=100_000, show_default=True, help="Refuse requests larger than this.")
@click.option("--layer", type=int, help="--router token --explain: the MoE layer whose per-token experts are shown [last].")
@click.pass_context
def ask(ctx: click.Context, text: str | None, file_: Path | None, router: str, top_k: int, expert: str | None,
        max_new_tokens: int | None, temperature: float | None, seed: int | None, as_json: bool, explain: bool,
        max_bytes: int, layer: int | None) -> None:
    """Route a request to the right expert and answer it.

    \b
    moe-experts ask --text "What is the ICD-10 code for asthma?"
    echo "def f(x):" | moe-experts ask --text - --json
    moe-experts ask --file prompts.jsonl --top-k 2
    """
    from moe_experts.errors import RequestError

    if (text is None) == (file_ is None):
        raise RequestError("pass exactly one of --text and --file", hint='moe-experts ask --text "your question"')
    if max_new_tokens is not None and max_new_tokens < 1:
        raise RequestError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature is not None and temperature < 0:
        raise RequestError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    requests = _read_requests(text, file_, max_bytes)

    overrides = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    if router == "token":
        _ask_token(ctx, requests, overrides, top_k=top_k, expert=expert, explain=explain, layer=layer, as_json=as_json)
        return
    if layer is not None:
        raise RequestError("--layer applies to --router token only", hint="add --router token, or drop --layer")
    from moe_experts.inference.ask import ask as run, check_expert
    from moe_experts.routing.doc_router import DocRouter, router_dir
    setup = _setup(ctx)
    check_expert(setup, expert)
    # ask needs the router's expert set and embedder to match; corpus changes are train-router's business
    doc_router = DocRouter.load(router_dir(setup.workspace.root), setup.registry)
    doc_router.warm_up()
    answers = run(setup, doc_router, requests, top_k=top_k, expert=expert, overrides=overrides, explain=explain)
    for answer in answers:
        if as_json:
            click.echo(json.dumps(answer.to_json(), ensure_ascii=False))
        else:
            _print_answer(answer, explain, many=len(answers) > 1)


def _ask_token(ctx: click.Context, requests: list[Any], overrides: dict[str, Any], *, top_k: int, expert: str | None,
               explain: bool, layer: int | None, as_json: bool) -> None:
    from moe_experts.errors import RequestError
    from moe_experts.inference.ask_token import ask_token

    if top_k != 1 or expert is not None:
        raise RequestError("--top-k and --expert apply to the document router; the token-level MoE routes every "
                           "token inside its layers", hint="drop them, or use --router doc")
    answers = ask_token(_setup(ctx), requests, overrides=overrides, explain=explain, layer=layer)
    for answer in answers:
        if as_json:
            click.echo(json.dumps(answer.to_json(), ensure_ascii=False))
            continue
        g = answer.generation
        if len(answers) > 1:
            click.echo(f"--- request {answer.request.id}")
        click.echo("router: token-level MoE (every token routed in every layer)")
        click.echo("answer:\n" + g.text.strip())
        if explain:
            click.echo(f"experts per generated token (layer {answer.layer}: top-{len(answer.routes[0].layer_experts) if answer.routes else 0}; "
                       "majority: the top-1 expert in most layers):")
            for r in answer.routes:
                click.echo(f"  {r.token!r:<16} layer {answer.layer}: {' + '.join(r.layer_experts):<20} majority: {r.majority}")
        tps = f", {g.new_tokens / g.seconds:.0f} tokens/s" if g.seconds > 0 else ""
        click.echo(f"latency: generation {1000 * g.seconds:.1f} ms ({g.new_tokens} tokens{tps})")


def _read_requests(text: str | None, file_: Path | None, max_bytes: int) -> list[Any]:
    from moe_experts.errors import RequestError
    from moe_experts.inference.ask import Request, check_request, decode_request

    if text is not None:
        if text == "-":
            text = decode_request(sys.stdin.buffer.read(), where="stdin")
            return [Request(check_request(text, where="stdin", max_bytes=max_bytes))]
        return [Request(check_request(text, max_bytes=max_bytes))]
    assert file_ is not None
    try:
        raw = file_.read_bytes()
    except OSError as exc:
        raise RequestError(f"--file: cannot read {file_}: {exc.strerror}") from exc
    requests = []
    for n, line in enumerate(decode_request(raw, where=str(file_)).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file_}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RequestError(f"{where}: not JSON ({exc.msg})", hint='one object per line: {"text": "...", "id": "..."}') from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise RequestError(f"{where}: needs a string field 'text'", hint='one object per line: {"text": "...", "id": "..."}')
        requests.append(Request(check_request(row["text"], where=where, max_bytes=max_bytes),
                                id=str(row["id"]) if "id" in row else str(n)))
    if not requests:
        raise RequestError(f"--file: {file_} holds no request", hint='one JSON object per line: {"text": "..."}')
    return requests


def _print_answer(answer: Any, explain: bool, *, many: bool) -> None:
    d = answer.decision
    if many:
        click.echo(f"--- request {answer.request.id}")
    who = " + ".join(f"{n} ({w:.2f})" for n, w in answer.experts) if len(answer.experts) > 1 else answer.experts[0][0]
    flag = "  [abstained]" if d.abstained else ""
    click.echo(f"expert: {who}{flag}")
    click.echo(f"why: {d.reason}")
    click.echo("posterior: " + "  ".join(f"{e} {p:.3f}" for e, p in sorted(d.posterior.items(), key=lambda kv: -kv[1])))
    if explain:
        click.echo(f"nearest training documents (nearest similarity {d.nearest_similarity:.3f}):")
        for nb in d.neighbours:
            click.echo(f"  {nb.similarity:.3f}  {nb.domain:<10} {nb.snippet[:100]}")
    g = answer.generation
    click.echo("answer:\n" + g.text.strip())
    tps = f", {g.new_tokens / g.seconds:.0f} tokens/s" if g.seconds > 0 else ""
    click.echo(f"latency: routing {1000 * answer.routing_seconds:.1f} ms, generation {1000 * g.seconds:.1f} ms "
               f"({g.new_tokens} tokens{tps})")

