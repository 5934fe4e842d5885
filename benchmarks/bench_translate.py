"""CPU per streamed event of the dialect translators against the native scanner.

Run: ``python benchmarks/bench_translate.py [--quick] [--budget-us US]``.

Two 50-event upstream streams, one event per read (how upstream reads arrive):

- Anthropic Messages SSE through ``ChatFromMessagesStream`` (an OpenAI client
  of a Claude model);
- OpenAI chat SSE through ``MessagesFromChatStream`` (a ``/v1/messages`` client
  of an OpenAI model).

Each is also fed, the same way, through the native pass-through scanner
``SseScanner(drop_usage=False)``, as the relay reads an untranslated stream.
The table gives microseconds per event (best of several repeats, a new
translator per stream), the ratio to the scanner, and the check against the
per-event budget: ``--budget-us`` (default 4.5 us: three times the ~1.5 us of
CPU the gateway spends relaying one pass-through event, README "CPU per
relayed SSE event"). A row ``whole`` feeds the 50 events in one read.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from fastgw import _native as native
from fastgw.providers.anthropic_openai import MessagesFromChatStream
from fastgw.providers.openai_anthropic import ChatFromMessagesStream

SseScanner = native.SseScanner


def _anthropic_50() -> list[bytes]:
    """A 50-event Anthropic stream: start, a text block of 45 deltas, the end."""

    def ev(type_: str, **fields: Any) -> bytes:
        return (b"event: " + type_.encode() + b"\ndata: "
                + orjson.dumps({"type": type_, **fields}) + b"\n\n")

    events = [ev("message_start", message={
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant",
        "model": "claude-sonnet-4-5-20250929", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": {"input_tokens": 472, "cache_creation_input_tokens": 0,
                                         "cache_read_input_tokens": 0, "output_tokens": 2}})]
    events.append(ev("content_block_start", index=0, content_block={"type": "text",
                                                                     "text": ""}))
    events += [ev("content_block_delta", index=0,
                  delta={"type": "text_delta", "text": f" word{i}"}) for i in range(45)]
    events.append(ev("content_block_stop", index=0))
    events.append(ev("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None},
                     usage={"output_tokens": 46}))
    events.append(ev("message_stop"))
    assert len(events) == 50
    return events


def _openai_50() -> list[bytes]:
    """A 50-event OpenAI chat stream with usage (as in bench_native.py)."""

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {"id": "chatcmpl-AbC123", "object": "chat.completion.chunk",
                "created": 1_730_000_000, "model": "gpt-4o-mini-2024-07-18",
                "system_fingerprint": "fp_0ba0d124f1",
                "choices": [{"index": 0, "delta": delta, "logprobs": None,
                             "finish_reason": finish}], "usage": None}
        return b"data: " + orjson.dumps(body) + b"\n\n"

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": f" word{i}"}) for i in range(46)]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 20, "completion_tokens": 46, "total_tokens": 66}
    events.append(b"data: " + orjson.dumps({"id": "chatcmpl-AbC123", "choices": [],
                                            "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    assert len(events) == 50
    return events


def per_event_us(make: Callable[[], Any], reads: list[bytes], streams: int,
                 events: int, repeats: int) -> float:
    """Best-of-``repeats`` CPU per event of feeding ``reads`` to a new ``make()``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time_ns()
        for _ in range(streams):
            s = make()
            feed = s.feed
            for r in reads:
                feed(r)
            s.finish()
        best = min(best, (time.process_time_ns() - start) / streams / events / 1000.0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer streams and repeats")
    p.add_argument("--budget-us", type=float, default=4.5,
                   help="the most CPU per translated event (default 4.5 us)")
    args = p.parse_args(argv)
    streams, repeats = (300, 3) if args.quick else (3000, 7)
    print(f"fastgw._native {native.__version__}, build {native.build_profile}, "
          f"Python {sys.version.split()[0]}")
    cases: list[tuple[str, Callable[[], Any], list[bytes]]] = [
        ("anthropic -> openai chat", lambda: ChatFromMessagesStream(
            include_usage=True, created=1_730_000_000), _anthropic_50()),
        ("openai chat -> anthropic", lambda: MessagesFromChatStream(
            include_usage=True, created=1_730_000_000), _openai_50()),
    ]
    print(f"{'stream (50 events)':32} {'read':>6} {'translated':>11} {'native':>8} "
          f"{'ratio':>6}  budget")
    failed = 0
    for name, make, events in cases:
        for read, reads in (("event", events), ("whole", [b"".join(events)])):
            tr = per_event_us(make, reads, streams, len(events), repeats)
            nat = per_event_us(lambda: SseScanner(drop_usage=False), reads, streams * 4,
                               len(events), repeats)
            ok = tr <= args.budget_us
            failed += read == "event" and not ok
            print(f"{name:32} {read:>6} {tr:8.3f} us {nat:5.3f} us {tr / nat:5.1f}x  "
                  f"<= {args.budget_us} us {'ok' if ok else 'MISSED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
