"""The request handler the server calls: routes a path to the proxy or to one of
the gateway's own endpoints (health, readiness, models, metrics, admin)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from fastgw import metrics
from fastgw.errors import (
    BadRequest,
    ConfigError,
    GatewayError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
)
from fastgw.pipeline import headers as hdr
from fastgw.pipeline.feedback import give_score
from fastgw.pipeline.runner import Proxy
from fastgw.pipeline.snapshot import Snapshot, model_object
from fastgw.providers.base import ANTHROPIC
from fastgw.providers.dialects import ANTHROPIC_CLIENT, OPENAI_CLIENT, ClientDialect
from fastgw.providers.registry import CLIENT_DIALECT
from fastgw.server.protocol import Cycle

# Proxied endpoints and the client dialect each speaks; both with and without
# the /v1 prefix, as OpenAI-compatible servers answer both.
PROXY_PATHS: dict[bytes, tuple[str, ClientDialect]] = {}
for _path, _name in (("/chat/completions", "chat"), ("/completions", "completions"),
                     ("/embeddings", "embeddings"), ("/responses", "responses"),
                     ("/messages", "messages")):
    _dialect = ANTHROPIC_CLIENT if CLIENT_DIALECT[_name] == ANTHROPIC else OPENAI_CLIENT
    PROXY_PATHS[_path.encode()] = (_name, _dialect)
    PROXY_PATHS[b"/v1" + _path.encode()] = (_name, _dialect)

_JSON = b"content-type: application/json\r\n"
_OK = orjson.dumps({"status": "ok"})
_READY = orjson.dumps({"status": "ready"})


def error_body(path: bytes, exc: GatewayError) -> bytes | None:
    """An error answer's body in the dialect of the client a path serves (None:
    OpenAI's envelope): the server's own errors (413, 408, 400 framing, 405...)
    reach an Anthropic client as Anthropic's."""
    proxied = PROXY_PATHS.get(path)
    return None if proxied is None else proxied[1].error_body(exc)


@dataclass(slots=True, eq=False)
class GatewayState:
    """What the handler reads per request; ``snapshot`` is swapped whole on reload."""

    snapshot: Snapshot
    draining: bool = False


ReloadFn = Callable[[], Awaitable[str]]
Endpoint = Callable[[Cycle], Awaitable[None]]


class Gateway:
    __slots__ = ("_get", "_post", "_prefixes", "before_scrape", "proxy", "reload", "state")

    def __init__(self, state: GatewayState, proxy: Proxy, reload: ReloadFn) -> None:
        self.state = state
        self.proxy = proxy
        self.reload = reload
        metrics_path = state.snapshot.config.observability.metrics_path.encode()
        self._get: dict[bytes, Callable[[Cycle], Awaitable[None]]] = {
            b"/healthz": self.health, b"/health": self.health, b"/readyz": self.ready,
            b"/v1/models": self.models, b"/models": self.models, metrics_path: self.metrics,
        }
        self._post: dict[bytes, Callable[[Cycle], Awaitable[None]]] = {
            b"/admin/reload": self.admin_reload, b"/v1/feedback": self.feedback,
        }
        # GET endpoints named by a path prefix (the rest of the path is their argument).
        self._prefixes: tuple[tuple[bytes, Endpoint], ...] = ()
        # Gauges read only when scraped (the admin API's budgets): set before rendering.
        self.before_scrape: list[Callable[[], None]] = []

    def mount(self, get: dict[bytes, Endpoint],
              prefixes: tuple[tuple[bytes, Endpoint], ...] = ()) -> None:
        """Add GET endpoints served beside the built-in ones (the admin API): looked up
        only for paths the proxy does not serve, so they cost proxied requests nothing."""
        self._get.update(get)
        self._prefixes += prefixes

    def __call__(self, cycle: Cycle) -> Coroutine[Any, Any, None] | None:
        proxied = PROXY_PATHS.get(cycle.path)
        if proxied is not None and cycle.method == b"POST":
            # The proxy answers every error itself, often without a task at all.
            return self.proxy.run(cycle, self.state.snapshot, proxied[0], proxied[1])
        return self._builtin(cycle, proxied is not None)

    async def _builtin(self, cycle: Cycle, proxied: bool) -> None:
        path = cycle.path
        try:
            if proxied:
                raise self._method(path, b"POST")
            method = cycle.method
            if method in (b"GET", b"HEAD"):
                handler = self._get.get(path)
                if handler is None and path.startswith((b"/v1/models/", b"/models/")):
                    handler = self.model
                if handler is None:
                    for prefix, endpoint in self._prefixes:
                        if path.startswith(prefix):
                            handler = endpoint
                            break
            elif method == b"POST":
                handler = self._post.get(path)
            else:
                handler = None
            if handler is None:
                if path in self._get or path.startswith(
                        (b"/v1/models/", b"/models/", *(p for p, _ in self._prefixes))):
                    raise self._method(path, b"GET, HEAD")
                if path in self._post:
                    raise self._method(path, b"POST")
                raise NotFound(
                    f"unknown path {path.decode('latin-1')!r}; fastgw serves "
                    "/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, "
                    "/v1/messages, /v1/models, /healthz and /readyz", code="unknown_path")
            await handler(cycle)
        except GatewayError as exc:
            if not cycle.started:
                cycle.send_error(exc, _rid(cycle))
            elif not cycle.finished:
                cycle.abort()

    @staticmethod
    def _method(path: bytes, allow: bytes) -> MethodNotAllowed:
        return MethodNotAllowed(
            f"{path.decode('latin-1')} accepts {allow.decode()} only",
            headers=[(b"allow", allow)])

    # -- built-in endpoints -------------------------------------------------------------

    async def health(self, cycle: Cycle) -> None:
        cycle.send(200, _JSON + _rid(cycle), _OK)

    async def ready(self, cycle: Cycle) -> None:
        if self.state.draining:
            raise ServiceUnavailable("the gateway is shutting down", code="draining")
        cycle.send(200, _JSON + _rid(cycle), _READY)

    async def models(self, cycle: Cycle) -> None:
        snap = self.state.snapshot
        names = await self.proxy.access.visible_models(cycle, snap)
        cycle.send(200, _JSON + _rid(cycle), snap.models_body(names))

    async def model(self, cycle: Cycle) -> None:
        name = cycle.path.split(b"/models/", 1)[1].decode("utf-8", "replace")
        snap = self.state.snapshot
        names = await self.proxy.access.visible_models(cycle, snap)
        route = snap.models.get(name)
        if route is None or (names is not None and name not in names):
            raise ModelNotFound(f"the model {name!r} does not exist; GET /v1/models lists the "
                                "models you can use", param="model")
        cycle.send(200, _JSON + _rid(cycle), orjson.dumps(model_object(route, snap.created)))

    async def feedback(self, cycle: Cycle) -> None:
        """``POST /v1/feedback``: a score for an answer of a model with variants, from
        the caller it went to (pipeline/feedback.py)."""
        snap = self.state.snapshot
        caller = await self.proxy.access.caller(cycle, snap)
        body = await give_score(snap.feedback, caller, cycle.body, snap.config.feedback.names)
        cycle.send(200, _JSON + _rid(cycle), body)

    async def metrics(self, cycle: Cycle) -> None:
        self.require_admin(cycle)
        self.proxy.recorder.flush()
        for hook in self.before_scrape:
            hook()
        ctype, body = metrics.render()
        cycle.send(200, b"content-type: " + ctype + b"\r\n" + _rid(cycle), body)

    async def admin_reload(self, cycle: Cycle) -> None:
        self.require_admin(cycle)
        try:
            summary = await self.reload()
        except ConfigError as exc:
            raise BadRequest("the new configuration was refused and the previous one keeps "
                             "serving: " + "; ".join(f"{p}: {m}" if p else m
                                                     for p, m in exc.errors),
                             code="invalid_config") from None
        cycle.send(200, _JSON + _rid(cycle), orjson.dumps({"status": "reloaded",
                                                           "summary": summary}))

    def require_admin(self, cycle: Cycle) -> None:
        """Admin endpoints need the admin key when ``admin.key_sha256`` is set: its
        SHA-256 compared in constant time (Unauthorized otherwise)."""
        expected = self.state.snapshot.config.admin.key_sha256
        if expected is None:
            return
        presented = _credential(cycle)
        if presented is None:
            raise Unauthorized("this endpoint needs the admin key: send "
                               "'Authorization: Bearer <admin key>'")
        digest = hashlib.sha256(presented).hexdigest()
        if not hmac.compare_digest(digest, expected):
            raise Unauthorized("the admin key is not valid")


def _credential(cycle: Cycle) -> bytes | None:
    auth = cycle.header(b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    key = cycle.header(b"x-api-key")
    return key.strip() if key else None


def request_id_line(cycle: Cycle) -> bytes:
    """The answer's ``x-request-id`` line (the client's, when it sent a sane one)."""
    return _rid(cycle)


def _rid(cycle: Cycle) -> bytes:
    value = cycle.header(b"x-request-id")
    if value is None or not hdr.valid_request_id(value):
        value = hdr.new_request_id()
    return b"x-request-id: " + value + b"\r\n"
