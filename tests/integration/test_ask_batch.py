"""`moe-experts ask --file`: every valid line answered, every bad line an error in its place; flags checked first.

A batch with a bad line still answers the others and exits 2 (the request-error code); a flag that can be
checked is refused before any router or expert loads.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from moe_experts.errors import RequestError
from moe_experts.inference.ask import Request, RejectedRequest, check_request, read_request_lines
from tests.conftest import run_cli_in_process
from tests.integration.test_cli import run_cli
from tests.integration.test_router import PROMPTS, ask_cli

LOADERS = ("moe_experts.modeling.checkpoints._from_pretrained", "moe_experts.inference.ask.load_expert",
           "moe_experts.routing.token_artifact.load_checkpoint")


def _jsonl(*rows: object) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def _kinds(items: list[Request | RejectedRequest]) -> list[str]:
    return ["ok" if isinstance(i, Request) else i.kind for i in items]


# ----------------------------------------------------------------------------- reading a batch (no models)


def test_every_bad_line_becomes_an_error_in_its_place():
    data = _jsonl(
        {"id": "a", "text": "first"},
        b"{not json",
        [1, 2],
        {"id": None, "text": "null id"},
        {"id": {"a": 1}, "text": "object id"},
        {"id": 7, "text": "number id"},
        {"id": " ", "text": "blank id"},
        {"id": "a", "text": "duplicate of line 1"},
        {"text": "no id: the line number"},
        {"id": "m"},
        {"id": "n", "text": 5},
        {"id": "e", "text": "  \n"},
        {"id": "big", "text": "x" * 101},
        b'{"id": "latin1", "text": "caf\xe9"}',
        b'{"id": "surrogate", "text": "\\ud800"}',
        {"id": "last", "text": "last"},
    )
    items = read_request_lines(data, where="p.jsonl", max_bytes=100)
    assert _kinds(items) == ["ok", "not_json", "not_an_object", "invalid_id", "invalid_id", "invalid_id", "invalid_id",
                             "duplicate_id", "ok", "missing_text", "text_not_a_string", "empty_text", "too_large",
                             "not_utf8", "not_utf8", "ok"]
    # ids are strings: the line's own, or its line number when it gave none or an unusable one
    assert [i.id for i in items] == ["a", "2", "3", "4", "5", "6", "7", "a", "9", "m", "n", "e", "big", "14",
                                     "surrogate", "last"]
    assert [i.text for i in items if isinstance(i, Request)] == ["first", "no id: the line number", "last"]
    bad = [i for i in items if isinstance(i, RejectedRequest)]
    assert [i.line for i in bad] == [2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15]
    assert all(i.message.startswith(f"p.jsonl:{i.line}: ") for i in bad)
    by_line = {i.line: i for i in bad}
    assert "got null" in by_line[4].message and "None" not in by_line[4].message
    assert '{"a": 1}' in by_line[5].message and "{'a': 1}" not in by_line[5].message
    assert "already used by line 1" in by_line[8].message
    assert "101 bytes; the limit is 100" in by_line[13].message
    assert by_line[2].to_json() == {"id": "2", "line": 2, "error": {
        "type": "not_json", "message": by_line[2].message, "hint": by_line[2].hint}}


def test_blank_lines_count_toward_line_numbers_and_jsonl_splits_on_newlines_only():
    data = b'\xef\xbb\xbf{"text": "one"}\r\n\n   \n' + json.dumps({"text": "a\u2028b"}, ensure_ascii=False).encode()
    items = read_request_lines(data, where="p.jsonl")
    # a BOM and CRLF are tolerated; U+2028 inside a JSON string does not end the line
    assert items == [Request("one", id="1"), Request("a\u2028b", id="4")]


def test_an_id_equal_to_an_earlier_lines_default_id_is_a_duplicate():
    items = read_request_lines(_jsonl({"text": "takes id 1"}, {"id": "1", "text": "claims 1"}, {"id": "3", "text": "x"},
                                      {"text": "line 4"}), where="p")
    assert _kinds(items) == ["ok", "duplicate_id", "ok", "ok"]
    assert [i.id for i in items] == ["1", "1", "3", "4"]


def test_a_batch_with_no_line_and_a_non_positive_limit_are_refused():
    with pytest.raises(RequestError, match="holds no request"):
        read_request_lines(b"\n  \n", where="p.jsonl")
    for limit in (0, -1):
        with pytest.raises(RequestError, match="`max_bytes` must be a positive"):
            check_request("hello", max_bytes=limit)
        with pytest.raises(RequestError, match="`max_bytes` must be a positive"):
            read_request_lines(_jsonl({"text": "hello"}), where="p", max_bytes=limit)


# ----------------------------------------------------------------------------- flags refused before loading


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_max_bytes_must_be_a_positive_integer(limit):
    out = run_cli("ask", "--text", "hello", "--max-bytes", limit)
    assert out.returncode == 2, out.stderr
    assert "--max-bytes" in out.stderr and "x>=1" in out.stderr and "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def light_workspace(cards_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Cards and a workspace with no model at all, only a token router's manifest and config (2 layers)."""
    from moe_experts.config import load_preset, load_registry
    from moe_experts.workspace import MANIFEST, Workspace

    preset = load_preset("micro")
    ws = Workspace(tmp_path_factory.mktemp("light") / "ws")
    ws.open(preset.name, preset.fingerprint())
    token = ws.router_dir("token")
    token.mkdir(parents=True)
    (token / MANIFEST).write_text(json.dumps({"experts": list(load_registry(cards_dir).names)}))
    (token / "config.json").write_text(json.dumps({"num_hidden_layers": 2}))
    return cards_dir, ws.root


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any checkpoint, expert or router loads."""
    from moe_experts.routing.doc_router import DocRouter

    def forbidden(*args, **kwargs):
        raise AssertionError("a model or router was loaded before the request was refused")

    for target in LOADERS:
        monkeypatch.setattr(target, forbidden)
    monkeypatch.setattr(DocRouter, "load", classmethod(forbidden))


def _main(workspace: tuple[Path, Path], *args: str) -> tuple[int, str, str]:
    """The real entry point in this process (so that the loaders can be spied on): exit code, stdout, stderr."""
    cards, ws = workspace
    out = run_cli_in_process("--preset", "micro", "--cards", str(cards), "-w", str(ws), "ask", *args)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--top-k", "99"], "--top-k must be between 1 and 4"),
        (["--top-k", "0"], "--top-k must be between 1 and 4"),
        (["--expert", "astrology"], "unknown expert 'astrology'"),
        (["--max-new-tokens", "0"], "max_new_tokens"),
        (["--temperature", "-1"], "temperature"),
        (["--seed", str(2**64)], "--seed"),
        (["--layer", "1"], "--layer applies to --router token only"),
        (["--router", "token", "--top-k", "2"], "apply to the document router"),
        (["--router", "token", "--layer", "-1"], "--layer"),
        (["--router", "token", "--layer", "2"], "--layer must be between 0 and 1 (the MoE has 2 layers)"),
    ],
)
def test_flags_are_refused_before_any_model_loads(light_workspace, no_loading, args, message):
    code, out, err = _main(light_workspace, "--text", "hello", *args)
    assert code == 2, err
    assert message in err and out == ""


def test_a_file_with_no_valid_line_prints_every_error_and_loads_nothing(light_workspace, no_loading, tmp_path):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_bytes(_jsonl(b"nope", {"id": 1, "text": "x"}, {"id": "a"}, {"id": "b", "text": "x" * 50}))
    code, out, err = _main(light_workspace, "--file", str(prompts), "--json", "--max-bytes", "10")
    assert code == 2
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["line"], r["error"]["type"]) for r in rows] == [
        ("1", 1, "not_json"), ("2", 2, "invalid_id"), ("a", 3, "missing_text"), ("b", 4, "too_large")]
    assert "--max-bytes" in rows[3]["error"]["hint"]  # the library's `max_bytes`, named as the flag
    assert "4 of 4 requests" in err and "0 were" in err


# ----------------------------------------------------------------------------- end to end on the micro workspace


def _mixed_batch(path: Path) -> Path:
    path.write_bytes(_jsonl(
        {"id": "code", "text": PROMPTS["code"]},
        b"{not json",
        {"id": "law", "text": PROMPTS["law"]},
        {"id": "code", "text": PROMPTS["medicine"]},
        {"id": 7, "text": PROMPTS["general"]},
        {"id": None, "text": PROMPTS["general"]},
        {"id": "big", "text": "x" * 300},
        {"text": PROMPTS["medicine"]},
        b'{"id": "latin1", "text": "caf\xe9"}',
    ))
    return path


def test_a_mixed_batch_answers_every_valid_line_and_exits_2(routed, tmp_path):
    setup, _, _ = routed
    prompts = _mixed_batch(tmp_path / "mixed.jsonl")
    out = ask_cli(setup, "--file", str(prompts), "--json", "--max-new-tokens", "4", "--max-bytes", "200")
    err = out.stderr.decode()
    assert out.returncode == 2, err
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [(r["id"], r.get("error", {}).get("type")) for r in rows] == [
        ("code", None), ("2", "not_json"), ("law", None), ("code", "duplicate_id"), ("5", "invalid_id"),
        ("6", "invalid_id"), ("big", "too_large"), ("8", None), ("9", "not_utf8")]
    answered = [r for r in rows if "error" not in r]
    assert [r["decision"]["predicted"] for r in answered] == ["code", "law", "medicine"]
    assert all(r["new_tokens"] >= 1 for r in answered)
    for r in rows:
        if "error" in r:
            assert set(r) == {"id", "line", "error"} and set(r["error"]) == {"type", "message", "hint"}
            assert r["error"]["message"].startswith(f"{prompts}:{r['line']}: ")
    assert "6 of 9 requests" in err and "lines 2, 4, 5, 6, 7, 9" in err and "Traceback" not in err


def test_a_mixed_batch_marks_each_bad_line_in_the_human_output(routed, tmp_path):
    setup, _, _ = routed
    prompts = _mixed_batch(tmp_path / "mixed.jsonl")
    out = ask_cli(setup, "--file", str(prompts), "--max-new-tokens", "4", "--max-bytes", "200")
    text = out.stdout.decode()
    assert out.returncode == 2, out.stderr.decode()
    assert text.count("expert: ") == 3 and text.count("NOT ANSWERED") == 6
    order = ["--- request code\n", "--- request 2 (line 2): NOT ANSWERED", "error [not_json]",
             "--- request law\n", "--- request code (line 4): NOT ANSWERED", "error [duplicate_id]",
             "--- request 8\n", "--- request 9 (line 9): NOT ANSWERED"]
    positions = [text.index(marker) for marker in order]
    assert positions == sorted(positions)


def test_a_batch_of_valid_lines_exits_0_with_line_numbers_as_default_ids(routed, tmp_path):
    setup, _, _ = routed
    prompts = tmp_path / "good.jsonl"
    prompts.write_bytes(_jsonl({"text": PROMPTS["law"]}) + b"\n" + _jsonl({"text": PROMPTS["code"]}))
    out = ask_cli(setup, "--file", str(prompts), "--json", "--max-new-tokens", "4")
    assert out.returncode == 0, out.stderr.decode()
    rows = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [(r["id"], r["decision"]["predicted"]) for r in rows] == [("1", "law"), ("3", "code")]


def test_top_k_mixture_uses_the_current_cache_api(routed):
    setup, _, _ = routed
    # a process of its own: transformers' own logger prints its deprecations to the stderr it found at import
    out = ask_cli(setup, "--text", PROMPTS["medicine"], "--top-k", "2", "--json", "--max-new-tokens", "4",
                  fresh_process=True)
    err = out.stderr.decode()
    assert out.returncode == 0, err
    assert len(json.loads(out.stdout)["experts"]) == 2
    assert "FutureWarning" not in err and "past_key_values" not in err


def test_mixture_generation_raises_no_deprecation_warning():
    from moe_experts.inference.generate import GenerationSettings, generate_mixture
    from tests.unit.test_generate import _model, _texts, _tokenizer

    tokenizer = _tokenizer(_texts(100), vocab_size=300)
    models = [_model(tokenizer, 1), _model(tokenizer, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # transformers' past_key_values deprecation fails the test
        g = generate_mixture(models, [0.5, 0.5], tokenizer, "The quiet river",
                             GenerationSettings(max_new_tokens=4, temperature=0.0))
    assert g.new_tokens >= 1
