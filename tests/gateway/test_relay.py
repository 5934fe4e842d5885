"""The stream relay on its own: what reaches the client, and when it fails over."""

from __future__ import annotations

import orjson

from fastgw._native import SseScanner
from fastgw.providers.dialects import ANTHROPIC_CLIENT, OPENAI_CLIENT
from fastgw.streaming.relay import StreamRelay


class Sink:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)


def event(obj: object, name: str | None = None) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(obj) + b"\n\n"


ROLE = event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
HELLO = event({"choices": [{"index": 0, "delta": {"content": "Hello"}}]})
ERROR = event({"error": {"message": "overloaded", "type": "server_error"}})
DONE = b"data: [DONE]\n\n"


def relay(resumed: bool = False) -> tuple[StreamRelay, Sink, list[str]]:
    sink = Sink()
    calls: list[str] = []
    r = StreamRelay(sink, SseScanner(drop_usage=False), resumed=resumed,
                    on_error=lambda: calls.append("error"),
                    error_event=OPENAI_CLIENT.error_event,
                    on_commit=lambda: calls.append("commit"))
    return r, sink, calls


def test_role_then_content_commits_once_and_passes_everything() -> None:
    r, sink, calls = relay()
    r.feed(ROLE)
    assert (r.committed, calls) == (False, [])
    r.feed(HELLO + DONE)
    r.feed(b"")
    assert r.committed and calls == ["commit"]
    assert sink.writes == [ROLE, HELLO + DONE]


def test_error_before_content_is_held_back_and_fails_over() -> None:
    r, sink, calls = relay()
    r.feed(ROLE)
    r.feed(ERROR)
    assert r.failed and calls == ["error"] and r.error_payload == ERROR
    r.feed(HELLO)  # whatever follows is of no use
    assert sink.writes == [ROLE]


def test_error_that_ends_the_stream_before_content_fails_over() -> None:
    failed = event({"type": "response.failed", "response": {"error": {"message": "x"}}},
                   "response.failed")
    r, sink, calls = relay()
    r.feed(failed)
    assert r.failed and not r.committed and calls == ["error"] and sink.writes == []


def test_content_and_error_in_one_chunk_commit_and_pass_in_band() -> None:
    r, sink, calls = relay()
    r.feed(HELLO + ERROR)
    assert r.committed and not r.failed and calls == ["commit"]
    assert sink.writes == [HELLO + ERROR]


def test_resumed_stream_drops_what_comes_before_its_first_content() -> None:
    r, sink, calls = relay(resumed=True)
    r.feed(ROLE)
    r.feed(HELLO)
    r.feed(DONE)
    assert sink.writes == [HELLO, DONE] and calls == ["commit"]


def test_end_without_content_commits() -> None:
    r, sink, calls = relay()
    r.feed(ROLE + DONE)
    assert r.committed and calls == ["commit"] and sink.writes == [ROLE + DONE]


# -- an Anthropic client: message_start at once, the rest held until content -----------

M_START = event({"type": "message_start", "message": {"id": "m", "usage": {}}}, "message_start")
BLOCK = event({"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}, "content_block_start")
DELTA = event({"type": "content_block_delta", "index": 0,
               "delta": {"type": "text_delta", "text": "Hi"}}, "content_block_delta")
A_ERROR = event({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
                "error")


def anthropic_relay(resumed: bool = False) -> tuple[StreamRelay, Sink, list[str]]:
    sink = Sink()
    calls: list[str] = []
    r = StreamRelay(sink, SseScanner(drop_usage=False), resumed=resumed,
                    on_error=lambda: calls.append("error"),
                    error_event=ANTHROPIC_CLIENT.error_event,
                    opening=ANTHROPIC_CLIENT.opening)
    return r, sink, calls


def test_an_anthropic_clients_block_start_waits_for_its_first_content() -> None:
    r, sink, calls = anthropic_relay()
    r.feed(M_START[:7])
    assert sink.writes == []  # not whole yet
    r.feed(M_START[7:] + BLOCK)
    assert sink.writes == [M_START] and r.opened  # the opening at once, the block held
    r.feed(A_ERROR)
    assert r.failed and calls == ["error"] and sink.writes == [M_START]


def test_a_resumed_anthropic_stream_leaves_out_only_its_message_start() -> None:
    r, sink, _ = anthropic_relay(resumed=True)
    r.feed(M_START + BLOCK)
    assert sink.writes == []
    r.feed(DELTA)
    assert sink.writes == [BLOCK + DELTA]


def test_an_anthropic_stream_in_one_read_goes_out_unchanged() -> None:
    r, sink, _ = anthropic_relay()
    r.feed(M_START + BLOCK + DELTA)
    assert b"".join(sink.writes) == M_START + BLOCK + DELTA
