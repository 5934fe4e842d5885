"""CPU per streamed event of the dialect translators against the native scanner.

Run: ``python benchmarks/bench_translate.py [--quick] [--budget-us US]``.

Two 50-event upstream streams, one event per read (how upstream reads arrive):

- Anthropic Messages SSE through ``ChatFromMessagesStream`` (an OpenAI client
  of a Claude model): the native class (``fastgw._native``, what the gateway
  uses) and its pure-Python reference (``fastgw.providers.openai_anthropic``);
- OpenAI chat SSE through ``MessagesFromChatStream`` (a ``/v1/messages`` client
  of an OpenAI model; pure Python).

Each is also fed, the same way, through the native pass-through scanner
``SseScanner(drop_usage=False)``, as the relay reads an untranslated stream.
The table gives microseconds per event (best of several repeats, a new
translator per stream) of the Python translator, the native one and the
scanner, the ratio of the translator the gateway uses to the scanner, and the
check against the per-event budget: ``--budget-us`` (default 4.5 us: three
times the ~1.5 us of CPU the gateway spends relaying one pass-through event,
README "CPU per relayed SSE event") for one event per read, and
``--native-budget-us`` (default 0.4 us) for the native translator fed the 50
events in one read (row ``whole``).
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
NativeChatFromMessagesStream = native.ChatFromMessagesStream


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
                   help="the most CPU per translated event, one per read (default 4.5 us)")
    p.add_argument("--native-budget-us", type=float, default=0.4,
                   help="the most CPU per event of the native translator fed a whole "
                        "stream in one read (default 0.4 us)")
    args = p.parse_args(argv)
    streams, repeats = (300, 3) if args.quick else (3000, 7)
    print(f"fastgw._native {native.__version__}, build {native.build_profile}, "
          f"Python {sys.version.split()[0]}")
    # (name, the Python translator, the native one or None, upstream events)
    cases: list[tuple[str, Callable[[], Any], Callable[[], Any] | None, list[bytes]]] = [
        ("anthropic -> openai chat",
         lambda: ChatFromMessagesStream(include_usage=True, created=1_730_000_000),
         lambda: NativeChatFromMessagesStream(include_usage=True, created=1_730_000_000),
         _anthropic_50()),
        ("openai chat -> anthropic",
         lambda: MessagesFromChatStream(include_usage=True, created=1_730_000_000),
         None, _openai_50()),
    ]
    print(f"{'stream (50 events)':26} {'read':>5} {'python':>9} {'native':>9} {'scanner':>9} "
          f"{'used/scanner':>12}  budget")
    failed = 0
    for name, make, make_native, events in cases:
        for read, reads in (("event", events), ("whole", [b"".join(events)])):
            py = per_event_us(make, reads, streams, len(events), repeats)
            nt = (per_event_us(make_native, reads, streams * 4, len(events), repeats)
                  if make_native is not None else None)
            scan = per_event_us(lambda: SseScanner(drop_usage=False), reads, streams * 4,
                                len(events), repeats)
            used = py if nt is None else nt  # what the gateway runs
            budget = args.budget_us if read == "event" else (
                args.native_budget_us if nt is not None else None)
            ok = budget is None or used <= budget
            failed += not ok
            verdict = "-" if budget is None else f"<= {budget} us {'ok' if ok else 'MISSED'}"
            native_col = "-" if nt is None else f"{nt:6.3f} us"
            print(f"{name:26} {read:>5} {py:6.3f} us {native_col:>9} {scan:6.3f} us "
                  f"{used / scan:11.1f}x  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
