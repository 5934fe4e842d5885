"""A model's guardrails, as filters of its route (after its transform, before its
cache), in the order configured.

::

    request    input: the text of the conversation in the client's dialect (chat
               messages and their text parts, a completion's prompt, an
               embedding's input, Responses input and instructions, Anthropic
               messages and system) is checked by each guardrail: ``deny`` is a
               400 ``guardrail_blocked`` before the limits are reserved and
               before anything goes upstream; ``redact`` rewrites the body
    response   output: a whole answer's text, in the client's dialect (deny: a
               400 ``guardrail_blocked`` instead of the answer)
    chunk      output: a stream's text deltas through each regex guardrail's
               :class:`~fastgw._native.RedactWindow`, which holds back only text
               that may still begin a match (at most ``window_chars``); what it
               held goes out before the event that ends the text; a deny ends the
               stream with a typed error event in the client's dialect

Consecutive regex guardrails make one filter per direction (:class:`InputRegex`,
:class:`OutputRegex`: the texts are read once for all of them); a webhook makes
:class:`InputWebhook` / :class:`OutputWebhook` filters, which await (the route
takes the task path). A webhook gets
``{"stage": "input"|"output", "model", "endpoint", "messages": [{"role",
"content"}...]}`` (one message per text of the conversation or the answer) and
answers ``{"action": "allow"|"deny"|"redact", "messages"?, "reason"?}``: with
``redact``, ``messages[i].content`` replaces the i-th text. Streamed answers go
to regex guardrails only.

``fastgw_guardrail_total{model,guardrail,action}`` counts what guardrails did:
``redact``, ``deny``, a webhook's ``allow``, and ``error`` (a webhook that
failed or timed out; ``on_error`` decided).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from fastgw._native import RedactWindow, RegexGuard
from fastgw.config import GuardrailConfig, TimeoutsConfig
from fastgw.errors import GatewayError, GuardrailBlocked
from fastgw.metrics import GUARDRAIL, batched
from fastgw.pipeline.filters import Filter
from fastgw.upstream.client import Endpoint, UpstreamClient, exchange

if TYPE_CHECKING:
    from fastgw.pipeline.ctx import RequestCtx

log = logging.getLogger("fastgw.guardrails")

INPUT, OUTPUT = "input", "output"

# A text of a request or an answer: where it is (container, key) and whose it is.
Slot = tuple[Any, Any, str]


def guard_name(cfg: GuardrailConfig, index: int) -> str:
    """The metrics' label of the ``index``-th guardrail of a model."""
    return cfg.name or f"{index}-{cfg.kind}"


def _count(model: str, guard: str, action: str) -> None:
    batched(GUARDRAIL, model, guard, action).value += 1


# -- the texts of a request, and of an answer, per client dialect ----------------------------


def _parts(content: Any, role: str, out: list[Slot]) -> None:
    """The texts of a message's content: a string, or parts with ``text`` (and
    Anthropic tool results, whose content is a string or parts again)."""
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if isinstance(text, str):
            out.append((part, "text", role))
            continue
        inner = part.get("content")
        if isinstance(inner, str):
            out.append((part, "content", role))
        elif isinstance(inner, list):
            _parts(inner, role, out)


def _message_list(messages: Any, out: list[Slot]) -> None:
    if not isinstance(messages, list):
        return
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        role = role if isinstance(role, str) else "user"
        content = msg.get("content")
        if isinstance(content, str):
            out.append((msg, "content", role))
        else:
            _parts(content, role, out)


def _strings(doc: dict[str, Any], key: str, role: str, out: list[Slot]) -> None:
    """``doc[key]`` when it is a string, or the strings of its list."""
    value = doc.get(key)
    if isinstance(value, str):
        out.append((doc, key, role))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, str):
                out.append((value, i, role))


def input_slots(doc: dict[str, Any], endpoint: str) -> list[Slot]:
    """The texts of the conversation ``doc`` (a request to ``endpoint``)."""
    out: list[Slot] = []
    if endpoint == "chat":
        _message_list(doc.get("messages"), out)
    elif endpoint == "messages":
        system = doc.get("system")
        if isinstance(system, str):
            out.append((doc, "system", "system"))
        else:
            _parts(system, "system", out)
        _message_list(doc.get("messages"), out)
    elif endpoint == "responses":
        if isinstance(doc.get("instructions"), str):
            out.append((doc, "instructions", "system"))
        items = doc.get("input")
        if isinstance(items, str):
            out.append((doc, "input", "user"))
        else:
            _message_list(items, out)
    elif endpoint == "completions":
        _strings(doc, "prompt", "user", out)
    elif endpoint == "embeddings":
        _strings(doc, "input", "user", out)
    return out


def output_slots(doc: Any, endpoint: str) -> list[Slot]:
    """The texts of a whole answer ``doc`` in ``endpoint``'s dialect."""
    out: list[Slot] = []
    if not isinstance(doc, dict):
        return out
    if endpoint == "chat":
        for choice in doc.get("choices") or ():
            msg = choice.get("message") if isinstance(choice, dict) else None
            if isinstance(msg, dict):
                if isinstance(msg.get("content"), str):
                    out.append((msg, "content", "assistant"))
                else:
                    _parts(msg.get("content"), "assistant", out)
    elif endpoint == "completions":
        for choice in doc.get("choices") or ():
            if isinstance(choice, dict) and isinstance(choice.get("text"), str):
                out.append((choice, "text", "assistant"))
    elif endpoint == "messages":
        _parts(doc.get("content"), "assistant", out)
    elif endpoint == "responses":
        for item in doc.get("output") or ():
            if isinstance(item, dict):
                _parts(item.get("content"), "assistant", out)
        if isinstance(doc.get("output_text"), str):
            out.append((doc, "output_text", "assistant"))
    return out


# -- regex guardrails ---------------------------------------------------------------------


class _Regex:
    """One regex guardrail, compiled once."""

    __slots__ = ("apply_to", "deny", "guard", "name", "window")

    def __init__(self, cfg: GuardrailConfig, name: str) -> None:
        assert cfg.pattern is not None
        self.guard = RegexGuard(cfg.pattern, cfg.replacement)
        self.deny = cfg.action == "deny"
        self.apply_to = cfg.apply_to
        self.name = name
        self.window = cfg.window_chars


def _prefilter(guards: tuple[_Regex, ...]) -> bool:
    """Whether a JSON document without escapes can be scanned whole first: its
    strings' texts are then in it as they are, so a text with a match makes a
    match of the document, unless a pattern is anchored to a text's ends."""
    return not any(c in g.guard.pattern for g in guards for c in ("^", "$", "\\A", "\\z"))


def _clean(guards: tuple[_Regex, ...], body: bytes) -> bool:
    """A body nothing of which any of ``guards`` matches (scanned whole: no escapes
    in it, see :func:`_prefilter`)."""
    if body.find(b"\\") >= 0:  # (find: "in" with a bytes argument costs an exception)
        return False
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return False
    return not any(g.guard.matches(text) for g in guards)


class InputRegex(Filter):
    """Consecutive regex guardrails of one model on its requests."""

    def __init__(self, model: str, guards: tuple[_Regex, ...]) -> None:
        self.model = model
        self.guards = guards
        self.prefilter = _prefilter(guards)

    def request(self, ctx: RequestCtx) -> None:
        if self.prefilter and _clean(self.guards, ctx.body):
            return
        slots = input_slots(ctx.doc, ctx.endpoint)
        if not slots:
            return
        changed = False
        for g in self.guards:
            guard = g.guard
            hits = 0
            for container, key, _ in slots:
                text, n = guard.redact(container[key])
                if n:
                    hits += n
                    if g.deny:
                        break
                    container[key] = text
            if hits:
                if g.deny:
                    _count(self.model, g.name, "deny")
                    raise GuardrailBlocked(f"the request was blocked by the guardrail "
                                           f"{g.name!r} of model {self.model!r}")
                _count(self.model, g.name, "redact")
                changed = True
        if changed:
            ctx.body = orjson.dumps(ctx.doc)


class OutputRegex(Filter):
    """Consecutive regex guardrails of one model on its answers, whole or streamed."""

    def __init__(self, model: str, guards: tuple[_Regex, ...]) -> None:
        self.model = model
        self.guards = guards
        self.prefilter = _prefilter(guards)

    def response(self, ctx: RequestCtx, status: int, body: bytes) -> bytes:
        if self.prefilter and _clean(self.guards, body):
            return body
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        slots = output_slots(doc, ctx.endpoint)
        changed = False
        for g in self.guards:
            hits = 0
            for container, key, _ in slots:
                text, n = g.guard.redact(container[key])
                if n:
                    hits += n
                    container[key] = text
            if hits:
                if g.deny:
                    _count(self.model, g.name, "deny")
                    raise GuardrailBlocked(f"the answer was blocked by the guardrail "
                                           f"{g.name!r} of model {self.model!r}")
                _count(self.model, g.name, "redact")
                changed = True
        return orjson.dumps(doc) if changed else body

    # -- streams --------------------------------------------------------------------------

    def chunk(self, ctx: RequestCtx, data: bytes) -> bytes:
        guards = ctx.guards
        if guards is None:
            guards = ctx.guards = {}
        state: StreamGuard | None = guards.get(self)
        if state is None:
            state = guards[self] = StreamGuard(self, ctx)
        return state.feed(data)


# Per client endpoint: which events carry text deltas (``mark``), and the fast way
# to read them (``_FAST``: the text's JSON string follows ``anchor`` in an event
# written compactly, as providers write them, with every marker in it: the first
# text of the answer); any other event with ``mark`` is parsed as JSON.
_DELTA_MARK = {"chat": b'"content"', "completions": b'"text"', "messages": b"text_delta",
               "responses": b"output_text.delta"}
_FAST: dict[str, tuple[bytes, tuple[bytes, ...], Any]] = {
    "chat": (b'"delta":{"content":"', (b'"finish_reason":null', b'"index":0'), 0),
    "completions": (b'"text":"', (b'"finish_reason":null', b'"index":0'), 0),
    "messages": (b'"delta":{"type":"text_delta","text":"', (b'"index":0,',), 0),
    "responses": (b'"delta":"', (b'"type":"response.output_text.delta"', b'"output_index":0',
                                 b'"content_index":0'), (0, 0)),
}
_SENTINEL = "\x00fastgw-text\x00"
_SENTINEL_JSON = orjson.dumps(_SENTINEL)


def _string_end(event: bytes, pos: int) -> int:
    """The index of the quote that ends the JSON string whose text starts at ``pos``
    (-1: none)."""
    k = event.find(b'"', pos)
    while k > 0 and event[k - 1] == 92:  # a backslash before it: escaped, or an escape's
        j = k - 1
        while event[j] == 92:
            j -= 1
        if (k - 1 - j) % 2 == 0:
            break
        k = event.find(b'"', k + 1)
    return k


class StreamGuard:
    """One stream's output guardrails: SSE events in, events with their text
    redacted out; each text (a choice, a content block, an output part) has a
    window per guardrail."""

    __slots__ = ("ctx", "denied", "endpoint", "fast", "filter", "guards", "mark", "one",
                 "pending", "windows")

    def __init__(self, flt: OutputRegex, ctx: RequestCtx) -> None:
        self.filter = flt
        self.guards = flt.guards
        self.ctx = ctx
        self.endpoint = ctx.endpoint
        self.mark = _DELTA_MARK.get(ctx.endpoint, b'"text"')
        self.fast = _FAST.get(ctx.endpoint)
        self.one = flt.guards[0] if len(flt.guards) == 1 else None  # (the usual case)
        self.pending = b""  # an event not complete yet
        # Per text, a window per guardrail; the first remembers the text's last
        # delta event, the form of what is flushed.
        self.windows: dict[Any, list[RedactWindow]] = {}
        self.denied = False

    def feed(self, data: bytes) -> bytes:
        if self.denied:
            return b""
        if data.find(b"\r") >= 0:
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if self.pending:
            data = self.pending + data
        end = data.rfind(b"\n\n")
        if end < 0:
            self.pending = data
            return b""
        self.pending = data[end + 2:]
        body = data[:end + 2]  # whole events, each with its blank line
        one, fast = self.one, self.fast
        out: list[bytes] = []
        if one is None or fast is None:
            for event in body[:-2].split(b"\n\n"):
                if event:
                    edited = self.event(event)
                    if edited:
                        out.append(edited + b"\n\n")
                    if self.stopped():
                        break
            return b"".join(out)
        # One guardrail (the usual case): runs of text deltas of the fast form are
        # read natively; an event of another kind is read here.
        anchor, markers, key = fast
        pos, n = 0, len(body)
        while pos < n:
            ws = self.windows.get(key)
            w = (ws if ws is not None else self.open(key))[0]
            got, used = w.feed_events(body[pos:] if pos else body, anchor, markers, one.deny)
            if got:
                out.append(got)
            pos += used
            if one.deny and w.matches:
                out.append(self.deny(one.name) + b"\n\n")
                break
            if pos >= n:
                break
            stop = body.find(b"\n\n", pos)
            edited = self.event(body[pos:stop])
            pos = stop + 2
            if edited:
                out.append(edited + b"\n\n")
            if self.stopped():
                break
        return b"".join(out)

    def stopped(self) -> bool:
        """A guardrail denied the answer: nothing more goes out."""
        return self.denied

    def open(self, key: Any) -> list[RedactWindow]:
        windows = self.windows[key] = [g.guard.window(g.window) for g in self.guards]
        return windows

    def event(self, event: bytes) -> bytes:
        """One event (without its blank line) as it goes out (events without their
        last blank line; b"": none)."""
        fast = self.fast
        if fast is not None:
            anchor, markers, key = fast
            i = event.find(anchor)
            if i >= 0:
                for m in markers:
                    if event.find(m) < 0:
                        break
                else:
                    start = i + len(anchor)
                    stop = _string_end(event, start)
                    if stop > 0 and event.count(b'"index":') <= 1:
                        raw = event[start:stop]
                        text = raw.decode() if raw.find(b"\\") < 0 else \
                            orjson.loads(event[start - 1:stop + 1])
                        return self.text(key, event, start - 1, stop + 1, text)
        if event.find(self.mark) >= 0:
            edited = self.delta(event)
            if edited is not None:
                return edited
        flushed = b""
        if self.windows and not event.startswith(b":"):
            flushed = self.flush_before()
            if self.stopped():
                return flushed
        if self.endpoint == "responses" and event.find(b'"text"') >= 0:
            event = self.whole_texts(event)
            if self.stopped():
                return flushed + event if not flushed else flushed + b"\n\n" + event
        return flushed + b"\n\n" + event if flushed else event

    def text(self, key: Any, event: bytes, start: int, end: int, text: str) -> bytes:
        """A text delta (its JSON string at ``event[start:end]``) through the windows."""
        windows = self.windows.get(key)
        if windows is None:
            windows = self.open(key)
        windows[0].set_template(event, start, end)
        out = text
        for g, w in zip(self.guards, windows, strict=True):
            before = w.matches
            out = w.push(out)
            if g.deny and w.matches != before:
                return self.deny(g.name)
        if out == text:
            return event
        if not out:
            return b""
        return event[:start] + orjson.dumps(out) + event[end:]

    def delta(self, event: bytes) -> bytes | None:
        """A text delta written otherwise (parsed); None: not a text delta after all."""
        head, sep, payload = event.partition(b"data:")
        if not sep:
            return None
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        found = _delta_text(doc, self.endpoint)
        if found is None:
            return None
        key, container, field, text = found
        choice = _finishing(doc) if self.endpoint in ("chat", "completions") else None
        if choice is not None:  # the text, then what is held, then the end without it
            reason = choice["finish_reason"]
            choice["finish_reason"] = None
            out = self.delta_event(head, doc, key, container, field, text)
            if self.stopped():
                return out
            choice["finish_reason"] = reason
            container[field] = ""
            parts = [out, self.flush_before()]
            if self.stopped():
                return b"\n\n".join(p for p in parts if p)
            parts.append(head + b"data: " + orjson.dumps(doc))
            return b"\n\n".join(p for p in parts if p)
        return self.delta_event(head, doc, key, container, field, text)

    def delta_event(self, head: bytes, doc: Any, key: Any, container: Any, field: Any,
                    text: str) -> bytes:
        container[field] = _SENTINEL
        event = head + b"data: " + orjson.dumps(doc)
        start = event.find(_SENTINEL_JSON)
        literal = orjson.dumps(text)
        return self.text(key, event[:start] + literal + event[start + len(_SENTINEL_JSON):],
                         start, start + len(literal), text)

    def whole_texts(self, event: bytes) -> bytes:
        """A Responses event that repeats the whole text (``output_text.done``, a
        part's or an item's end, ``response.completed``): redacted whole."""
        head, _, payload = event.partition(b"data:")
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return event
        slots: list[Slot] = []
        _texts_in(doc, slots)
        changed = False
        for g in self.guards:
            for container, k, _ in slots:
                text, n = g.guard.redact(container[k])
                if n:
                    if g.deny:
                        return self.deny(g.name)
                    container[k] = text
                    changed = True
        return head + b"data: " + orjson.dumps(doc) if changed else event

    def flush_before(self) -> bytes:
        """What the windows hold, as delta events (without the last blank line),
        before an event that may end the texts (any event that is not a text
        delta: a finish, a block's stop, the end of the stream). A text's
        redactions are counted here, once per guardrail."""
        out: list[bytes] = []
        for windows in self.windows.values():
            text = ""
            for g, w in zip(self.guards, windows, strict=True):
                text = w.push(text) + w.finish()
                if w.matches:
                    if g.deny:
                        return self.deny(g.name)
                    _count(self.filter.model, g.name, "redact")
            if text:
                out.append(windows[0].render(text))
        self.windows.clear()
        return b"\n\n".join(out)

    def deny(self, name: str) -> bytes:
        """A deny: the stream ends with a typed error event (nothing more goes out)."""
        self.denied = True
        model = self.filter.model
        _count(model, name, "deny")
        exc = GuardrailBlocked(f"the answer was blocked by the guardrail {name!r} of "
                               f"model {model!r}")
        ctx = self.ctx
        ctx.status = exc.status
        ctx.error = exc.message
        return ctx.dialect.error_event(exc)[:-2]  # (its blank line is added by feed)


def _delta_text(doc: Any, endpoint: str) -> tuple[Any, Any, Any, str] | None:
    """A stream event's text delta: (which text, its container, field, the text)."""
    if not isinstance(doc, dict):
        return None
    if endpoint == "chat" or endpoint == "completions":
        choices = doc.get("choices")
        if not isinstance(choices, list) or len(choices) != 1:
            return None
        choice = choices[0]
        if not isinstance(choice, dict):
            return None
        if endpoint == "chat":
            delta = choice.get("delta")
            if not isinstance(delta, dict) or not isinstance(delta.get("content"), str):
                return None
            return choice.get("index", 0), delta, "content", delta["content"]
        text = choice.get("text")
        if not isinstance(text, str):
            return None
        return choice.get("index", 0), choice, "text", text
    if endpoint == "messages":
        delta = doc.get("delta")
        if doc.get("type") != "content_block_delta" or not isinstance(delta, dict) \
                or delta.get("type") != "text_delta" or not isinstance(delta.get("text"), str):
            return None
        return doc.get("index", 0), delta, "text", delta["text"]
    if endpoint == "responses":
        if doc.get("type") != "response.output_text.delta" \
                or not isinstance(doc.get("delta"), str):
            return None
        return (doc.get("output_index", 0), doc.get("content_index", 0)), doc, "delta", \
            doc["delta"]
    return None


def _finishing(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The choice of a chat or completions event that also ends its text."""
    choices = doc.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    return choice if isinstance(choice, dict) and choice.get("finish_reason") else None


def _texts_in(node: Any, out: list[Slot]) -> None:
    """Every ``text`` string of a Responses event (its done events repeat the text)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "text" and isinstance(v, str):
                out.append((node, k, "assistant"))
            elif isinstance(v, dict | list):
                _texts_in(v, out)
    elif isinstance(node, list):
        for v in node:
            _texts_in(v, out)


# -- webhooks -----------------------------------------------------------------------------


class _Webhook:
    """One webhook guardrail: where it is and how to ask it."""

    def __init__(self, model: str, cfg: GuardrailConfig, name: str,
                 client: UpstreamClient) -> None:
        assert cfg.url is not None
        self.model = model
        self.name = name
        self.client = client
        self.on_error_deny = cfg.on_error == "deny"
        self.timeout_s = cfg.timeout_ms / 1000.0
        self.endpoint = ep = Endpoint.parse(cfg.url)
        url = urlsplit(cfg.url)
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.head = (b"POST " + target.encode("latin-1") + b" HTTP/1.1\r\nhost: "
                     + ep.host_header + b"\r\ncontent-type: application/json\r\n")
        t = self.timeout_s
        self.timeouts = TimeoutsConfig(connect_s=t, first_byte_s=t, idle_s=t, total_s=t)
        self.ssl = ssl.create_default_context() if url.scheme == "https" else None

    async def ask(self, ctx: RequestCtx, stage: str, slots: list[Slot]) -> bool:
        """The webhook's verdict on ``slots`` (redacted in place): True when
        something changed. Raises GuardrailBlocked on a deny."""
        payload = orjson.dumps({
            "stage": stage, "model": self.model, "endpoint": ctx.endpoint,
            "request_id": ctx.request_id.decode("latin-1"),
            "messages": [{"role": role, "content": c[k]} for c, k, role in slots]})
        try:
            verdict = await asyncio.wait_for(self._post(payload), self.timeout_s)
            action = verdict.get("action") if isinstance(verdict, dict) else None
            if action not in ("allow", "deny", "redact"):
                raise ValueError(f"answered {str(action)[:40]!r} as its action")
        except (GatewayError, ValueError, TimeoutError) as exc:
            _count(self.model, self.name, "error")
            log.warning("guardrail %r of model %r failed: %s", self.name, self.model,
                        getattr(exc, "message", None) or str(exc) or type(exc).__name__)
            if self.on_error_deny:
                raise GuardrailBlocked(
                    f"the guardrail {self.name!r} of model {self.model!r} could not be "
                    "consulted and refuses by default (on_error: deny)") from None
            return False
        _count(self.model, self.name, action)
        if action == "deny":
            reason = verdict.get("reason")
            raise GuardrailBlocked(
                f"the {'request' if stage == INPUT else 'answer'} was blocked by the "
                f"guardrail {self.name!r} of model {self.model!r}"
                + (f": {reason[:300]}" if isinstance(reason, str) and reason else ""))
        if action == "redact":
            return _apply(slots, verdict.get("messages"))
        return False

    async def _post(self, payload: bytes) -> Any:
        pool = self.client.pool(self.endpoint, max_connections=64, idle_s=60.0,
                                connect_s=self.timeout_s, ssl_context=self.ssl)
        request = self.head + b"content-length: %d\r\n\r\n" % len(payload) + payload
        conn = await exchange(pool, request, self.timeouts, whole=True)
        status, body = conn.status, conn.body()
        pool.release(conn, reuse=True)
        if not 200 <= status < 300:
            raise ValueError(f"answered status {status}")
        return orjson.loads(body)  # (orjson's error is a ValueError)


class InputWebhook(Filter):
    """A webhook guardrail on requests: the route's requests take the task path."""

    awaits = True

    def __init__(self, hook: _Webhook) -> None:
        self.hook = hook

    async def request(self, ctx: RequestCtx) -> None:
        slots = input_slots(ctx.doc, ctx.endpoint)
        if slots and await self.hook.ask(ctx, INPUT, slots):
            ctx.body = orjson.dumps(ctx.doc)


class OutputWebhook(Filter):
    """A webhook guardrail on whole answers (awaited before the answer is sent);
    streamed answers go to regex guardrails only."""

    awaits = True  # the task path: the direct path never awaits

    def __init__(self, hook: _Webhook) -> None:
        self.hook = hook

    async def response_async(self, ctx: RequestCtx, status: int, body: bytes) -> bytes:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
        slots = output_slots(doc, ctx.endpoint)
        if slots and await self.hook.ask(ctx, OUTPUT, slots):
            return orjson.dumps(doc)
        return body


def _apply(slots: list[Slot], messages: Any) -> bool:
    """A webhook's redacted ``messages`` written over the texts they stand for."""
    if not isinstance(messages, list) or len(messages) != len(slots):
        raise GuardrailBlocked("a guardrail answered redact without one message per text "
                               "it was sent")
    changed = False
    for (container, key, _), msg in zip(slots, messages, strict=True):
        text = msg.get("content") if isinstance(msg, dict) else msg
        if isinstance(text, str) and text != container[key]:
            container[key] = text
            changed = True
    return changed


def guardrail_filters(model: str, guardrails: tuple[GuardrailConfig, ...],
                      client: UpstreamClient) -> list[Filter]:
    """A model's guardrails as filters, in order: consecutive regex ones together
    (one filter for the requests, one for the answers)."""
    out: list[Filter] = []
    run: list[_Regex] = []

    def close_run() -> None:
        inputs = tuple(g for g in run if g.apply_to != OUTPUT)
        outputs = tuple(g for g in run if g.apply_to != INPUT)
        if inputs:
            out.append(InputRegex(model, inputs))
        if outputs:
            out.append(OutputRegex(model, outputs))
        run.clear()

    for i, cfg in enumerate(guardrails):
        name = guard_name(cfg, i)
        if cfg.kind == "regex":
            run.append(_Regex(cfg, name))
            continue
        close_run()
        hook = _Webhook(model, cfg, name, client)
        if cfg.apply_to != OUTPUT:
            out.append(InputWebhook(hook))
        if cfg.apply_to != INPUT:
            out.append(OutputWebhook(hook))
    close_run()
    return out
