"""The routing snapshot: configuration turned into ready-to-use runtime objects.

Built once per configuration (start and every reload) and swapped whole, so a
request sees one consistent view from start to end. Everything constant per
target (request line, credentials, response headers) is rendered to bytes
here, not per request. Live state that must survive a reload (target health
and latency, provider quotas) is carried over from the previous snapshot for
targets and providers that did not change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from fastgw.config import Config, ModelConfig, ProviderConfig, RetryConfig
from fastgw.metrics import TARGET_HEALTHY, VARIANTS, Accumulator, batched
from fastgw.pipeline.cache import CacheFilter, CacheStore
from fastgw.pipeline.feedback import FeedbackStore, VariantFeedback
from fastgw.pipeline.filters import Chain, Filter, compile_chain
from fastgw.pipeline.guardrails import guardrail_filters
from fastgw.pipeline.internal import Internal
from fastgw.pipeline.orchestrate import orchestrate
from fastgw.pipeline.transform import TransformFilter
from fastgw.providers import registry
from fastgw.providers.base import Translation
from fastgw.routing.balancer import Balancer, TargetState, make_balancer
from fastgw.routing.budget import RetryBudget
from fastgw.routing.health import Health
from fastgw.routing.quota import ProviderQuota
from fastgw.upstream.client import Endpoint, Timeouts, UpstreamClient
from fastgw.upstream.pool import Pool

if TYPE_CHECKING:
    from fastgw.pipeline.cascade import Escalation


@dataclass(slots=True, eq=False)
class ProviderRuntime:
    cfg: ProviderConfig
    name: str
    endpoint: Endpoint
    pool: Pool
    timeouts: Timeouts
    secrets: tuple[bytes, ...]  # values scrubbed from anything sent back to clients
    quota: ProviderQuota | None = None


# How a client endpoint reaches one target: the constant start of the upstream
# request (request line, host, credentials, content type) and the translation
# between the dialects (None: bytes pass through).
TargetPlan = tuple[bytes, Translation | None]


@dataclass(slots=True, eq=False)
class TargetRuntime:
    provider: ProviderRuntime
    model: str
    weight: float
    state: TargetState
    # x-fastgw-provider / x-fastgw-model lines, rendered once
    response_headers: bytes
    # Client endpoint -> its plan on this target; None: the target cannot serve it.
    plans: dict[str, TargetPlan | None] = field(default_factory=dict)
    dialect: str = registry.OPENAI  # what the provider speaks
    model_json: bytes = b""  # ``model`` as a JSON string literal (set from it)

    def __post_init__(self) -> None:
        self.model_json = orjson.dumps(self.model)


def _plans(provider: ProviderRuntime, deployment: str) -> dict[str, TargetPlan | None]:
    plans: dict[str, TargetPlan | None] = {}
    ep = provider.endpoint
    for endpoint in registry.CLIENT_DIALECT:
        how = registry.plan(endpoint, provider.cfg.kind)
        prefix = None if how is None else registry.request_prefix(
            provider.cfg, ep.host_header, ep.path_prefix, how[0], deployment)
        plans[endpoint] = None if how is None or prefix is None else (prefix, how[1])
    return plans


@dataclass(slots=True, eq=False)
class Variant:
    name: str
    model: str
    weight: float
    requests: Accumulator  # fastgw_variant_requests_total{model,variant}, batched
    header: bytes = b""  # the answer's x-fastgw-variant line
    # The model it names, with the variant's feedback filter last in its chain.
    route: ModelRoute | None = None


@dataclass(slots=True, eq=False)
class ModelRoute:
    name: str
    cfg: ModelConfig
    targets: tuple[TargetRuntime, ...]
    balancer: Balancer | None
    retry: RetryConfig
    input_per_token: float
    output_per_token: float
    variants: tuple[Variant, ...] = ()
    variant_total: float = 0.0
    # The model's features, compiled once (pipeline/filters.py); None: a plain
    # route, which pays one falsy check per phase for all of them.
    chain: Chain | None = None
    # The targets' live states, in the targets' order (what the balancer ranks).
    states: tuple[TargetState, ...] = ()
    # Client endpoints some of its targets cannot serve (they are skipped).
    partial: frozenset[str] = frozenset()
    # Prompt-cache reads and writes, per token (the input price when not set),
    # and whether answers are read for those counts (a cache price is set, or a
    # target speaks Anthropic, whose input count leaves the cached tokens out).
    cached_input_per_token: float = 0.0
    cache_write_per_token: float = 0.0
    usage_detail: bool = False
    # A cascade step's route whose answers may escalate to the next step
    # (pipeline/cascade.py); None everywhere else.
    escalation: Escalation | None = None
    # Where this route's fallbacks are looked up, when not in the snapshot's models:
    # a variant's copies, which keep the variant's feedback filter.
    fallback_routes: dict[str, ModelRoute] | None = None


@dataclass(slots=True, eq=False)
class Snapshot:
    config: Config
    providers: dict[str, ProviderRuntime]
    models: dict[str, ModelRoute]
    retry_budget: RetryBudget
    created: int = 0
    cache: CacheStore | None = None  # the response cache's store, when a model has one
    # Requests the gateway makes to itself (judges, shadows); one per process.
    internal: Internal = field(default_factory=Internal)
    feedback: FeedbackStore | None = None  # answers to score, when a model has variants

    def models_body(self, names: list[str] | None = None) -> bytes:
        """``GET /v1/models`` answer for the given model names (all by default)."""
        chosen = self.models.values() if names is None else [self.models[n] for n in names
                                                              if n in self.models]
        return orjson.dumps({"object": "list", "data": [model_object(m, self.created)
                                                         for m in chosen]})


def model_object(route: ModelRoute, created: int) -> dict[str, object]:
    return {"id": route.name, "object": "model", "created": created, "owned_by": "fastgw"}


def _header_value(value: str) -> bytes:
    # CR/LF can never reach a header; anything beyond latin-1 is sent as UTF-8 bytes.
    return value.replace("\r", " ").replace("\n", " ").encode("utf-8")


def _ssl_context(p: ProviderConfig) -> ssl.SSLContext | None:
    if not p.base_url.startswith("https:"):
        return None
    ctx = ssl.create_default_context(cafile=p.ca_file)
    if not p.tls_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def build_snapshot(config: Config, client: UpstreamClient, created: int,
                   loop: asyncio.AbstractEventLoop | None = None,
                   previous: Snapshot | None = None) -> Snapshot:
    loop = loop or client.loop
    old_states: dict[tuple[str, str, str], TargetState] = {}
    old_quotas: dict[str, ProviderQuota] = {}
    if previous is not None:
        for old_route in previous.models.values():
            for old in old_route.targets:
                old_states[(old_route.name, old.provider.name, old.model)] = old.state
        for old_provider in previous.providers.values():
            if old_provider.quota is not None:
                old_quotas[old_provider.name] = old_provider.quota
    providers: dict[str, ProviderRuntime] = {}
    for pc in config.providers:
        ep = Endpoint.parse(pc.base_url)
        to = pc.timeouts
        pool = client.pool(ep, max_connections=pc.max_connections,
                           idle_s=pc.idle_connection_s, connect_s=to.connect_s,
                           ssl_context=_ssl_context(pc))
        secrets = tuple(s.encode() for s in (pc.api_key,) if s)
        quota = None
        if pc.limits is not None:
            kept = old_quotas.get(pc.name)
            quota = kept if kept is not None and kept.cfg == pc.limits else \
                ProviderQuota(pc.limits, loop)
        providers[pc.name] = ProviderRuntime(
            cfg=pc, name=pc.name, endpoint=ep, pool=pool,
            timeouts=to,
            secrets=secrets, quota=quota)
    models: dict[str, ModelRoute] = {}
    for mc in config.models:
        targets = []
        for tc in mc.targets:
            state = old_states.get((mc.name, tc.provider, tc.model))
            if state is None or state.weight != tc.weight:
                state = TargetState(f"{tc.provider}/{tc.model}", tc.weight,
                                    Health(config.health, _gauge(tc.provider, tc.model)))
                TARGET_HEALTHY.labels(tc.provider, tc.model).set(1)
            provider = providers[tc.provider]
            targets.append(TargetRuntime(
                provider=provider, model=tc.model, weight=tc.weight, state=state,
                response_headers=(b"x-fastgw-provider: " + _header_value(tc.provider)
                                  + b"\r\nx-fastgw-model: " + _header_value(tc.model)
                                  + b"\r\n"),
                plans=_plans(provider, tc.model), dialect=registry.DIALECT[provider.cfg.kind]))
        price = mc.price
        input_price = price.input_per_mtok / 1e6 if price else 0.0
        cached_price = price.cached_input_per_mtok if price else None
        write_price = price.cache_write_per_mtok if price else None
        variants = tuple(Variant(v.name or v.model, v.model, v.weight,
                                 batched(VARIANTS, mc.name, v.name or v.model),
                                 b"x-fastgw-variant: " + _header_value(v.name or v.model)
                                 + b"\r\n")
                         for v in mc.variants)
        models[mc.name] = ModelRoute(
            name=mc.name, cfg=mc, targets=tuple(targets),
            balancer=make_balancer(mc.balance, [t.state for t in targets]) if targets else None,
            retry=mc.retry,
            input_per_token=input_price,
            output_per_token=price.output_per_mtok / 1e6 if price else 0.0,
            variants=variants, variant_total=sum(v.weight for v in variants),
            states=tuple(t.state for t in targets),
            cached_input_per_token=input_price if cached_price is None else cached_price / 1e6,
            cache_write_per_token=input_price if write_price is None else write_price / 1e6,
            usage_detail=cached_price is not None or write_price is not None or any(
                t.dialect == registry.ANTHROPIC for t in targets),
            partial=frozenset(e for t in targets for e, p in t.plans.items() if p is None))
    budget = previous.retry_budget if previous is not None and \
        previous.config.retry_budget == config.retry_budget else RetryBudget(config.retry_budget)
    cache = _features(config, models, loop, previous, client)
    internal = previous.internal if previous is not None else Internal()
    orchestrate(models, internal)
    feedback = _variants(config, models, loop, previous)
    return Snapshot(config=config, providers=providers, models=models, retry_budget=budget,
                    created=created, cache=cache, feedback=feedback, internal=internal)


def _features(config: Config, models: dict[str, ModelRoute], loop: asyncio.AbstractEventLoop,
              previous: Snapshot | None, client: UpstreamClient) -> CacheStore | None:
    """Each model's filter chain (pipeline/filters.py), in the order a request meets
    them; the cache's store, kept from the previous snapshot when its settings are
    the same (its entries too)."""
    cached = [r for r in models.values()
              if (r.cfg.cache if r.cfg.cache is not None else config.cache.enabled)]
    store = None
    if cached:
        kept = previous.cache if previous is not None else None
        store = kept if kept is not None and kept.same(config.cache, config.redis) else \
            CacheStore(config.cache, config.redis, loop)
    for route in models.values():
        filters: list[Filter] = []
        _policy(route, filters, client)
        if store is not None and route in cached:
            filters.append(CacheFilter(store, route))
        route.chain = compile_chain(tuple(filters))
    return store


def _variants(config: Config, models: dict[str, ModelRoute], loop: asyncio.AbstractEventLoop,
              previous: Snapshot | None) -> FeedbackStore | None:
    """Each variant's route: a copy of the model it names (and of the models it may
    fall back to) whose chain ends with the variant's feedback filter, so only
    requests served through a variant pay for it. The store of answers to score,
    kept from the previous snapshot when its settings are the same."""
    with_variants = [r for r in models.values() if r.variants]
    if not with_variants:
        return None
    kept = previous.feedback if previous is not None else None
    store = kept if kept is not None and kept.same(config.feedback, config.redis) else \
        FeedbackStore(config.feedback, config.redis, loop)
    for route in with_variants:
        for variant in route.variants:
            tagged = VariantFeedback(store, route.name, variant.name)
            copies: dict[str, ModelRoute] = {}
            todo = [variant.model]
            while todo:
                name = todo.pop()
                if name in copies:
                    continue
                base = models[name]
                filters = (base.chain.filters if base.chain else ()) + (tagged,)
                copies[name] = dataclasses.replace(base, chain=compile_chain(filters),
                                                   fallback_routes=copies)
                todo += base.cfg.fallbacks + base.cfg.context_fallbacks
            variant.route = copies[variant.model]
    return store
def _policy(route: ModelRoute, filters: list[Filter], client: UpstreamClient) -> None:
    """A model's transform, then its guardrails (before its cache: the key and the
    stored answers are of the transformed request and the guarded answer)."""
    cfg = route.cfg
    if cfg.transform is not None:
        filters.append(TransformFilter(cfg.transform))
    if cfg.guardrails:
        filters.extend(guardrail_filters(route.name, cfg.guardrails, client))


def _gauge(provider: str, model: str) -> Callable[[bool], None]:
    child = TARGET_HEALTHY.labels(provider, model)

    def changed(healthy: bool) -> None:
        child.set(1 if healthy else 0)

    return changed
