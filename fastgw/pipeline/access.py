"""Access control in the pipeline: who is calling, may they, and within which limits.

The runner calls, in order: :meth:`Access.authenticate` (before the model is
looked up, so unauthenticated callers learn nothing about models), then
:meth:`Access.admit` (model allowed? reserve every matching limit), and
:meth:`Access.settle` exactly once when the request ends, whatever happened
(correct the reservation with real usage, refund on error or cancel).

::

    authenticate   IP rules (403) -> credential: API key by sha256, else JWT (401)
    admit          model allowed (403) -> plan for (caller, model), cached
                   -> reserve every scope at once (429 + Retry-After) -> x-ratelimit-*
    settle         requests: 1 if an upstream was tried, else refunded;
                   tokens/USD: real usage, the estimate when an answer had none,
                   0 on error or cancel; in-flight slots: given back

An :class:`Access` is built per configuration by :class:`AccessState` (which
the app keeps across reloads: the limiter table, the Redis client and the
JWKS cache survive a reload that does not change them). With no ``auth``
section and no limits the gateway stays open and every phase is a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import urlsplit

from fastgw._native import JwtKeyError, Reservation
from fastgw._native import forwarded as header_pass
from fastgw.auth import IpRules, JwtAuth, KeyStore, ModelGlobs, Principal
from fastgw.auth.jwt import looks_like_jwt
from fastgw.config import Config, JwtConfig, RedisConfig
from fastgw.errors import ConfigError, Forbidden, InternalError, RateLimited, Unauthorized
from fastgw.limits import LocalLimiter, Plan, Rules
from fastgw.limits.redis import RedisLimiter
from fastgw.limits.rules import Outcome, estimate
from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.snapshot import ModelRoute, Snapshot
from fastgw.server.protocol import Cycle
from fastgw.upstream.client import Endpoint, Timeouts, UpstreamClient, exchange

log = logging.getLogger("fastgw.access")

_MISSING_CREDENTIALS = ("missing API key: send 'Authorization: Bearer <key>' (or the header "
                        "'x-api-key: <key>')")
_BAD_KEY = ("the API key is not valid; check it for typos, or ask the gateway's "
            "administrator for a key")
_MAX_TOKEN_PRINCIPALS = 10_000
_UNSET: Any = object()
_SEPARATORS = re.compile(r"[\s,]+")

Limiter = LocalLimiter | RedisLimiter


class Grant:
    """What access control learned about one request (``ctx.grant``)."""

    __slots__ = ("backend", "plan", "principal", "res", "tokens", "usd")

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.plan: Plan | None = None
        self.res: Outcome | None = None
        self.backend: Limiter | None = None
        self.tokens = 0.0  # reserved estimates, settled as they are when usage is unknown
        self.usd = 0.0


def credential(cycle: Cycle) -> bytes | None:
    """The key or token: ``Authorization: Bearer ...``, else ``x-api-key`` (the rule is
    the request header pass's, :func:`fastgw._native.forwarded`; a proxied request has
    had it run already, ``Cycle.forwarded``)."""
    forwarded = cycle.forwarded
    if forwarded is None:
        forwarded = cycle.forwarded = header_pass(cycle.headers)
    return forwarded[3]


class Access:
    """Access control for one configuration. ``Access()`` is open: no credentials,
    no limits."""

    __slots__ = ("_anonymous", "_backend", "_ip", "_jwt", "_keys", "_open", "_rules",
                 "_token_principals", "passthrough", "sync", "trusts_xff")

    def __init__(self, *, keys: KeyStore | None = None, jwt: JwtAuth | None = None,
                 ip: IpRules | None = None, rules: Rules | None = None,
                 backend: Limiter | None = None) -> None:
        self._keys = keys if keys else None
        self._jwt = jwt
        self._open = self._keys is None and jwt is None
        self._ip = ip
        # True when X-Forwarded-For names the client (from trusted proxies): else the
        # client's address is the peer's (the log phase reads it so, without a call).
        self.trusts_xff = ip is not None and ip.trusts_proxies
        self._rules = rules
        if rules is not None and backend is None:
            backend = LocalLimiter()
        self._backend = backend
        self._anonymous = Principal("anonymous", None, ModelGlobs(("*",)))
        self._token_principals: dict[tuple[str, str | None, tuple[str, ...]], Principal] = {}
        # True when admission never waits (no Redis): authenticate_now (which may
        # still ask to wait, for a JWKS fetch) and admit_now.
        self.sync = not isinstance(backend, RedisLimiter)
        # True when every phase is a no-op (open, no IP rules, no limits).
        self.passthrough = self._open and ip is None and rules is None

    @property
    def open(self) -> bool:
        """True when no credentials are asked for."""
        return self._open

    @property
    def backend(self) -> Limiter | None:
        return self._backend

    @property
    def rules(self) -> Rules | None:
        """The configuration's limit rules (None: no limits)."""
        return self._rules

    # -- phases --------------------------------------------------------------------------

    async def authenticate(self, ctx: RequestCtx) -> None:
        """Identify the caller (API key, JWT) and apply IP rules; raise 401/403."""
        token = self._authenticate(ctx)
        if token is not None:
            jwt = self._jwt
            assert jwt is not None
            self._grant(ctx, self._token_principal(jwt.cfg, await jwt.verify(token)))

    def authenticate_now(self, ctx: RequestCtx) -> bool:
        """:meth:`authenticate` without waiting: False when it cannot finish so (a
        token needs the identity provider's keys fetched: await
        :meth:`authenticate`, which does everything again)."""
        token = self._authenticate(ctx)
        if token is None:
            return True
        jwt = self._jwt
        assert jwt is not None
        claims = jwt.verify_now(token)
        if claims is None:
            return False
        self._grant(ctx, self._token_principal(jwt.cfg, claims))
        return True

    def _authenticate(self, ctx: RequestCtx) -> bytes | None:
        """Everything but verifying a JWT: returns the token still to verify."""
        cycle = ctx.cycle
        if self._ip is not None:
            self._check_ip(cycle)
        if self._open:
            if self._rules is not None:
                ctx.grant = Grant(self._anonymous)
            return None
        forwarded = cycle.forwarded  # (credential(cycle), inline: once per request)
        token = forwarded[3] if forwarded is not None else credential(cycle)
        if token is None:
            raise Unauthorized(_MISSING_CREDENTIALS)
        keys = self._keys
        principal = keys.lookup(token) if keys is not None else None
        if principal is not None:
            ctx.key_name = principal.name  # (_grant, inline)
            ctx.grant = Grant(principal)
            return None
        if self._jwt is None or not looks_like_jwt(token):
            raise Unauthorized(_BAD_KEY)
        return token

    @staticmethod
    def _grant(ctx: RequestCtx, principal: Principal) -> None:
        ctx.key_name = principal.name
        ctx.grant = Grant(principal)

    def check_model(self, ctx: RequestCtx) -> None:
        """403 when the caller may not use the model it named. Runs before the model
        is looked up, so a caller learns nothing about models it may not use."""
        grant: Grant | None = ctx.grant
        if grant is None:
            return
        principal = grant.principal
        model = ctx.model
        if not principal.allows(model):
            who = "key" if principal.kind == "key" else "token"
            raise Forbidden(f"this {who} ({principal.name}) may not use the model {model!r}; "
                            "GET /v1/models lists the models it may use",
                            code="model_not_allowed", param="model")

    async def admit(self, ctx: RequestCtx) -> None:
        """Reserve every matching limit (429); the model was checked by check_model."""
        plan = self._planned(ctx)
        if plan is None:
            return
        backend = self._backend
        grant: Grant = ctx.grant
        res: Outcome
        if isinstance(backend, LocalLimiter):
            res, head = backend.admit(plan, grant.tokens, grant.usd)
        else:
            assert backend is not None
            res = await backend.reserve(plan, plan.costs(grant.tokens, grant.usd))
            head = plan.headers(res)
        self._admitted(ctx, plan, res, head, backend)

    def admit_now(self, ctx: RequestCtx) -> None:
        """:meth:`admit` without waiting; only when :attr:`sync`."""
        grant: Grant | None = ctx.grant
        if grant is None or self._rules is None:
            return
        route = ctx.route
        # (_plan_for's usual case inline: the model asked, its plan made already)
        plan = grant.principal.plans.get(route, _UNSET) if route is ctx.asked else _UNSET
        if plan is _UNSET:
            plan = self._plan_for(grant, ctx)
        if plan is None:
            return
        backend = self._backend
        assert type(backend) is LocalLimiter, "admit_now needs the local limiter"
        # (LocalLimiter.admit and _admitted, inline: once per request; the estimate
        # computed natively in the same call when the plan counts tokens or USD)
        got = None
        if plan.uses_usage and ctx.cache is None:
            assert route is not None
            if ctx.parsed_doc is None:  # the body as peeked: its completion tokens read
                got = backend.table.admit_peeked(
                    plan.admission, len(ctx.body), ctx.peeked_completion,
                    ctx.endpoint == "embeddings", route.input_per_token,
                    route.output_per_token)
            else:
                got = backend.table.admit_estimated(
                    plan.admission, len(ctx.body), ctx.doc, ctx.endpoint == "embeddings",
                    route.input_per_token, route.output_per_token)
        if got is not None:
            res, head, grant.tokens, grant.usd = got
        else:
            self._estimate(grant, plan, ctx)
            res, head = backend.table.admit(plan.admission, grant.tokens, grant.usd)
        if head is None:
            head = plan.render(res)
        if head:
            ctx.extra_headers += head
        if not res.admitted:
            message, retry_after = plan.refusal(res)
            raise RateLimited(message, headers=[(b"retry-after", retry_after)])
        grant.plan = plan
        grant.res = res
        grant.backend = backend

    def _planned(self, ctx: RequestCtx) -> Plan | None:
        """The request's limit plan (None: no limits); the grant gets the request's
        token and USD estimates when the plan counts them."""
        grant: Grant | None = ctx.grant
        if grant is None or self._rules is None:
            return None
        plan = self._plan_for(grant, ctx)
        if plan is not None:
            self._estimate(grant, plan, ctx)
        return plan

    def _plan_for(self, grant: Grant, ctx: RequestCtx) -> Plan | None:
        """The plan of the grant's caller on the request's route, cached per route
        object when it is the model asked (one name, one route), else per (name
        asked, route): a variant's route."""
        route = ctx.route
        assert route is not None  # admission follows the route phase
        key: Any = route if route is ctx.asked else (ctx.model, route)
        plans = grant.principal.plans
        plan: Plan | None = plans.get(key, _UNSET)
        if plan is _UNSET:
            plan = plans[key] = self._plan(grant.principal, ctx.model, route)
        return plan

    @staticmethod
    def _estimate(grant: Grant, plan: Plan, ctx: RequestCtx) -> None:
        """The request's token and USD estimates on the grant, when the plan counts
        them (a cache hit spends neither)."""
        if plan.uses_usage:
            cache = ctx.cache
            if cache is None or not cache.hit:
                route = ctx.route
                assert route is not None
                prompt, completion = estimate(len(ctx.body), ctx.doc, ctx.endpoint)
                grant.tokens = float(prompt + completion)
                grant.usd = prompt * route.input_per_token + completion * route.output_per_token

    @staticmethod
    def _admitted(ctx: RequestCtx, plan: Plan, res: Outcome, head: bytes,
                  backend: Limiter) -> None:
        """Apply a reservation's outcome: rate-limit headers, and 429 when refused."""
        if head:
            ctx.extra_headers += head
        if not res.admitted:
            message, retry_after = plan.refusal(res)
            raise RateLimited(message, headers=[(b"retry-after", retry_after)])
        grant: Grant = ctx.grant
        grant.plan = plan
        grant.res = res
        grant.backend = backend

    def settle(self, ctx: RequestCtx) -> None:
        """Correct reservations with the real usage; refund what was not used."""
        grant: Grant | None = ctx.grant
        if grant is None:
            return
        res = grant.res
        if res is None:
            return
        grant.res = None  # settle once
        plan = grant.plan
        assert plan is not None
        cache = ctx.cache
        if cache is not None and cache.hit:
            requests, tokens, usd = 1.0, 0.0, 0.0  # a request, served without tokens or spend
        elif not ctx.attempts:
            requests = tokens = usd = 0.0  # nothing tried: refund
        elif not plan.uses_usage:
            requests, tokens, usd = 1.0, 0.0, 0.0
        elif ctx.usage_known:
            route = ctx.route  # the model that served (a fallback maybe)
            p, c = ctx.prompt_tokens, ctx.completion_tokens
            requests, tokens = 1.0, float(p + c)
            usd = p * route.input_per_token + c * route.output_per_token if route else grant.usd
        elif 200 <= ctx.status < 400:
            requests, tokens, usd = 1.0, grant.tokens, grant.usd  # answered without usage
        else:
            requests, tokens, usd = 1.0, 0.0, 0.0  # error or cancel: refund
        backend = grant.backend
        try:
            if type(res) is Reservation and type(backend) is LocalLimiter:
                backend.table.settle_admitted(res, plan.admission, requests, tokens, usd)
            else:
                assert backend is not None
                backend.settle(res, plan.actual(requests, tokens, usd))
        except Exception:  # settle runs in the runner's finally: it must never raise
            log.exception("settling limits failed")

    async def visible_models(self, cycle: Cycle, snapshot: Snapshot) -> list[str] | None:
        """Models the caller may list (None: all); raises 401 without credentials."""
        ctx = RequestCtx(cycle, snapshot, "models", b"", b"")
        await self.authenticate(ctx)
        grant: Grant | None = ctx.grant
        if self._open or grant is None:
            return None
        principal = grant.principal
        return [name for name in snapshot.models if principal.allows(name)]

    async def caller(self, cycle: Cycle, snapshot: Snapshot) -> str:
        """Who is calling, as a request's grant names it (``k:<key>``, ``j:<subject>``;
        ``-`` when the gateway asks for no credentials); 401/403 as for a request."""
        ctx = RequestCtx(cycle, snapshot, "feedback", b"", b"")
        await self.authenticate(ctx)
        grant: Grant | None = ctx.grant
        return "-" if grant is None else grant.principal.id

    # -- helpers -------------------------------------------------------------------------

    def client_ip(self, cycle: Cycle) -> str:
        """The client's address (``X-Forwarded-For`` believed from trusted proxies only)."""
        addr = cycle.client_addr[0]
        if self.trusts_xff:
            assert self._ip is not None
            return self._ip.client_ip(addr, cycle.header(b"x-forwarded-for"))
        return addr

    def _check_ip(self, cycle: Cycle) -> None:
        ip = self._ip
        assert ip is not None
        why = ip.refusal(self.client_ip(cycle))
        if why is not None:
            raise Forbidden(why, code="ip_not_allowed")

    def _token_principal(self, cfg: JwtConfig, claims: dict[str, Any]) -> Principal:
        c = cfg.claims
        sub = claims.get(c.subject)
        if isinstance(sub, int) and not isinstance(sub, bool):
            sub = str(sub)
        if not isinstance(sub, str) or not sub:
            raise Unauthorized(f"the bearer token was refused: its {c.subject!r} claim must be "
                               "a non-empty string", code="token_missing_claim")
        tier = None
        if c.tier is not None:
            t = claims.get(c.tier)
            tier = t if isinstance(t, str) and t else None
        models: tuple[str, ...] = ("*",)
        if c.models is not None:
            m = claims.get(c.models)
            if isinstance(m, str):
                models = tuple(x for x in _SEPARATORS.split(m) if x)
            elif isinstance(m, list):
                models = tuple(x for x in m if isinstance(x, str) and x)
            else:
                models = ()  # the claim is configured but absent: no model
        key = (sub, tier, models)
        p = self._token_principals.get(key)
        if p is None:
            if len(self._token_principals) >= _MAX_TOKEN_PRINCIPALS:
                self._token_principals.clear()
            p = self._token_principals[key] = Principal("jwt", sub, ModelGlobs(models),
                                                        tier=tier)
        return p

    def _plan(self, principal: Principal, model: str, route: ModelRoute | None) -> Plan | None:
        rules = self._rules
        assert rules is not None
        providers = tuple(t.provider.name for t in route.targets) if route is not None else ()
        try:
            return rules.plan(principal.id, principal.name, principal.tier, principal.limits,
                              model, providers)
        except ValueError as exc:
            log.error("limits: %s", exc)
            raise InternalError("the gateway's limit configuration cannot serve this request; "
                                "the administrator's log says why") from None


class AccessState:
    """What access control keeps across reloads: the limiter table (local or shared
    memory), the Redis limiter and the JWKS cache, each rebuilt only when its own
    configuration changes."""

    __slots__ = ("_jwt", "_redis", "_retired", "client", "local")

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client
        self.local = LocalLimiter()
        self._jwt: JwtAuth | None = None
        self._redis: RedisLimiter | None = None
        self._retired: set[asyncio.Task[None]] = set()

    async def build(self, cfg: Config) -> Access:
        """The :class:`Access` for ``cfg`` (ConfigError when a key cannot be loaded)."""
        a = cfg.auth
        keys = KeyStore(a.keys) if a.keys else None
        jwt = await self._jwt_for(a.jwt) if a.jwt is not None else None
        ip = None
        if a.ip_allow or a.ip_deny:
            ip = IpRules(a.ip_allow, a.ip_deny, cfg.server.trusted_proxies)
        rules = None
        backend: Limiter | None = None
        if cfg.limits or any(k.limits is not None for k in a.keys):
            rules = Rules(cfg.limits, cfg.redis.key_prefix)
            backend = (await self._redis_for(cfg.redis) if cfg.limits_backend == "redis"
                       else self.local)
        return Access(keys=keys, jwt=jwt, ip=ip, rules=rules, backend=backend)

    async def _jwt_for(self, cfg: JwtConfig) -> JwtAuth:
        old = self._jwt
        if old is not None and old.cfg == cfg:
            return old  # same settings: keep the cached keys
        try:
            jwt = JwtAuth(cfg, self.fetch)
        except JwtKeyError as exc:
            where = "auth.jwt.secret" if cfg.secret is not None else "auth.jwt.public_key_pem"
            raise ConfigError([(where, f"cannot be used: {exc}")]) from None
        await jwt.start()
        if old is not None:
            old.close()
        self._jwt = jwt
        return jwt

    async def _redis_for(self, cfg: RedisConfig) -> RedisLimiter:
        old = self._redis
        if old is not None and old.cfg == cfg:
            return old
        limiter = RedisLimiter(cfg, self.local)
        await limiter.start()
        self._redis = limiter
        if old is not None:
            self._retire(old)
        return limiter

    def _retire(self, old: RedisLimiter) -> None:
        task = asyncio.get_running_loop().create_task(old.close())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def fetch(self, url: str) -> bytes:
        """GET ``url`` through the gateway's upstream client (the JWKS)."""
        ep = Endpoint.parse(url)
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        pool = self.client.pool(ep, max_connections=2, idle_s=30.0, connect_s=5.0)
        request = (b"GET " + target.encode() + b" HTTP/1.1\r\nhost: " + ep.host_header
                   + b"\r\naccept: application/json\r\nuser-agent: fastgw\r\n\r\n")
        conn = await exchange(pool, request, Timeouts(5.0, 5.0, 5.0, 10.0), whole=True)
        status = conn.status
        body = conn.body()
        pool.release(conn, reuse=True)
        if status != 200:
            raise OSError(f"{url} answered {status}")
        return body

    async def close(self) -> None:
        if self._jwt is not None:
            self._jwt.close()
        if self._redis is not None:
            await self._redis.close()
        if self._retired:
            await asyncio.wait(set(self._retired), timeout=2.0)
