"""Test helpers for the stream translators: feed bytes cut anywhere, read the
output back with a parser of its own, and check it with the client SDKs' types.

Nothing here uses ``fastgw.providers.sse_events``: the output is read back by
a separate, deliberately plain parser.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pydantic
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import RawMessageStreamEvent
from openai.types.chat import ChatCompletionChunk

from fastgw._native import SseScanner
from fastgw.types import StreamScanner

COMMIT = SseScanner.COMMIT
DONE = SseScanner.DONE
ERROR = SseScanner.ERROR
USAGE = SseScanner.USAGE

_EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)


def sse(events: Sequence[tuple[str | None, object]], nl: str = "\n") -> bytes:
    """Frame ``(event type, data)`` pairs (data: an object, encoded compactly, or a
    raw string) with ``nl`` line ends."""
    out = []
    for event, data in events:
        text = data if isinstance(data, str) else orjson.dumps(data).decode()
        lines = ([f"event: {event}"] if event is not None else []) + [f"data: {text}"]
        out.append(nl.join(lines) + nl + nl)
    return "".join(out).encode()


def feed_cut(tr: StreamScanner, stream: bytes,
             cuts: Sequence[int] = ()) -> tuple[bytes, list[tuple[bytes, int]], bytes]:
    """Feed ``stream`` cut at ``cuts``: (everything sent, each call's (output, flags),
    what ``finish`` added)."""
    steps = []
    prev = 0
    for c in [*sorted(set(cuts)), len(stream)]:
        steps.append(tr.feed(stream[prev:c]))
        prev = c
    tail = tr.finish()
    return b"".join(o for o, _ in steps) + tail, steps, tail


def union(steps: Sequence[tuple[bytes, int]]) -> int:
    flags = 0
    for _, f in steps:
        flags |= f
    return flags


def read_sse(data: bytes) -> list[tuple[str | None, str]]:
    """``(event, data)`` of each event of a translator's output (which always ends its
    lines with ``\\n``)."""
    assert data.endswith(b"\n\n") or not data, data[-80:]
    out = []
    for block in data.decode().split("\n\n")[:-1]:
        event = None
        datas = []
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name == "event":
                event = value
            else:
                assert name == "data", line
                datas.append(value)
        out.append((event, "\n".join(datas)))
    return out


# ---------------------------------------------------------------- OpenAI output


def openai_chunks(data: bytes) -> tuple[list[ChatCompletionChunk], bool, list[dict[str, Any]]]:
    """The chunks of an OpenAI stream, validated by the openai SDK's type; whether it
    ended with ``[DONE]``; the error events' documents."""
    chunks: list[ChatCompletionChunk] = []
    errors = []
    done = False
    for event, text in read_sse(data):
        assert not done, "nothing may follow [DONE]"
        if text == "[DONE]":
            done = True
            continue
        doc = orjson.loads(text)
        if event == "error":
            assert set(doc) == {"error"} and set(doc["error"]) == {"message", "type", "param",
                                                                  "code"}
            errors.append(doc)
            continue
        assert event is None
        chunks.append(ChatCompletionChunk.model_validate(doc, strict=False))
    return chunks, done, errors


def reassemble_openai(chunks: Sequence[ChatCompletionChunk]) -> dict[str, Any]:
    """What a client makes of an OpenAI stream: the whole message, as a
    ``chat.completion`` choice would hold it, plus the usage chunk."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    usage = None
    role = None
    for ch in chunks:
        if ch.usage is not None:
            assert ch.choices == []
            usage = ch.usage.model_dump(exclude_none=True)
        for choice in ch.choices:
            d = choice.delta
            if d.role is not None:
                role = d.role
            if d.content:
                content.append(d.content)
            extra = d.model_extra or {}
            if extra.get("reasoning_content"):
                reasoning.append(extra["reasoning_content"])
            for tc in d.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id is not None:
                    slot["id"] = tc.id
                if tc.function is not None:
                    if tc.function.name is not None:
                        slot["name"] = tc.function.name
                    slot["arguments"] += tc.function.arguments or ""
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    assert list(calls) == list(range(len(calls))), "tool calls numbered 0, 1, ..."
    msg: dict[str, Any] = {"role": role, "content": "".join(content) if content or not calls
                           else None}
    if calls:
        msg["tool_calls"] = [{"id": c["id"], "type": "function",
                              "function": {"name": c["name"], "arguments": c["arguments"]}}
                             for c in calls.values()]
    if reasoning:
        msg["reasoning_content"] = "".join(reasoning)
    return {"message": msg, "finish_reason": finish, "usage": usage}


# ---------------------------------------------------------------- Anthropic output


def anthropic_events(data: bytes) -> tuple[list[Any], list[dict[str, Any]]]:
    """The events of an Anthropic stream validated by the anthropic SDK's types (each
    ``event:`` line naming its data's type), and the error events' documents."""
    events = []
    errors = []
    for event, text in read_sse(data):
        doc = orjson.loads(text)
        assert event == doc["type"], (event, doc)
        if event == "error":
            assert set(doc) == {"type", "error"} and set(doc["error"]) == {"type", "message"}
            errors.append(doc)
            continue
        events.append(_EVENT.validate_python(doc))
    return events, errors


def accumulate_anthropic(events: Sequence[Any]) -> dict[str, Any]:
    """The final message the anthropic SDK's stream accumulator builds."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    open_blocks: set[int] = set()
    for ev in events:
        if ev.type == "content_block_start":
            assert ev.index not in open_blocks and not open_blocks, "one block at a time"
            open_blocks.add(ev.index)
        elif ev.type == "content_block_delta":
            assert ev.index in open_blocks, "deltas go to the open block"
        elif ev.type == "content_block_stop":
            open_blocks.remove(ev.index)
        elif ev.type == "message_delta":
            assert not open_blocks, "blocks closed before message_delta"
        snapshot = accumulate_event(event=ev, current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    final = dict(snapshot.to_dict())
    if final.get("stop_details", 0) is None:
        del final["stop_details"]  # set by the accumulator from every message_delta
    return final
