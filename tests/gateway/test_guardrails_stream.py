"""Streamed output guardrails, event level: for any text (quotes, backslashes,
newlines and non-ASCII included), any split of it into SSE events and any split
of those bytes into reads, the text a client reads is the whole answer's
redaction, in the OpenAI chat, completions, Anthropic Messages and Responses
dialects."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgw._native import RegexGuard
from fastgw.config import GuardrailConfig
from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.guardrails import OutputRegex, _Regex
from fastgw.providers.dialects import ANTHROPIC_CLIENT, OPENAI_CLIENT

PATTERN = r"secret-\d{4}|\"quoted\""
SECOND = r"[ab]{2}|\d-"


def _chat(text: str, compact: bool) -> bytes:
    sep = (",", ":") if compact else (", ", ": ")
    doc = {"id": "c1", "object": "chat.completion.chunk",
           "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + json.dumps(doc, separators=sep).encode() + b"\n\n"


def _events(endpoint: str, pieces: list[str], compact: bool) -> list[bytes]:
    if endpoint == "chat":
        # Not compact: the last piece comes in the finish chunk, as some providers send it.
        last = {} if compact or not pieces else {"content": pieces[-1]}
        finish = {"id": "c1", "choices": [{"index": 0, "delta": last, "finish_reason": "stop"}]}
        body = pieces if compact else pieces[:-1]
        return ([_chat(p, compact) for p in body]
                + [b"data: " + json.dumps(finish).encode() + b"\n\n", b"data: [DONE]\n\n"])
    if endpoint == "completions":
        def ev(text: str, finish: str | None) -> bytes:
            doc = {"id": "x", "choices": [{"text": text, "index": 0, "finish_reason": finish}]}
            sep = (",", ":") if compact else (", ", ": ")
            return b"data: " + json.dumps(doc, separators=sep).encode() + b"\n\n"
        return [ev(p, None) for p in pieces] + [ev("", "stop"), b"data: [DONE]\n\n"]
    if endpoint == "messages":
        def block(p: str) -> bytes:
            doc = {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": p}}
            sep = (",", ":") if compact else (", ", ": ")
            return b"event: content_block_delta\ndata: " + json.dumps(
                doc, separators=sep).encode() + b"\n\n"
        return ([b'event: message_start\ndata: {"type":"message_start"}\n\n']
                + [block(p) for p in pieces]
                + [b'event: content_block_stop\ndata: {"type":"content_block_stop",'
                   b'"index":0}\n\n', b'event: message_stop\ndata: {"type":"message_stop"}\n\n'])
    def delta(p: str) -> bytes:
        doc = {"type": "response.output_text.delta", "item_id": "m", "output_index": 0,
               "content_index": 0, "delta": p}
        sep = (",", ":") if compact else (", ", ": ")
        return b"event: response.output_text.delta\ndata: " + json.dumps(
            doc, separators=sep).encode() + b"\n\n"
    done = {"type": "response.output_text.done", "output_index": 0, "content_index": 0,
            "text": "".join(pieces)}
    return [delta(p) for p in pieces] + [
        b"event: response.output_text.done\ndata: " + json.dumps(done).encode() + b"\n\n"]


def _read(endpoint: str, out: bytes) -> str:
    text = []
    for event in out.split(b"\n\n"):
        for line in event.split(b"\n"):
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            doc: Any = json.loads(line[6:])
            if endpoint == "chat":
                text.append(doc["choices"][0]["delta"].get("content") or "")
            elif endpoint == "completions":
                text.append(doc["choices"][0]["text"])
            elif endpoint == "messages":
                if doc["type"] == "content_block_delta":
                    text.append(doc["delta"]["text"])
            elif doc["type"] == "response.output_text.delta":
                text.append(doc["delta"])
            else:
                assert doc["text"] == "".join(text)  # the done event repeats the text
    return "".join(text)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


_piece = st.lists(st.sampled_from([*'ab "\\\n\té€-0123', "secret-", "quoted", "\U0001f600"]),
                  max_size=5).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["chat", "completions", "messages", "responses"]),
       st.lists(_piece, min_size=1, max_size=12), st.lists(st.integers(0, 5000), max_size=6),
       st.booleans(), st.booleans())
@example("chat", ["the secr", "et-1234 ", 'and "quo', 'ted"!'], [], True, False)
@example("chat", ["the secr", "et-1234 ", 'and "quo', 'ted"!'], [], True, True)
@example("chat", ["aa", "aa\U0001f6000", "-"], [], False, True)  # fewer chars than bytes
def test_streamed_redaction_reads_as_the_whole_answer_redacted(
        endpoint: str, pieces: list[str], cuts: list[int], compact: bool, two: bool) -> None:
    """One guardrail (its windows fed natively) or two (read event by event)."""
    cfg = GuardrailConfig(kind="regex", apply_to="output", pattern=PATTERN,
                          replacement="<R>", window_chars=32)
    second = GuardrailConfig(kind="regex", apply_to="output", pattern=SECOND,
                             replacement="<S>", window_chars=8)
    guards = (_Regex(cfg, "g"), _Regex(second, "h")) if two else (_Regex(cfg, "g"),)
    flt = OutputRegex("m", guards)
    ctx = cast(RequestCtx, SimpleNamespace(
        endpoint=endpoint, dialect=ANTHROPIC_CLIENT if endpoint == "messages" else OPENAI_CLIENT,
        status=200, error=None, guards=None))
    data = b"".join(_events(endpoint, pieces, compact))
    out = b"".join(flt.chunk(ctx, part) for part in _split(data, cuts))
    whole = RegexGuard(PATTERN, "<R>").redact("".join(pieces))[0]
    if two:
        whole = RegexGuard(SECOND, "<S>").redact(whole)[0]
    assert _read(endpoint, out) == whole
    if endpoint != "responses":
        assert out.endswith(_events(endpoint, [], compact)[-1])  # the end comes last
