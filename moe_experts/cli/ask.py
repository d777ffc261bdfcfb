"""``moe-experts ask``: route a request to the right expert and answer it."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from moe_experts.cli.common import load_setup

ANSWERING_ROUTERS = ["doc", "token"]  # the routers that inference can answer with


@click.command()
@click.option("--text", "-t", metavar="TEXT", help="The request; '-' reads it from stdin.")
@click.option("--file", "-f", "file_", type=click.Path(path_type=Path, dir_okay=False), metavar="JSONL",
              help='Many requests, one JSON object per line: {"text": ..., "id": ...}.')
@click.option("--router", type=click.Choice(ANSWERING_ROUTERS), default="doc", show_default=True, help="Which router answers.")
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
    from moe_experts.inference.generate import check_generation

    check_generation(max_new_tokens=max_new_tokens, temperature=temperature)  # before any model loads
    requests = _read_requests(text, file_, max_bytes)

    overrides = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    if router == "token":
        if top_k != 1 or expert is not None:
            raise RequestError("--top-k and --expert apply to the document router; the token-level MoE routes every "
                               "token inside its layers", hint="drop them, or use --router doc")
        from moe_experts.inference.ask_token import ask_token

        token_answers = ask_token(load_setup(ctx), requests, overrides=overrides, explain=explain, layer=layer)
        for answer in token_answers:
            if as_json:
                click.echo(json.dumps(answer.to_json(), ensure_ascii=False))
            else:
                _print_token_answer(answer, explain, many=len(token_answers) > 1)
        return
    if layer is not None:
        raise RequestError("--layer applies to --router token only", hint="add --router token, or drop --layer")
    from moe_experts.pipeline import ask_doc

    answers = ask_doc(load_setup(ctx), requests, top_k=top_k, expert=expert, overrides=overrides, explain=explain)
    for answer in answers:
        if as_json:
            click.echo(json.dumps(answer.to_json(), ensure_ascii=False))
        else:
            _print_answer(answer, explain, many=len(answers) > 1)


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
