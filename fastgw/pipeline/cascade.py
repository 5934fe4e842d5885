"""Cascades: a model made of steps (cheap first), each used when its rules hold.

A cascade model has no targets of its own. Its :class:`CascadeFilter` (the
route's last ``request`` hook, after its own filters') picks the step: the first whose ``accept_if``
rules all hold, the last step otherwise, and points the request at that step's
route (``ctx.route``), as a variant would; from there the request is the step
model's (its targets, retries, fallbacks, filters; ``x-fastgw-model`` and the
access log name it). The rules::

    max_prompt_tokens   the prompt's estimate as limits make it (body bytes / 4)
    header              {NAME: glob}: each header present and matching
    metadata            {KEY: glob}: the body's metadata (or fastgw.metadata)
    judge               a model asked, through the gateway (pipeline/internal.py),
                        whether the step fits: its answer matches ``accept``;
                        on an error or past timeout_ms, ``on_error`` decides

Request-side rules are decided at once; a judge makes the request wait (a task)
only when the rules before it let the judged step be chosen. A step with
``escalate_on`` re-asks the next step when a whole answer ends by ``length`` or
``content_filter`` (its route's ``response`` hook raises :class:`Escalate`,
before anything is sent) or when the step and its fallbacks failed
(``error``): :func:`forward` walks the steps so. Streams use request-side rules
and judges only: a stream's answer is the client's as it arrives.
``fastgw_cascade_total{model,step}`` counts the steps used.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from fastgw.config import AcceptIfConfig, JudgeConfig
from fastgw.errors import (
    ContextLengthExceeded,
    GatewayError,
    NoHealthyTarget,
    RateLimited,
    UpstreamError,
    UpstreamStatusError,
)
from fastgw.limits.rules import estimate
from fastgw.metrics import CASCADE, COST, TOKENS, batched
from fastgw.pipeline.filters import Filter, Later, Reply
from fastgw.pipeline.internal import JUDGE, Internal
from fastgw.providers.dialects import OPENAI_CLIENT

if TYPE_CHECKING:
    from fastgw.pipeline.controls import Controls
    from fastgw.pipeline.ctx import RequestCtx
    from fastgw.pipeline.failover import Failover
    from fastgw.pipeline.snapshot import ModelRoute

log = logging.getLogger("fastgw.cascade")

_T = TypeVar("_T")


class Escalate(GatewayError):
    """A cascade step's whole answer ended by a reason its ``escalate_on`` names:
    the next step is asked instead (never an answer: :func:`forward` catches it)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the answer ended by {reason}; the cascade's next step is asked")
        self.reason = reason


class Escalation:
    """On a cascade step's route: where a request goes when the step's answer
    ends in one of ``reasons`` (``length``, ``content_filter``, ``error``)."""

    __slots__ = ("cascade", "next", "reasons")

    def __init__(self, cascade: str, nxt: ModelRoute, reasons: frozenset[str]) -> None:
        self.cascade = cascade  # the cascade model's name (the metric's label)
        self.next = nxt
        self.reasons = reasons


class Judge:
    """A step's judge, compiled once: the prompt around ``{input}``, the regex."""

    __slots__ = ("accept", "model", "on_error_accepts", "prompt", "timeout_s")

    def __init__(self, cfg: JudgeConfig) -> None:
        self.model = cfg.model
        self.prompt = cfg.prompt
        self.accept = re.compile(cfg.accept)
        self.timeout_s = cfg.timeout_ms / 1000.0
        self.on_error_accepts = cfg.on_error == "accept"

    def body(self, text: str) -> bytes:
        return orjson.dumps({"model": self.model, "messages": [
            {"role": "user", "content": self.prompt.replace("{input}", text)}]})


class Step:
    """One step: its model's routes (whole answers, streams) and its rules."""

    __slots__ = ("headers", "judge", "max_prompt_tokens", "metadata", "model", "route",
                 "stream_route")

    def __init__(self, model: str, route: ModelRoute, stream_route: ModelRoute,
                 accept: AcceptIfConfig | None) -> None:
        self.model = model
        self.route = route
        self.stream_route = stream_route
        self.max_prompt_tokens = accept.max_prompt_tokens if accept is not None else None
        self.headers = tuple((n.lower().encode("latin-1"), g)
                             for n, g in (accept.header if accept is not None else {}).items())
        self.metadata = tuple((accept.metadata if accept is not None else {}).items())
        self.judge = Judge(accept.judge) if accept is not None and accept.judge else None

    def holds(self, ctx: RequestCtx) -> bool:
        """The request-side rules (all of them; none: True)."""
        limit = self.max_prompt_tokens
        if limit is not None and estimate(len(ctx.body), ctx.doc, ctx.endpoint)[0] > limit:
            return False
        cycle = ctx.cycle
        for name, glob in self.headers:
            value = cycle.header(name)
            if value is None or not fnmatchcase(value.decode("latin-1"), glob):
                return False
        if self.metadata:
            meta = _metadata(ctx)
            for key, glob in self.metadata:
                value = meta.get(key)
                if not isinstance(value, str) or not fnmatchcase(value, glob):
                    return False
        return True


class CascadeFilter(Filter):
    """The cascade model's first request hook: chooses the step."""

    def __init__(self, name: str, steps: tuple[Step, ...], internal: Internal) -> None:
        self.name = name
        self.steps = steps
        self.internal = internal
        self._used = {s.model: batched(CASCADE, name, s.model) for s in steps}

    def request(self, ctx: RequestCtx) -> Later | None:
        steps = self.steps
        last = len(steps) - 1
        for i in range(last):
            step = steps[i]
            if step.holds(ctx):
                if step.judge is not None:
                    return Later(_bind(self._judged, ctx, i))
                return self._use(ctx, step)
        return self._use(ctx, steps[last])

    def _use(self, ctx: RequestCtx, step: Step) -> Later | None:
        if not ctx.stream and step.route.escalation is not None:
            # A step that may escalate needs the task path (forward walks the
            # steps): the request is pointed at it there, before the next hook.
            return Later(_bind(self._enter_later, ctx, step))
        self._enter(ctx, step)
        return None

    def _enter(self, ctx: RequestCtx, step: Step) -> None:
        self._used[step.model].value += 1
        ctx.route = step.stream_route if ctx.stream else step.route

    async def _enter_later(self, ctx: RequestCtx, step: Step) -> Reply | None:
        self._enter(ctx, step)
        return None

    async def _judged(self, ctx: RequestCtx, start: int) -> Reply | None:
        """From step ``start`` (its rules hold, it has a judge) on, with the judges
        asked in turn."""
        steps = self.steps
        last = len(steps) - 1
        for i in range(start, last):
            step = steps[i]
            if i > start and not step.holds(ctx):
                continue
            judge = step.judge
            if judge is None or await self.ask(ctx, judge):
                self._enter(ctx, step)
                return None
        self._enter(ctx, steps[last])
        return None

    async def ask(self, ctx: RequestCtx, judge: Judge) -> bool:
        """The judge's verdict: True when its answer matches ``accept``; on an error
        or past its timeout, ``on_error`` decides."""
        cycle = self.internal.start(ctx, ctx.snapshot, judge.body(last_user_text(ctx)), JUDGE,
                                    endpoint="chat", dialect=OPENAI_CLIENT)
        try:
            await asyncio.wait_for(asyncio.shield(cycle.done), judge.timeout_s)
        except TimeoutError:
            cycle.lose()
            log.info("cascade %s: judge %s did not answer within %g ms", self.name,
                     judge.model, judge.timeout_s * 1000.0)
            return judge.on_error_accepts
        except asyncio.CancelledError:
            cycle.lose()  # the client left: so does its judge's request
            raise
        text = answer_text(cycle.answer) if cycle.status == 200 else None
        if text is None:
            return judge.on_error_accepts
        return judge.accept.search(text) is not None


def _bind(fn: Callable[[RequestCtx, _T], Awaitable[Reply | None]], ctx: RequestCtx,
          arg: _T) -> Callable[[], Awaitable[Reply | None]]:
    def wait() -> Awaitable[Reply | None]:
        return fn(ctx, arg)

    return wait


class EscalateFilter(Filter):
    """On a step's route whose ``escalate_on`` names length or content_filter: a
    whole answer ending so is not sent; the next step is asked."""

    def __init__(self, reasons: frozenset[str]) -> None:
        self.reasons = reasons

    def response(self, ctx: RequestCtx, status: int, body: bytes) -> bytes:
        reason = finish_reason(body)
        if reason is not None and reason in self.reasons:
            raise Escalate(reason)
        return body


async def forward(failover: Failover, ctx: RequestCtx, controls: Controls) -> None:
    """The task path's forwarding for a cascade step that may escalate: the step
    (its retries and fallbacks, as for any model), then, when its answer ends
    by a reason its ``escalate_on`` names, the next step, and so on."""
    recorder = failover.recorder
    while True:
        route = ctx.route
        assert route is not None
        escalation = route.escalation
        try:
            await failover.forward(ctx, controls)
            return
        except Escalate as exc:
            assert escalation is not None
            served = ctx.route
            if ctx.usage_known and served is not None:
                # The discarded answer's tokens were spent: counted for its model.
                p, c = ctx.prompt_tokens, ctx.completion_tokens
                batched(TOKENS, served.name, "input").value += p
                batched(TOKENS, served.name, "output").value += c
                cost = p * served.input_per_token + c * served.output_per_token
                if cost:
                    batched(COST, served.name, recorder.key_label(ctx.key_name)).value += cost
            ctx.error = f"{served.name if served else route.name}: {exc.reason}; escalated"
        except GatewayError as exc:
            if escalation is None or "error" not in escalation.reasons or \
                    not _escalates(exc):
                raise
            exc.__traceback__ = None
            ctx.error = f"{route.name}: {exc.message}; escalated"
        if escalation is None:  # pragma: no cover - only escalating routes raise Escalate
            raise AssertionError("an Escalate without an escalation")
        nxt = escalation.next
        batched(CASCADE, escalation.cascade, nxt.name).value += 1
        ctx.route = nxt
        ctx.usage_known = False
        ctx.prompt_tokens = ctx.completion_tokens = 0
        ctx.cache_usage = None


def _escalates(exc: GatewayError) -> bool:
    """Failures ``escalate_on: [error]`` moves on from: the upstream's (an error
    status worth retrying, a prompt too long for the step), none of its targets
    healthy, its provider's quota full; not a request the gateway refused."""
    if isinstance(exc, UpstreamStatusError):
        return exc.retryable or isinstance(exc, ContextLengthExceeded)
    return isinstance(exc, UpstreamError | NoHealthyTarget | RateLimited)


# -- reading requests and answers ----------------------------------------------------


def _metadata(ctx: RequestCtx) -> dict[str, Any]:
    """The body's ``metadata``, with ``fastgw.metadata`` over it (the routing
    controls were taken out of ``ctx.doc``: read from the body as sent)."""
    meta = ctx.doc.get("metadata")
    out: dict[str, Any] = dict(meta) if isinstance(meta, dict) else {}
    raw = ctx.cycle.body
    if raw is not ctx.body and raw.find(b'"fastgw"') >= 0:
        try:
            controls = orjson.loads(raw).get("fastgw")
        except (orjson.JSONDecodeError, AttributeError):
            controls = None
        if isinstance(controls, dict) and isinstance(controls.get("metadata"), dict):
            out.update(controls["metadata"])
    return out


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def last_user_text(ctx: RequestCtx) -> str:
    """The last user message's text (chat, messages, responses), else the prompt."""
    doc = ctx.doc
    items = doc.get("messages")
    if not isinstance(items, list):
        items = doc.get("input")
        if isinstance(items, str):
            return items
    if isinstance(items, list):
        for m in reversed(items):
            if isinstance(m, dict) and m.get("role") == "user":
                return _text_of(m.get("content"))
        return ""
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        return prompt[-1]
    return ""


def answer_text(body: bytes) -> str | None:
    """The text of a whole chat answer (None: not one)."""
    try:
        doc = orjson.loads(body)
        content = doc["choices"][0]["message"]["content"]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


_LENGTH = {"length": "length", "max_tokens": "length", "max_output_tokens": "length"}
_FILTER = {"content_filter": "content_filter", "refusal": "content_filter"}


def finish_reason(body: bytes) -> str | None:
    """How a whole answer (in the client's dialect) ended: ``length``,
    ``content_filter``, or None (another way, or unknown)."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    raw: Any = None
    choices = doc.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        raw = choices[0].get("finish_reason")  # chat, completions
    elif "stop_reason" in doc:
        raw = doc.get("stop_reason")  # messages
    elif doc.get("status") == "incomplete":
        details = doc.get("incomplete_details")  # responses
        raw = details.get("reason") if isinstance(details, dict) else None
    if not isinstance(raw, str):
        return None
    return _LENGTH.get(raw) or _FILTER.get(raw)
