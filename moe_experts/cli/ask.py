"""``moe-experts ask``: route a request to the right expert and answer it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from moe_experts.cli.common import load_setup

ANSWERING_ROUTERS = ["doc", "token"]  # the routers that inference can answer with
SEEDS = click.IntRange(-(2**63), 2**64 - 1)  # what torch.manual_seed accepts


@click.command()
@click.option("--text", "-t", metavar="TEXT", help="The request; '-' reads it from stdin.")
@click.option("--file", "-f", "file_", type=click.Path(path_type=Path, dir_okay=False), metavar="JSONL",
              help='Many requests, one JSON object per line: {"text": ..., "id": ...}. Every valid line is '
              "answered; a bad line gets an error in its place and the exit code is 2.")
@click.option("--router", type=click.Choice(ANSWERING_ROUTERS), default="doc", show_default=True, help="Which router answers.")
@click.option("--top-k", "-k", type=int, default=1, show_default=True, help="Mix the k most probable experts token by token (c-BTM).")
@click.option("--expert", "-e", metavar="NAME", help="Skip the decision: answer with this expert.")
@click.option("--max-new-tokens", type=int, help="Tokens to generate [default: the expert card's].")
@click.option("--temperature", type=float, help="Sampling temperature, 0 = greedy [default: the expert card's].")
@click.option("--seed", type=SEEDS, help="Sampling seed: the same seed gives the same answer.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per request: decision, posteriors, experts, text, timings.")
@click.option("--explain", is_flag=True, help="Show the nearest training documents and every expert's probability.")
@click.option("--max-bytes", type=click.IntRange(min=1), default=100_000, show_default=True,
              help="Refuse requests larger than this many bytes (a positive integer).")
@click.option("--layer", type=click.IntRange(min=0),
              help="--router token --explain: the MoE layer whose per-token experts are shown [last].")
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
    from moe_experts.inference.generate import check_generation

    # Every flag is checked before a router or an expert loads (that takes seconds), and before stdin is read.
    if (text is None) == (file_ is None):
        raise RequestError("pass exactly one of --text and --file", hint='moe-experts ask --text "your question"')
    if router == "token" and (top_k != 1 or expert is not None):
        raise RequestError("--top-k and --expert apply to the document router; the token-level MoE routes every "
                           "token inside its layers", hint="drop them, or use --router doc")
    if router == "doc" and layer is not None:
        raise RequestError("--layer applies to --router token only", hint="add --router token, or drop --layer")
    check_generation(max_new_tokens=max_new_tokens, temperature=temperature)
    setup = load_setup(ctx, write=False)  # cards and workspace only, read-only: no model
    if router == "token":
        from moe_experts.inference.ask_token import check_token_ask

        check_token_ask(setup, layer=layer)
    else:
        from moe_experts.inference.ask import check_ask

        check_ask(setup, top_k=top_k, expert=expert)

    items = _read_requests(text, file_, max_bytes)
    requests = [r for r in items if not _rejected(r)]
    overrides = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    answers: list[Any] = []
    if requests and router == "token":
        from moe_experts.inference.ask_token import ask_token

        answers = ask_token(setup, requests, overrides=overrides, explain=explain, layer=layer)
    elif requests:
        from moe_experts.pipeline import ask_doc

        answers = ask_doc(setup, requests, top_k=top_k, expert=expert, overrides=overrides, explain=explain)
    answered = iter(answers)
    for item in items:  # input order: each rejected line in its place
        if _rejected(item):
            _print_rejected(item, as_json)
            continue
        answer = next(answered)
        if as_json:
            click.echo(json.dumps(answer.to_json(), ensure_ascii=False))
        elif router == "token":
            _print_token_answer(answer, explain, many=len(items) > 1)
        else:
            _print_answer(answer, explain, many=len(items) > 1)
    rejected = [r for r in items if _rejected(r)]
    if rejected:
        lines = ", ".join(str(r.line) for r in rejected[:10]) + (", ..." if len(rejected) > 10 else "")
        plural = "s" if len(rejected) > 1 else ""
        # exit 2 (a request error) only now: every valid line has been answered and printed above
        raise RequestError(f"{len(rejected)} of {len(items)} requests in {file_} were not answered (line{plural} "
                           f"{lines}); {len(requests)} were",
                           hint="fix the lines whose errors are printed in their place, and ask again with only those")


def _rejected(item: Any) -> bool:
    from moe_experts.inference.ask import RejectedRequest

    return isinstance(item, RejectedRequest)


def _read_requests(text: str | None, file_: Path | None, max_bytes: int) -> list[Any]:
    """The requests: one for --text (refused outright when unusable), one per non-blank line of --file
    (an unusable line becomes a RejectedRequest in its place)."""
    from moe_experts.errors import RequestError
    from moe_experts.inference.ask import Request, check_request, decode_request, read_request_lines

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
    return read_request_lines(raw, where=str(file_), max_bytes=max_bytes)


def _print_rejected(item: Any, as_json: bool) -> None:
    from dataclasses import replace

    from moe_experts.cli.common import as_flags

    # the library names settings as keywords (`max_bytes`); here they are flags (--max-bytes)
    item = replace(item, message=as_flags(item.message), hint=as_flags(item.hint) if item.hint else None)
    if as_json:
        click.echo(json.dumps(item.to_json(), ensure_ascii=False))
        return
    click.echo(f"--- request {item.id} (line {item.line}): NOT ANSWERED")
    click.echo(click.style(f"error [{item.kind}]: {item.message}", fg="red"))
    if item.hint:
        click.echo(f"  fix: {item.hint}")


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


def _print_token_answer(answer: Any, explain: bool, *, many: bool) -> None:
    g = answer.generation
    if many:
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
