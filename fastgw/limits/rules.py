"""Limit rules turned into plans: which buckets one request reserves, and how much.

A *plan* is everything about limits that is constant for one (caller, model):
the native :class:`~fastgw._native.Scope` of every matching limit (the key's
own ``auth.keys[].limits`` and every matching ``limits[]`` rule), what each
one counts (requests, tokens, concurrent requests, USD), and the pre-rendered
``x-ratelimit-limit-*`` lines. Plans are built on first use and cached by the
caller's principal, so a request only computes its costs and formats the
``remaining``/``reset`` numbers.

Bucket names depend on *what* a rule matches, not on its numbers
(``{fastgw}:rule:<id>:<caller>:rpm``), so a reload that changes a limit keeps
the count (the native table adopts the new limit); the ``{...}`` hash tag
puts every bucket of one admission in one Redis Cluster slot.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fastgw._native import Admission, Limit, Reservation, Scope
from fastgw.config import BudgetConfig, LimitRule, LimitSpec
from fastgw.metrics import RATELIMITED

REQUESTS, TOKENS, INFLIGHT, USD = 0, 1, 2, 3
_DIM_NAMES = ("rpm", "tpm", "inflight", "budget")
KIND_RATE, KIND_CONCURRENCY, KIND_BUDGET = 1, 2, 3
MAX_SCOPES = 16  # per request (the shared-memory table's bound)

DEFAULT_COMPLETION_TOKENS = 256  # reserved when a request sets no max_tokens
_PERIOD_S = {"hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0, "month": 0.0}


class Outcome(Protocol):
    """What a backend's reserve answers (the native ``Reservation`` has this shape)."""

    @property
    def admitted(self) -> bool: ...
    @property
    def retry_after(self) -> float: ...
    @property
    def denied_index(self) -> int | None: ...
    @property
    def remaining(self) -> tuple[float, ...]: ...
    @property
    def reset_after(self) -> tuple[float, ...]: ...


@dataclass(frozen=True, slots=True)
class ScopeSpec:
    """One bucket of a plan, with what Redis needs to run the same arithmetic."""

    key: str
    dim: int  # REQUESTS | TOKENS | INFLIGHT | USD
    label: str  # fastgw_ratelimited_total{scope}
    kind: int  # KIND_RATE | KIND_CONCURRENCY | KIND_BUDGET
    p1: float  # capacity, cap or amount
    p2: float  # refill per second (rate), period in seconds (budget; 0 = calendar month)
    limit: Limit


class Plan:
    """The limits one (caller, model) reserves on every request."""

    __slots__ = ("_base", "_fixed", "_pick", "_tok_at", "_usd_at", "admission", "caps",
                 "counters", "dims", "keys", "labels", "lines", "month", "req", "scopes", "specs",
                 "tok", "uses_usage")

    def __init__(self, specs: Sequence[ScopeSpec]) -> None:
        self.specs = tuple(specs)
        self.scopes = tuple(Scope(s.key, s.limit) for s in self.specs)
        self.keys = tuple(s.key for s in self.specs)
        self.dims = tuple(s.dim for s in self.specs)
        # A cost above its limit could never pass: reserve at most the limit
        # (settle charges the real usage, which may leave the bucket in debt).
        self.caps = tuple(s.p1 for s in self.specs)
        self.labels = tuple(s.label for s in self.specs)
        self.counters: tuple[Any, ...] = tuple(RATELIMITED.labels(s.label) for s in self.specs)
        self.month = any(s.kind == KIND_BUDGET and s.p2 == 0.0 for s in self.specs)
        # Requests and in-flight cost 1 whatever the body: such plans share one costs tuple.
        self._fixed: tuple[float, ...] | None = (
            tuple(1.0 for _ in self.specs)
            if all(d in (REQUESTS, INFLIGHT) for d in self.dims) else None)
        self.uses_usage = self._fixed is None  # the costs depend on the body
        self._base = [1.0] * len(self.specs)
        self._tok_at = tuple((i, s.p1) for i, s in enumerate(self.specs) if s.dim == TOKENS)
        self._usd_at = tuple((i, s.p1) for i, s in enumerate(self.specs) if s.dim == USD)
        # The settlement's value of each scope, by its dimension (one C call).
        dims = self.dims
        self._pick: Callable[[tuple[float, ...]], Sequence[float]] = (
            operator.itemgetter(*dims) if len(dims) > 1
            else lambda vals: tuple(vals[d] for d in dims))
        self.req = tuple(i for i, s in enumerate(self.specs) if s.dim == REQUESTS)
        self.tok = tuple(i for i, s in enumerate(self.specs) if s.dim == TOKENS)
        self.lines = tuple(
            (b"x-ratelimit-limit-requests: %d\r\n" if s.dim == REQUESTS
             else b"x-ratelimit-limit-tokens: %d\r\n") % s.p1 for s in self.specs)
        # costs, reserve, headers (and actual, settle) in one native call each, for
        # the local tables; costs/actual/headers below are its reference and serve Redis.
        self.admission = Admission(self.scopes, self.dims, self.caps, self.lines)

    def costs(self, tokens: float, usd: float) -> Sequence[float]:
        """The reservation: 1 per request and in-flight slot, the estimates otherwise."""
        fixed = self._fixed
        if fixed is not None:
            return fixed
        out = self._base.copy()
        for i, cap in self._tok_at:
            out[i] = tokens if tokens < cap else cap
        for i, cap in self._usd_at:
            out[i] = usd if usd < cap else cap
        return out

    def actual(self, requests: float, tokens: float, usd: float) -> Sequence[float]:
        """The settlement (in-flight slots are always given back, whatever is passed)."""
        return self._pick((requests, tokens, 0.0, usd))

    def headers(self, res: Outcome) -> bytes:
        """``x-ratelimit-*`` lines: the tightest requests scope and tokens scope
        (rendered natively for a native reservation; :meth:`render` is the
        reference, and renders the Redis backend's outcomes)."""
        if type(res) is Reservation:
            head = res.rate_headers(self.req, self.tok, self.lines)
            if head is not None:
                return head
        return self.render(res)

    def render(self, res: Outcome) -> bytes:
        """:meth:`headers` in Python."""
        remaining = res.remaining
        if not remaining:
            return b""
        reset = res.reset_after
        out = b""
        idx = self.req
        if idx:
            i = _tightest(idx, remaining)
            out = (self.lines[i] + b"x-ratelimit-remaining-requests: %d\r\n"
                   b"x-ratelimit-reset-requests: %s\r\n" % (remaining[i], duration(reset[i])))
        idx = self.tok
        if idx:
            i = _tightest(idx, remaining)
            out += (self.lines[i] + b"x-ratelimit-remaining-tokens: %d\r\n"
                    b"x-ratelimit-reset-tokens: %s\r\n" % (remaining[i], duration(reset[i])))
        return out

    def refusal(self, res: Outcome) -> tuple[str, bytes]:
        """(message, Retry-After value) for a refused reservation; counts the refusal."""
        i = res.denied_index
        if i is None:
            i = 0
        self.counters[i].inc()
        wait = res.retry_after
        spec = self.specs[i]
        what = {REQUESTS: f"requests per minute ({spec.p1:g})",
                TOKENS: f"tokens per minute ({spec.p1:g})",
                INFLIGHT: f"concurrent requests ({spec.p1:g})",
                USD: f"budget (USD {spec.p1:g} per {_period_name(spec.p2)})"}[spec.dim]
        scope = spec.label
        if not math.isfinite(wait):
            return (f"this request can never fit the {scope} limit on {what}", b"60")
        secs = max(1, math.ceil(wait))
        return (f"rate limit reached: the {scope} limit on {what}; retry after {secs} s",
                b"%d" % secs)


def _tightest(idx: tuple[int, ...], remaining: tuple[float, ...]) -> int:
    """The index in ``idx`` with the least remaining (the first of equals)."""
    best = idx[0]
    least = remaining[best]
    for i in idx[1:]:
        if remaining[i] < least:
            best = i
            least = remaining[i]
    return best


def _period_name(seconds: float) -> str:
    for name, s in _PERIOD_S.items():
        if s == seconds:
            return name
    return f"{seconds:g} s"


_MS = [b"%dms" % n for n in range(1001)]


def duration(seconds: float) -> bytes:
    """OpenAI's reset format: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0.0:
        return b"0s"
    if seconds < 1.0:
        ms = int(seconds * 1000.0)
        return _MS[ms if ms == seconds * 1000.0 else ms + 1]  # ceil
    if seconds < 60.0:
        return b"%gs" % round(seconds, 3)
    if not math.isfinite(seconds):
        return b"0s"
    m, s = divmod(math.ceil(seconds), 60)
    if m < 60:
        return b"%dm%ds" % (m, s)
    h, m = divmod(m, 60)
    return b"%dh%dm%ds" % (h, m, s)


def estimate(body_len: int, doc: dict[str, Any], endpoint: str) -> tuple[int, int]:
    """(prompt, completion) tokens to reserve: the body's size / 4, and
    ``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens`` or a default."""
    prompt = body_len // 4 + 1
    if endpoint == "embeddings":
        return prompt, 0
    mt = doc.get("max_completion_tokens") or doc.get("max_tokens") or doc.get(
        "max_output_tokens")
    if type(mt) is not int or mt <= 0:
        mt = DEFAULT_COMPLETION_TOKENS
    return prompt, mt


class _Glob:
    __slots__ = ("_exact", "_regex")

    def __init__(self, pattern: str) -> None:
        if any(c in pattern for c in "*?["):
            self._exact: str | None = None
            self._regex: re.Pattern[str] | None = re.compile(fnmatch.translate(pattern))
        else:
            self._exact = pattern
            self._regex = None

    def match(self, value: str | None) -> bool:
        if value is None:
            return False
        if self._regex is None:
            return value == self._exact
        return self._regex.match(value) is not None


class _Rule:
    __slots__ = ("cfg", "key", "label", "model", "provider", "rid", "tier")

    def __init__(self, cfg: LimitRule, rid: str) -> None:
        m = cfg.match
        self.cfg = cfg
        self.rid = rid
        self.key = _Glob(m.key) if m.key is not None else None
        self.model = _Glob(m.model) if m.model is not None else None
        self.tier = _Glob(m.tier) if m.tier is not None else None
        self.provider = _Glob(m.provider) if m.provider is not None else None
        fields = [f for f in ("key", "model", "tier", "provider") if getattr(m, f) is not None]
        self.label = "+".join(fields) if fields else "global"

    def applies(self, name: str | None, tier: str | None, model: str,
                providers: Sequence[str]) -> bool:
        if self.key is not None and not self.key.match(name):
            return False
        if self.model is not None and not self.model.match(model):
            return False
        if self.tier is not None and not self.tier.match(tier):
            return False
        if self.provider is not None:
            glob = self.provider
            return any(glob.match(p) for p in providers)
        return True


class Rules:
    """The ``limits`` rules of one configuration; :meth:`plan` per (caller, model)."""

    __slots__ = ("_rules", "tag")

    def __init__(self, rules: Sequence[LimitRule], key_prefix: str = "fastgw") -> None:
        self.tag = "{" + key_prefix + "}"
        seen: dict[str, int] = {}
        compiled = []
        for rule in rules:
            m = rule.match
            ident = repr((m.key, m.model, m.tier, m.provider, rule.per))
            rid = hashlib.blake2b(ident.encode(), digest_size=6).hexdigest()
            n = seen[rid] = seen.get(rid, 0) + 1
            compiled.append(_Rule(rule, rid if n == 1 else f"{rid}.{n}"))
        self._rules = tuple(compiled)

    def __len__(self) -> int:
        return len(self._rules)

    def plan(self, principal_id: str, name: str | None, tier: str | None,
             key_limits: LimitSpec | None, model: str, providers: Sequence[str]) -> Plan | None:
        """The plan for a caller on ``model`` (served by ``providers``); None when no
        limit applies."""
        specs: list[ScopeSpec] = []
        if key_limits is not None:
            _specs(specs, key_limits, f"{self.tag}:key:{principal_id}", "key")
        for rule in self._rules:
            if rule.applies(name, tier, model, providers):
                who = principal_id if rule.cfg.per == "key" else "*"
                _specs(specs, rule.cfg, f"{self.tag}:rule:{rule.rid}:{who}", rule.label)
        if not specs:
            return None
        if len(specs) > MAX_SCOPES:
            raise ValueError(f"{len(specs)} limits apply to {name or 'the caller'} on {model!r}; "
                             f"at most {MAX_SCOPES} may apply to one request")
        return Plan(specs)


    def scopes_of(self, principal_id: str, name: str | None, tier: str | None,
                  key_limits: LimitSpec | None,
                  routes: Sequence[tuple[str, Sequence[str]]]) -> list[ScopeSpec]:
        """Every bucket a caller may reserve from, over ``routes`` ((model, its
        providers)...): the key's own limits and each matching rule's, once each."""
        specs: list[ScopeSpec] = []
        if key_limits is not None:
            _specs(specs, key_limits, f"{self.tag}:key:{principal_id}", "key")
        for rule in self._rules:
            if any(rule.applies(name, tier, model, providers) for model, providers in routes):
                who = principal_id if rule.cfg.per == "key" else "*"
                _specs(specs, rule.cfg, f"{self.tag}:rule:{rule.rid}:{who}", rule.label)
        return specs


DIM_NAMES = _DIM_NAMES  # rpm, tpm, inflight, budget: by dimension


def _specs(out: list[ScopeSpec], spec: LimitSpec | LimitRule, base: str, label: str) -> None:
    if spec.rpm is not None:
        out.append(ScopeSpec(f"{base}:rpm", REQUESTS, label, KIND_RATE, float(spec.rpm),
                             spec.rpm / 60.0, Limit.rate(spec.rpm, 60.0)))
    if spec.tpm is not None:
        out.append(ScopeSpec(f"{base}:tpm", TOKENS, label, KIND_RATE, float(spec.tpm),
                             spec.tpm / 60.0, Limit.rate(spec.tpm, 60.0)))
    if spec.max_inflight is not None:
        out.append(ScopeSpec(f"{base}:inflight", INFLIGHT, label, KIND_CONCURRENCY,
                             float(spec.max_inflight), 0.0,
                             Limit.concurrency(spec.max_inflight)))
    b: BudgetConfig | None = spec.budget_usd
    if b is not None:
        out.append(ScopeSpec(f"{base}:budget:{b.period}", USD, label, KIND_BUDGET,
                             float(b.amount), _PERIOD_S[b.period],
                             Limit.budget(b.amount, b.period)))
