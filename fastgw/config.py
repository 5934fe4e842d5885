"""Configuration: YAML in, frozen dataclasses out, validated once.

``load_config(path)`` reads YAML, replaces ``${VAR}`` / ``${VAR:-default}`` from
the environment, builds the dataclasses below field by field and collects
*every* error with its YAML path (``models[2].targets[0].provider: unknown
provider 'opnai'``) before raising one :class:`~fastgw.errors.ConfigError`.
Unknown keys are errors. The dataclasses are the single source of truth for
names and defaults; the loader reads their type hints, so adding an option is
adding a field.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from fastgw.errors import ConfigError

ProviderKind = Literal["openai", "azure", "anthropic", "openai-compatible"]
BalanceKind = Literal["round-robin", "weighted", "least-inflight", "latency", "consistent-hash"]


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 65536
    keepalive_timeout_s: float = 75.0
    header_timeout_s: float = 10.0
    drain_timeout_s: float = 30.0
    trusted_proxies: tuple[str, ...] = ()
    backlog: int = 2048
    # A client's FIN while its request is in flight: it left (as nginx), or it
    # only half-closed and still reads the answer.
    client_half_close: Literal["disconnect", "finish"] = "disconnect"
    # Local limits and budgets kept across restarts (limits_backend: local): the
    # table lives in a file here, written to disk every state_flush_s and at drain.
    state_dir: str | None = None
    state_flush_s: float = 5.0
    # After requests go upstream, the event loop polls this long (microseconds)
    # instead of sleeping while their answers come: lower added latency at low
    # rates for that much CPU per request at most; 0 turns it off.
    busy_poll_us: int = 250


@dataclass(frozen=True, slots=True)
class TimeoutsConfig:
    connect_s: float = 5.0
    first_byte_s: float = 60.0
    idle_s: float = 30.0
    total_s: float = 600.0


@dataclass(frozen=True, slots=True)
class ProviderLimitsConfig:
    """The provider's own quota: requests wait in a bounded fair queue instead of
    being sent into the provider's 429s."""

    rpm: int | None = None
    tpm: int | None = None
    max_inflight: int | None = None
    max_queue: int = 1000
    queue_timeout_s: float = 30.0
    # Requests that may go out at once after a quiet spell (default: a minute's rpm).
    burst: int | None = None


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: ProviderKind
    base_url: str
    api_key: str | None = None
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    max_connections: int = 256
    idle_connection_s: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict)
    api_version: str | None = None
    limits: ProviderLimitsConfig | None = None
    probe: bool = False  # cheap active health probes (GET {base_url}/models)
    tls_verify: bool = True
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class TargetConfig:
    provider: str
    model: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class PriceConfig:
    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0  # reasoning tokens are output tokens (both APIs count them so)
    cached_input_per_mtok: float | None = None  # prompt-cache reads; default: input's price
    cache_write_per_mtok: float | None = None  # prompt-cache writes (Anthropic); default: input's


RetryOn = Literal["connect", "timeout", "429", "408", "409", "5xx"]


@dataclass(frozen=True, slots=True)
class RetryConfig:
    attempts: int = 2  # total tries on the model's targets (1 = no retry)
    retry_on: tuple[RetryOn, ...] = ("connect", "timeout", "429", "5xx")
    backoff_ms: float = 50.0
    max_backoff_ms: float = 2000.0


@dataclass(frozen=True, slots=True)
class VariantConfig:
    model: str
    weight: float = 1.0
    name: str | None = None


# -- orchestration: cascades and shadow traffic (pipeline/cascade.py, shadow.py) --

EscalateOn = Literal["length", "content_filter", "error"]


@dataclass(frozen=True, slots=True)
class JudgeConfig:
    """A model asked whether a cascade step fits the request: ``prompt`` with
    ``{input}`` replaced by the last user message; the step is used when the
    judge's answer matches the regex ``accept``."""

    model: str
    prompt: str
    accept: str
    timeout_ms: float = 2000.0
    on_error: Literal["accept", "escalate"] = "escalate"


@dataclass(frozen=True, slots=True)
class AcceptIfConfig:
    max_prompt_tokens: int | None = None
    header: dict[str, str] = field(default_factory=dict)  # header name -> glob
    metadata: dict[str, str] = field(default_factory=dict)  # metadata key -> glob
    judge: JudgeConfig | None = None


@dataclass(frozen=True, slots=True)
class CascadeStepConfig:
    model: str
    accept_if: AcceptIfConfig | None = None  # None: the step takes every request
    escalate_on: tuple[EscalateOn, ...] = ()


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    model: str
    percent: float = 100.0
    max_inflight: int = 16
# --- transforms and guardrails (per model) -----------------------------------


@dataclass(frozen=True, slots=True)
class RequestTransformConfig:
    """Edits of the client's request body (top-level fields), in this order."""

    set: Mapping[str, Any] = field(default_factory=dict)  # always
    default: Mapping[str, Any] = field(default_factory=dict)  # when absent
    cap: Mapping[str, float] = field(default_factory=dict)  # numeric maximum
    drop: tuple[str, ...] = ()  # removed
    prepend_system: str | None = None  # text put before the system prompt


@dataclass(frozen=True, slots=True)
class HeadersTransformConfig:
    """Headers of the upstream request: forwarded client headers removed, added."""

    add: Mapping[str, str] = field(default_factory=dict)
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TransformConfig:
    request: RequestTransformConfig = field(default_factory=RequestTransformConfig)
    headers: HeadersTransformConfig = field(default_factory=HeadersTransformConfig)


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """A check of what goes in (the conversation) or out (the answer)."""

    kind: Literal["regex", "webhook"]
    apply_to: Literal["input", "output", "both"] = "both"
    name: str | None = None  # the metrics' label (default: its index and kind)
    # regex
    pattern: str | None = None
    action: Literal["redact", "deny"] = "redact"
    replacement: str = "[REDACTED]"
    window_chars: int = 256  # a stream's text held back at most, per guardrail
    # webhook
    url: str | None = None
    timeout_ms: float = 1000.0
    on_error: Literal["allow", "deny"] = "deny"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    targets: tuple[TargetConfig, ...] = ()
    balance: BalanceKind = "weighted"
    hash_key: str | None = None  # header:NAME | key | body:user | prefix
    price: PriceConfig | None = None
    on_disconnect: Literal["cancel", "drain_for_usage"] = "cancel"
    fallbacks: tuple[str, ...] = ()
    context_fallbacks: tuple[str, ...] = ()
    retry: RetryConfig = field(default_factory=RetryConfig)
    variants: tuple[VariantConfig, ...] = ()
    sticky: str | None = None  # key | header:NAME
    # Translation between dialects: the max_tokens an Anthropic target is sent
    # when the client set none (4096 when unset), and whether a parameter the
    # target cannot express is dropped (else the request is refused, 400).
    default_max_tokens: int | None = None
    drop_unsupported_params: bool = False
    cache: bool | None = None  # None: cache.enabled decides
    cascade: tuple[CascadeStepConfig, ...] = ()  # steps tried in order (instead of targets)
    shadow: ShadowConfig | None = None  # a share of requests mirrored to another model
    transform: TransformConfig | None = None
    guardrails: tuple[GuardrailConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Passive outlier ejection and optional active probes, for every target."""

    consecutive_failures: int = 5
    error_ratio: float = 0.5
    min_requests: int = 20
    window_s: float = 10.0
    base_ejection_s: float = 5.0
    max_ejection_s: float = 300.0
    probe_interval_s: float = 10.0


@dataclass(frozen=True, slots=True)
class RetryBudgetConfig:
    """Retries in flight may be at most ``percent`` of the requests in flight, but
    ``min_concurrent`` are always allowed (as Envoy's retry budget)."""

    percent: float = 20.0
    min_concurrent: int = 3


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    amount: float
    period: Literal["hour", "day", "week", "month"] = "month"


@dataclass(frozen=True, slots=True)
class LimitSpec:
    rpm: int | None = None
    tpm: int | None = None
    max_inflight: int | None = None
    budget_usd: BudgetConfig | None = None


@dataclass(frozen=True, slots=True)
class LimitMatch:
    """Which requests a rule applies to; each given field must match (globs)."""

    key: str | None = None
    model: str | None = None
    tier: str | None = None
    provider: str | None = None


@dataclass(frozen=True, slots=True)
class LimitRule:
    match: LimitMatch = field(default_factory=LimitMatch)
    rpm: int | None = None
    tpm: int | None = None
    max_inflight: int | None = None
    budget_usd: BudgetConfig | None = None
    per: Literal["key", "rule"] = "key"  # one count per caller, or one shared count


@dataclass(frozen=True, slots=True)
class KeyConfig:
    name: str
    key_sha256: str
    models: tuple[str, ...] = ("*",)
    tier: str | None = None
    limits: LimitSpec | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class JwtClaimsConfig:
    subject: str = "sub"
    models: str | None = None
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class JwtConfig:
    issuer: str | None = None
    audience: str | None = None
    algorithms: tuple[str, ...] = ("RS256",)
    jwks_url: str | None = None
    secret: str | None = None
    public_key_pem: str | None = None
    leeway_s: float = 30.0
    claims: JwtClaimsConfig = field(default_factory=JwtClaimsConfig)
    jwks_cache_s: float = 300.0
    jwks_min_refresh_s: float = 5.0


@dataclass(frozen=True, slots=True)
class AuthConfig:
    keys: tuple[KeyConfig, ...] = ()
    jwt: JwtConfig | None = None
    ip_allow: tuple[str, ...] = ()
    ip_deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    on_error: Literal["local", "allow", "deny"] = "local"
    timeout_s: float = 0.25
    key_prefix: str = "fastgw"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The response cache: exact match on the normalised request."""

    enabled: bool = False  # for every model; models[].cache overrides per model
    backend: Literal["memory", "redis"] = "memory"  # redis: the `redis` section's server
    ttl_s: float = 3600.0
    max_entries: int = 10_000  # memory backend
    max_bytes: int = 256 * 1024 * 1024  # memory backend
    only_deterministic: bool = True  # only requests with temperature 0 (or embeddings)
    scope: Literal["key", "global"] = "key"  # entries shared only by one caller, or by all


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    """Scores for the answers of models with variants (``POST /v1/feedback``)."""

    names: tuple[str, ...] = ("score",)  # the accepted score names (a metric label)
    backend: Literal["memory", "redis"] = "memory"  # redis: the `redis` section's server
    ttl_s: float = 86400.0  # how long an answer can be scored
    max_entries: int = 100_000  # answers remembered in memory (the oldest forgotten first)


@dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    metrics_path: str = "/metrics"
    # stdout | stderr | off | a file path (YAML's bare off/false also mean off)
    access_log: str | bool = "stdout"
    log_format: Literal["json"] = "json"
    # Traces: spans exported over OTLP/HTTP (protobuf) to {otlp_endpoint}/v1/traces,
    # with otlp_headers on every export (an authenticated collector's token);
    # trace_sample_ratio of the traces are recorded, decided once per trace id.
    otlp_endpoint: str | None = None
    otlp_headers: Mapping[str, str] = field(default_factory=dict)
    trace_sample_ratio: float = 1.0
    otlp_timeout_s: float = 5.0  # one export's limit: a slow collector loses its batch
    # Per-key labels (fastgw_cost_usd_total{key}) are opt-in and capped: past
    # max_key_labels distinct keys, the rest are counted under "_other".
    key_labels: bool = False
    max_key_labels: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.access_log, bool):
            object.__setattr__(self, "access_log", "stdout" if self.access_log else "off")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    key_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: tuple[LimitRule, ...] = ()
    limits_backend: Literal["local", "redis"] = "local"
    redis: RedisConfig = field(default_factory=RedisConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    retry_budget: RetryBudgetConfig = field(default_factory=RetryBudgetConfig)
    # Set by the loader, not by YAML: where the file came from (for reloads).
    source: str | None = field(default=None, metadata={"internal": True})
    demo: bool = field(default=False, metadata={"internal": True})

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)

    def summary(self) -> str:
        return (f"{len(self.providers)} providers, {len(self.models)} models, "
                f"listening on {self.server.host}:{self.server.port} "
                f"with {self.server.workers} worker(s)")


# --- YAML reading -------------------------------------------------------------
#
# Scalars are read as YAML 1.2's core schema does, not as YAML 1.1 (PyYAML's
# default): only true/false are booleans (`on`, `off`, `yes`, `no` stay
# strings), there are no timestamps (`api_version: 2024-10-21` is a string),
# `0755` is 755 and `1:30` is a string. Numbers keep the text they were
# written as, so a string field given `3.10` gets "3.10", not "3.1".

_BOOL_TAG = "tag:yaml.org,2002:bool"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 core-schema scalars."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in (_BOOL_TAG, _INT_TAG, _FLOAT_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(_INT_TAG, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                              list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+.0123456789"))


class _YamlInt(int):
    """An integer as written in the file (``text``)."""

    text: str


class _YamlFloat(float):
    """A number with a fraction or an exponent as written in the file (``text``)."""

    text: str


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        value = _YamlInt(int(text[2:], 8))
    elif text.startswith("0x"):
        value = _YamlInt(int(text[2:], 16))
    else:
        try:
            value = _YamlInt(int(text, 10))
        except ValueError:  # more digits than Python converts (sys.get_int_max_str_digits)
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(text)} digits is too long",
                node.start_mark) from None
    value.text = text
    return value


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node))
    lowered = text.lower()
    if lowered.endswith(".inf"):
        number = float("-inf") if lowered.startswith("-") else float("inf")
    elif lowered == ".nan":
        number = float("nan")
    else:
        number = float(text)
    value = _YamlFloat(number)
    value.text = text
    return value


_Loader.add_constructor(_INT_TAG, _construct_int)
_Loader.add_constructor(_FLOAT_TAG, _construct_float)


def _text(value: Any) -> str | None:
    """A scalar as the string a string field would get (None: not a scalar)."""
    if isinstance(value, _YamlInt | _YamlFloat):
        return value.text
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


# --- environment substitution ------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Substituted(str):
    """A string produced by ``${...}`` substitution: may be coerced to a number."""

    __slots__ = ()


# Values a configuration may hold once its aliases are expanded: far beyond any real
# one, and a bound on YAML's "billion laughs" (anchors of anchors of anchors...).
MAX_VALUES = 100_000


class _Expansion:
    """What :func:`_substitute` has walked: the containers on its way down (an alias
    used inside its own anchor is a cycle) and how many values in all."""

    __slots__ = ("active", "count")

    def __init__(self) -> None:
        self.active: set[int] = set()
        self.count = 0


def _substitute(node: Any, path: str, errors: list[tuple[str, str]],
                seen: _Expansion | None = None) -> Any:
    if seen is None:
        seen = _Expansion()
    seen.count += 1
    if seen.count == MAX_VALUES + 1:
        errors.append((path, f"the configuration expands to more than {MAX_VALUES} values "
                             "(anchors and aliases repeated within each other)"))
    if seen.count > MAX_VALUES:
        return None
    if isinstance(node, dict | list):
        if id(node) in seen.active:
            errors.append((path, "an alias refers to a mapping or list that contains it"))
            return None
        seen.active.add(id(node))
        try:
            if isinstance(node, dict):
                return {k: _substitute(v, _join(path, str(k)), errors, seen)
                        for k, v in node.items()}
            return [_substitute(v, f"{path}[{i}]", errors, seen) for i, v in enumerate(node)]
        finally:
            seen.active.discard(id(node))
    if isinstance(node, str):
        if "${" not in node:
            return node

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = os.environ.get(name)
            if value is None:
                if default is None:
                    errors.append((path, f"environment variable {name} is not set "
                                         f"(use ${{{name}:-default}} to give a default)"))
                    return ""
                return default
            return value

        return _Substituted(_VAR.sub(repl, node))
    return node


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_\-]+")


def _join(path: str, key: str) -> str:
    """The YAML path of ``key`` under ``path``; a key that is not a plain name (empty,
    with spaces, dots, brackets, colons or control characters) is quoted:
    ``server["a b"]``, ``[""]``."""
    if _PLAIN_KEY.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


# --- generic builder from type hints -----------------------------------------

_MISSING = object()
_TRUE_WORDS = ("true", "yes", "on")
_FALSE_WORDS = ("false", "no", "off")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return "a list"
    if origin in (dict, Mapping) or tp is Mapping:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _literal(args: tuple[Any, ...], value: Any, path: str,
             errors: list[tuple[str, str]]) -> Any:
    if isinstance(value, str) and value in args:
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool):
        # An unquoted status code (retry_on: [429]) is the string it stands for.
        if str(int(value)) in args:
            return str(int(value))
        statuses = [a for a in args if isinstance(a, str) and a.isdigit()]
        if statuses:
            hint = ""
            if 500 <= value < 600 and "5xx" in args:
                hint = "; '5xx' covers every 5xx status"
            elif 400 <= value < 500:
                hint = ("; any other 4xx is the client's own error: it is passed on, "
                        "never retried")
            errors.append((path, f"status {int(value)} is not accepted here: expected one of "
                                 f"{', '.join(repr(a) for a in args)}{hint}"))
            return _MISSING
    if isinstance(value, bool):
        errors.append((path, f"expected one of {', '.join(repr(a) for a in args)}, got "
                             f"{str(value).lower()} (quote the value)"))
        return _MISSING
    errors.append((path, f"expected one of {', '.join(repr(a) for a in args)}, got "
                   f"{_describe(value)}" + _suggest(value, [str(a) for a in args])))
    return _MISSING


def _build(tp: Any, value: Any, path: str, errors: list[tuple[str, str]]) -> Any:
    """Convert ``value`` to type ``tp``; on error record it and return _MISSING."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _build(inner[0], value, path, errors)
        for alt in inner:
            trial: list[tuple[str, str]] = []
            built = _build(alt, value, path, trial)
            if not trial:
                return built
        errors.append((path, f"expected {' or '.join(_type_name(a) for a in inner)}"))
        return _MISSING
    if tp is Any:  # a JSON value (transforms' request.set / default)
        return _json_value(value, path, errors)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append((path, f"expected a mapping, got {_describe(value)}"))
            return _MISSING
        return _build_dataclass(tp, value, path, errors)
    if origin is Literal:
        return _literal(args, value, path, errors)
    if origin is tuple:
        if not isinstance(value, list):
            errors.append((path, f"expected a list, got {_describe(value)}"))
            return _MISSING
        items = [_build(args[0], v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return _MISSING if any(x is _MISSING for x in items) else tuple(items)
    if origin in (dict, Mapping) or origin is getattr(typing, "Mapping", None) or (
            origin is not None and issubclass(origin, Mapping)):
        if not isinstance(value, dict):
            errors.append((path, f"expected a mapping, got {_describe(value)}"))
            return _MISSING
        out = {str(_text(k) or k): _build(args[1], v, _join(path, str(_text(k) or k)), errors)
               for k, v in value.items()}
        return _MISSING if any(x is _MISSING for x in out.values()) else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            word = value.lower()
            if word in _TRUE_WORDS or (isinstance(value, _Substituted) and word == "1"):
                return True
            if word in _FALSE_WORDS or (isinstance(value, _Substituted) and word == "0"):
                return False
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        if isinstance(value, _Substituted):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, _Substituted):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        text = _text(value)
        if text is not None:
            return text
        if isinstance(value, bool):
            errors.append((path, f"expected a string, got {str(value).lower()} (quote the "
                                 "value to make it a string)"))
            return _MISSING
    else:  # pragma: no cover - a field type the loader does not know is a bug
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    errors.append((path, f"expected {_type_name(tp)}, got {_describe(value)}"))
    return _MISSING


def _json_value(value: Any, path: str, errors: list[tuple[str, str]]) -> Any:
    """``value`` as plain JSON (str, int, float, bool, None, lists, mappings)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            errors.append((path, "expected a JSON value, got a number JSON cannot hold"))
            return _MISSING
        return float(value)
    if isinstance(value, list):
        items = [_json_value(v, f"{path}[{i}]", errors) for i, v in enumerate(value)]
        return _MISSING if any(x is _MISSING for x in items) else items
    if isinstance(value, dict):
        out = {str(_text(k) or k): _json_value(v, _join(path, str(_text(k) or k)), errors)
               for k, v in value.items()}
        return _MISSING if any(x is _MISSING for x in out.values()) else out
    errors.append((path, f"expected a JSON value, got {_describe(value)}"))
    return _MISSING


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, _YamlInt | _YamlFloat):
        return value.text
    if isinstance(value, str) and (isinstance(value, _Substituted) or len(value) > 32):
        # Errors are printed and logged (a refused reload): a key put in the wrong
        # place, or a ${VAR} (where keys come from), is not shown.
        return f"a string of {len(value)} characters (not shown: it may be a secret)"
    return f"{value!r}"


def _suggest(value: Any, choices: list[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _build_dataclass(cls: Any, data: dict[str, Any], path: str,
                     errors: list[tuple[str, str]]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key in data:
        if key not in fields:
            errors.append((_join(path, str(key)), "unknown key" + _suggest(key, list(fields))))
    ok = True
    for name, f in fields.items():
        if name in data:
            built = _build(hints[name], data[name], _join(path, name), errors)
            if built is _MISSING:
                ok = False
            else:
                kwargs[name] = built
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            errors.append((_join(path, name), "required"))
            ok = False
    if not ok:
        return _MISSING
    obj = cls(**kwargs)
    check = _CHECKS.get(cls)
    if check is not None:
        # Each part is checked as soon as it is built, whatever became of the rest:
        # a broken entry elsewhere hides none of these errors.
        check(obj, path, errors)
    return obj


# --- semantic checks ---------------------------------------------------------
#
# One check per dataclass, run by the builder on every entry that built (with
# its path); checks across entries (names, references) run on the YAML as read,
# so they too see every entry whatever shape the others are in.

Errors = list[tuple[str, str]]


def _at_least(obj: Any, path: str, names: tuple[str, ...], floor: int, errors: Errors) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value < floor:
            errors.append((_join(path, name), f"must be at least {floor}"))


def _positive(obj: Any, path: str, names: tuple[str, ...], errors: Errors) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            errors.append((_join(path, name), "must be greater than 0"))


def _check_server(s: ServerConfig, path: str, errors: Errors) -> None:
    if not 0 <= s.port <= 65535:
        errors.append((_join(path, "port"), "must be between 0 and 65535"))
    _at_least(s, path, ("workers", "max_body_bytes", "max_header_bytes", "backlog"), 1, errors)
    _positive(s, path, ("keepalive_timeout_s", "header_timeout_s", "drain_timeout_s",
                        "state_flush_s"), errors)
    if not 0 <= s.busy_poll_us <= 10_000:
        errors.append((_join(path, "busy_poll_us"),
                       "must be between 0 (off) and 10000 microseconds"))
    if s.state_dir is not None and not s.state_dir.strip():
        errors.append((_join(path, "state_dir"), "must be a directory path (or left out)"))
    for i, cidr in enumerate(s.trusted_proxies):
        _check_cidr(cidr, f"{path}.trusted_proxies[{i}]", errors)


def _check_provider(p: ProviderConfig, path: str, errors: Errors) -> None:
    url = urlsplit(p.base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        errors.append((f"{path}.base_url",
                       f"must be an http:// or https:// URL, got {_describe(p.base_url)}"))
    _at_least(p, path, ("max_connections",), 1, errors)
    _positive(p.timeouts, f"{path}.timeouts", ("connect_s", "first_byte_s", "idle_s", "total_s"),
              errors)
    if p.kind == "azure" and not p.api_version:
        errors.append((f"{path}.api_version", "required for kind 'azure' (e.g. 2024-10-21)"))


def _check_provider_limits(lim: ProviderLimitsConfig, path: str, errors: Errors) -> None:
    _at_least(lim, path, ("rpm", "tpm", "max_inflight", "burst"), 1, errors)
    if lim.max_queue < 0:
        errors.append((f"{path}.max_queue", "must be 0 or more"))
    _positive(lim, path, ("queue_timeout_s",), errors)


_HASH_KEY = re.compile(r"header:[A-Za-z0-9-]+|key|body:user|prefix")
_STICKY = re.compile(r"header:[A-Za-z0-9-]+|key")


def _check_model(m: ModelConfig, path: str, errors: Errors) -> None:
    kinds = [k for k in ("targets", "variants", "cascade") if getattr(m, k)]
    if len(kinds) > 1:
        errors.append((path, "a model has targets, variants or cascade: one of them, not "
                             + " and ".join(kinds)))
    elif not kinds:
        errors.append((f"{path}.targets", "a model needs at least one target (or variants, "
                                          "or a cascade)"))
    if m.shadow is not None and m.variants:
        errors.append((f"{path}.shadow", "a model with variants has no shadow of its own; "
                                         "set it on the variants' models"))
    if m.cascade and m.cascade[-1].escalate_on:
        errors.append((f"{path}.cascade[{len(m.cascade) - 1}].escalate_on",
                       "the last step has no next step to escalate to"))
    if m.sticky is not None and not _STICKY.fullmatch(m.sticky):
        errors.append((f"{path}.sticky", f"expected 'key' or 'header:NAME', got {m.sticky!r}"))
    if m.hash_key is not None and not _HASH_KEY.fullmatch(m.hash_key):
        errors.append((f"{path}.hash_key", "expected 'header:NAME', 'key', 'body:user' or "
                                           f"'prefix', got {m.hash_key!r}"))
    _at_least(m, path, ("default_max_tokens",), 1, errors)
    variant_names = [v.name or v.model for v in m.variants]
    for j, name in enumerate(variant_names):
        if name in variant_names[:j]:  # one label, one header value, one arm of the test
            errors.append((f"{path}.variants[{j}].name", f"{name!r} names another variant "
                                                         "already; give each a unique name"))
    if m.balance == "consistent-hash" and m.hash_key is None and m.targets:
        errors.append((f"{path}.hash_key", "required with balance: consistent-hash "
                                           "(header:NAME, key, body:user or prefix)"))


def _check_weighted(entry: TargetConfig | VariantConfig, path: str, errors: Errors) -> None:
    _positive(entry, path, ("weight",), errors)


def _check_retry(r: RetryConfig, path: str, errors: Errors) -> None:
    if r.attempts < 1:
        errors.append((f"{path}.attempts", "must be at least 1 (1 = no retry)"))
    if r.backoff_ms < 0 or r.max_backoff_ms < r.backoff_ms:
        errors.append((f"{path}.backoff_ms", "must be >= 0 and <= max_backoff_ms"))


def _check_health(h: HealthConfig, path: str, errors: Errors) -> None:
    _at_least(h, path, ("consecutive_failures", "min_requests"), 1, errors)
    _positive(h, path, ("window_s", "base_ejection_s", "max_ejection_s", "probe_interval_s"),
              errors)
    if not 0 < h.error_ratio <= 1:
        errors.append((f"{path}.error_ratio", "must be in (0, 1]"))


def _check_retry_budget(b: RetryBudgetConfig, path: str, errors: Errors) -> None:
    if b.percent < 0 or b.min_concurrent < 0:
        errors.append((path, "percent and min_concurrent must be 0 or more"))


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token
_JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                   "PS512", "ES256", "ES384", "EdDSA")


def _check_key(k: KeyConfig, path: str, errors: Errors) -> None:
    if not k.name.strip():
        errors.append((f"{path}.name", "must not be empty (it names the key in logs and "
                                       "metrics)"))
    if not _SHA256_HEX.fullmatch(k.key_sha256):
        errors.append((f"{path}.key_sha256",
                       "must be 64 lowercase hex characters: the sha256 of the key "
                       "(printf %s \"$KEY\" | sha256sum), never the key itself"))
    if not k.models:
        errors.append((f"{path}.models", "a key needs at least one model pattern "
                                         "('*' allows every model)"))
    for j, pattern in enumerate(k.models):
        if not pattern.strip():
            errors.append((f"{path}.models[{j}]", "must not be empty"))
    if k.tier is not None and not k.tier.strip():
        errors.append((f"{path}.tier", "must not be empty"))


def _check_limit_values(spec: LimitSpec | LimitRule, path: str, errors: Errors) -> None:
    _at_least(spec, path, ("rpm", "tpm", "max_inflight"), 1, errors)


def _check_budget(b: BudgetConfig, path: str, errors: Errors) -> None:
    if not b.amount > 0:
        errors.append((f"{path}.amount", "must be greater than 0"))


def _check_limit_rule(rule: LimitRule, path: str, errors: Errors) -> None:
    if (rule.rpm is None and rule.tpm is None and rule.max_inflight is None
            and rule.budget_usd is None):
        errors.append((path, "a limit rule needs at least one of rpm, tpm, max_inflight or "
                             "budget_usd"))
    _check_limit_values(rule, path, errors)
    for name in ("key", "model", "tier", "provider"):
        pattern = getattr(rule.match, name)
        if pattern is not None and not pattern.strip():
            errors.append((f"{path}.match.{name}", "must not be empty (leave it out to match "
                                                   "everything)"))


def _check_jwt(jwt: JwtConfig, path: str, errors: Errors) -> None:
    sources = [n for n in ("jwks_url", "secret", "public_key_pem") if getattr(jwt, n) is not None]
    if len(sources) != 1:
        errors.append((path, "set exactly one of jwks_url, secret or public_key_pem"
                       + (f" (got {' and '.join(sources)})" if sources else "")))
    if not jwt.algorithms:
        errors.append((f"{path}.algorithms", "list at least one algorithm (e.g. RS256)"))
    for i, alg in enumerate(jwt.algorithms):
        if alg.lower() == "none":
            errors.append((f"{path}.algorithms[{i}]", "'none' (unsigned tokens) is never "
                                                      "accepted"))
        elif alg not in _JWT_ALGORITHMS:
            errors.append((f"{path}.algorithms[{i}]", f"unknown algorithm {alg!r}; use "
                           + ", ".join(_JWT_ALGORITHMS) + _suggest(alg, list(_JWT_ALGORITHMS))))
    hmac_algs = [x for x in jwt.algorithms if x.startswith("HS")]
    other_algs = [x for x in jwt.algorithms if x in _JWT_ALGORITHMS and not x.startswith("HS")]
    if jwt.secret is not None:
        if not jwt.secret:
            errors.append((f"{path}.secret", "must not be empty"))
        if other_algs:
            errors.append((f"{path}.algorithms", "a secret verifies HS256/HS384/HS512 tokens "
                           f"only; remove {', '.join(other_algs)} or use public_key_pem / "
                           "jwks_url"))
    elif hmac_algs and (jwt.jwks_url is not None or jwt.public_key_pem is not None):
        errors.append((f"{path}.algorithms", f"{', '.join(hmac_algs)} need a shared secret "
                       f"({path}.secret); with public keys they would invite algorithm "
                       "confusion"))
    if jwt.jwks_url is not None:
        url = urlsplit(jwt.jwks_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            errors.append((f"{path}.jwks_url", "must be an http:// or https:// URL, got "
                                               f"{_describe(jwt.jwks_url)}"))
    if jwt.public_key_pem is not None and "-----BEGIN" not in jwt.public_key_pem:
        errors.append((f"{path}.public_key_pem", "must be a PEM public key "
                                                 "(-----BEGIN PUBLIC KEY-----...)"))
    if jwt.leeway_s < 0:
        errors.append((f"{path}.leeway_s", "must be 0 or more"))
    _positive(jwt, path, ("jwks_cache_s",), errors)
    if jwt.jwks_min_refresh_s < 0:
        errors.append((f"{path}.jwks_min_refresh_s", "must be 0 or more"))
    for name in ("subject", "models", "tier"):
        claim = getattr(jwt.claims, name)
        if claim is not None and not claim.strip():
            errors.append((f"{path}.claims.{name}", "must name a claim"))


def _check_auth(a: AuthConfig, path: str, errors: Errors) -> None:
    for field_name in ("ip_allow", "ip_deny"):
        for i, cidr in enumerate(getattr(a, field_name)):
            _check_cidr(cidr, f"{path}.{field_name}[{i}]", errors)


def _check_redis(r: RedisConfig, path: str, errors: Errors) -> None:
    url = urlsplit(r.url)
    if url.scheme not in ("redis", "rediss", "unix"):
        errors.append((f"{path}.url", "must be a redis://, rediss:// or unix:// URL, got "
                                      f"{_describe(r.url)}"))
    _positive(r, path, ("timeout_s",), errors)
    if not r.key_prefix or any(c in r.key_prefix for c in "{} \t\r\n"):
        errors.append((f"{path}.key_prefix", "must be a non-empty name without braces or "
                                             "spaces"))


def _check_observability(o: ObservabilityConfig, path: str, errors: Errors) -> None:
    if not o.metrics_path.startswith("/"):
        errors.append((f"{path}.metrics_path", "must start with '/'"))
    if o.otlp_endpoint is not None:
        url = urlsplit(o.otlp_endpoint)
        if url.scheme not in ("http", "https") or not url.hostname or url.query:
            errors.append((f"{path}.otlp_endpoint", "must be an http:// or https:// URL "
                                                    "without a query (spans go to "
                                                    f"{{endpoint}}/v1/traces), got "
                                                    f"{_describe(o.otlp_endpoint)}"))
    for name, value in o.otlp_headers.items():
        if not _HEADER_NAME.fullmatch(name) or any(c in str(value) for c in "\r\n\0"):
            errors.append((f"{path}.otlp_headers.{name}", "must be a valid header name "
                                                          "and a one-line value"))
    if not 0.0 <= o.trace_sample_ratio <= 1.0:
        errors.append((f"{path}.trace_sample_ratio", "must be between 0 and 1, got "
                                                     f"{o.trace_sample_ratio:g}"))
    _positive(o, path, ("otlp_timeout_s",), errors)
    _at_least(o, path, ("max_key_labels",), 1, errors)


def _check_cache(c: CacheConfig, path: str, errors: Errors) -> None:
    _positive(c, path, ("ttl_s",), errors)
    _at_least(c, path, ("max_entries", "max_bytes"), 1, errors)


def _check_judge(j: JudgeConfig, path: str, errors: Errors) -> None:
    _positive(j, path, ("timeout_ms",), errors)
    try:
        re.compile(j.accept)
    except re.error as exc:
        errors.append((f"{path}.accept", f"not a valid regular expression: {exc}"))
    if "{input}" not in j.prompt:
        errors.append((f"{path}.prompt", "must contain {input} (where the last user message "
                                         "goes)"))


def _check_accept_if(a: AcceptIfConfig, path: str, errors: Errors) -> None:
    _at_least(a, path, ("max_prompt_tokens",), 1, errors)
    for name in a.header:
        if not _HEADER_NAME.fullmatch(name):
            errors.append((_join(f"{path}.header", name), "not a valid header name"))


def _check_cascade_step(s: CascadeStepConfig, path: str, errors: Errors) -> None:
    if len(set(s.escalate_on)) != len(s.escalate_on):
        errors.append((f"{path}.escalate_on", "lists a reason twice"))


def _check_shadow(s: ShadowConfig, path: str, errors: Errors) -> None:
    if not 0 < s.percent <= 100:
        errors.append((f"{path}.percent", "must be greater than 0 and at most 100"))
    _at_least(s, path, ("max_inflight",), 1, errors)


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _check_orchestration(raw: dict[str, Any], errors: Errors) -> None:
    """Cascades and shadows name other models: known ones, fit for the job, and no
    model reaches itself through cascade steps, judges or variants."""
    models: dict[str, dict[str, Any]] = {}
    for _, m in _entries(raw, "models"):
        name = _text(m.get("name"))
        if name is not None and name not in models:
            models[name] = m
    names = list(models)
    edges: dict[str, list[str]] = {}
    index: dict[str, int] = {}
    for i, m in _entries(raw, "models"):
        where = f"models[{i}]"
        own = _text(m.get("name"))
        out: list[str] = []

        def known(ref: Any, path: str) -> str | None:
            other = _text(ref)
            if other is None:
                return None
            if other not in models:
                errors.append((path, f"unknown model {other!r}" + _suggest(other, names)))
                return None
            return other

        for j, step in _entries(m, "cascade"):
            spath = f"{where}.cascade[{j}]"
            other = known(step.get("model"), f"{spath}.model")
            if other is not None:
                if not models[other].get("targets"):
                    errors.append((f"{spath}.model", f"{other!r} has no targets; a cascade "
                                                     "step names a model with targets"))
                out.append(other)
            accept = step.get("accept_if")
            judge = accept.get("judge") if isinstance(accept, dict) else None
            if isinstance(judge, dict):
                other = known(judge.get("model"), f"{spath}.accept_if.judge.model")
                if other is not None:
                    out.append(other)
        listed = m.get("cascade")
        if isinstance(listed, list) and listed and isinstance(listed[-1], dict) \
                and listed[-1].get("accept_if"):
            errors.append((f"{where}.cascade[{len(listed) - 1}].accept_if",
                           "the last step takes what the others left: it has no accept_if"))
        for _, v in _entries(m, "variants"):
            other = _text(v.get("model"))
            if other is not None and other in models:
                out.append(other)
        shadow = m.get("shadow")
        if isinstance(shadow, dict):
            other = known(shadow.get("model"), f"{where}.shadow.model")
            if other is not None and other == own:
                errors.append((f"{where}.shadow.model", "a model cannot shadow itself"))
        if own is not None and own not in edges:
            edges[own] = out
            index[own] = i
    # A cycle (a judge asking, through cascades, the model that asks it) would
    # never end: each one is reported once, from its first model.
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for other in edges.get(name, ()):
            if state.get(other) == 1:
                loop = [*trail[trail.index(other):], other]
                errors.append((f"models[{index.get(loop[0], 0)}].cascade",
                               "a cycle: " + " -> ".join(loop)))
            elif other not in state:
                visit(other, [*trail, other])
        state[name] = 2

    for name in edges:
        if name not in state:
            visit(name, [name])


FEEDBACK_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _check_feedback(f: FeedbackConfig, path: str, errors: Errors) -> None:
    _positive(f, path, ("ttl_s",), errors)
    _at_least(f, path, ("max_entries",), 1, errors)
    if not f.names:
        errors.append((f"{path}.names", "name at least one score name (e.g. [score])"))
    for i, name in enumerate(f.names):
        if not FEEDBACK_NAME.fullmatch(name):
            errors.append((f"{path}.names[{i}]", f"{name!r} is not a valid score name: a "
                                                 "lowercase letter, then up to 39 lowercase "
                                                 "letters, digits or '_'"))
    if len(set(f.names)) != len(f.names):
        errors.append((f"{path}.names", "names must be unique"))


def _check_admin(a: AdminConfig, path: str, errors: Errors) -> None:
    if a.key_sha256 is not None and not _SHA256_HEX.fullmatch(a.key_sha256):
        errors.append((f"{path}.key_sha256", "must be 64 lowercase hex characters "
                                             "(the sha256 of the admin key)"))


# Fields a transform may not touch (the routing reads them) and headers the gateway
# writes itself.
_FIXED_FIELDS = frozenset({"model", "stream"})
_OWN_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection",
                          "authorization", "api-key", "x-api-key", "x-request-id",
                          "traceparent", "content-type"})


def _check_request_transform(t: RequestTransformConfig, path: str, errors: Errors) -> None:
    for section, names in (("set", t.set), ("default", t.default), ("cap", t.cap),
                           ("drop", t.drop)):
        for i, name in enumerate(names):
            where = f"{path}.{section}[{i}]" if section == "drop" else _join(
                f"{path}.{section}", name)
            if name in _FIXED_FIELDS:
                errors.append((where, f"{name!r} cannot be transformed: it chooses the "
                                      "model and the form of the answer"))
            elif not name:
                errors.append((where, "a field name cannot be empty"))
    for name, cap in t.cap.items():
        if cap != cap or cap < 0:
            errors.append((_join(f"{path}.cap", name), "must be a number >= 0"))
    if t.prepend_system is not None and not t.prepend_system:
        errors.append((f"{path}.prepend_system", "must be non-empty text (or leave it out)"))


def _check_headers_transform(h: HeadersTransformConfig, path: str, errors: Errors) -> None:
    for name, value in h.add.items():
        where = _join(f"{path}.add", name)
        if not _HEADER_NAME.fullmatch(name) or any(c in value for c in "\r\n\0"):
            errors.append((where, "must be a valid header name and a one-line value"))
        elif name.lower() in _OWN_HEADERS:
            errors.append((where, f"{name!r} is written by the gateway itself"))
    for i, name in enumerate(h.remove):
        if not _HEADER_NAME.fullmatch(name):
            errors.append((f"{path}.remove[{i}]", f"{name!r} is not a valid header name"))
        elif name.lower() in _OWN_HEADERS:
            errors.append((f"{path}.remove[{i}]", f"{name!r} is written by the gateway "
                                                  "itself, never forwarded"))


def _check_guardrail(g: GuardrailConfig, path: str, errors: Errors) -> None:
    if g.kind == "regex":
        if g.pattern is None:
            errors.append((f"{path}.pattern", "required with kind: regex"))
        else:
            from fastgw._native import RegexGuard
            try:
                RegexGuard(g.pattern)
            except ValueError as exc:
                errors.append((f"{path}.pattern", "does not compile: "
                               + " ".join(str(exc).split())))
        if g.url is not None:
            errors.append((f"{path}.url", "only with kind: webhook"))
        _at_least(g, path, ("window_chars",), 1, errors)
    else:
        url = urlsplit(g.url) if g.url is not None else None
        if url is None:
            errors.append((f"{path}.url", "required with kind: webhook"))
        elif url.scheme not in ("http", "https") or not url.hostname:
            errors.append((f"{path}.url", "must be an http:// or https:// URL, got "
                                          f"{_describe(g.url)}"))
        if g.pattern is not None:
            errors.append((f"{path}.pattern", "only with kind: regex"))
        _positive(g, path, ("timeout_ms",), errors)
    if g.name is not None and not _PLAIN_KEY.fullmatch(g.name):
        errors.append((f"{path}.name", "must be a plain name (letters, digits, _ and -)"))


_CHECKS: dict[type, Callable[[Any, str, Errors], None]] = {
    ServerConfig: _check_server,
    ProviderConfig: _check_provider,
    ProviderLimitsConfig: _check_provider_limits,
    ModelConfig: _check_model,
    TargetConfig: _check_weighted,
    VariantConfig: _check_weighted,
    RetryConfig: _check_retry,
    HealthConfig: _check_health,
    RetryBudgetConfig: _check_retry_budget,
    KeyConfig: _check_key,
    LimitSpec: _check_limit_values,
    LimitRule: _check_limit_rule,
    BudgetConfig: _check_budget,
    JwtConfig: _check_jwt,
    AuthConfig: _check_auth,
    RedisConfig: _check_redis,
    ObservabilityConfig: _check_observability,
    AdminConfig: _check_admin,
    CacheConfig: _check_cache,
    JudgeConfig: _check_judge,
    AcceptIfConfig: _check_accept_if,
    CascadeStepConfig: _check_cascade_step,
    ShadowConfig: _check_shadow,
    FeedbackConfig: _check_feedback,
    RequestTransformConfig: _check_request_transform,
    HeadersTransformConfig: _check_headers_transform,
    GuardrailConfig: _check_guardrail,
}


def _entries(raw: dict[str, Any], *keys: str) -> list[tuple[int, dict[str, Any]]]:
    """``raw[keys...]``'s mapping entries with their index (whatever their shape)."""
    node: Any = raw
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, list):
        return []
    return [(i, e) for i, e in enumerate(node) if isinstance(e, dict)]


def _unique(raw: dict[str, Any], section: str, what: str, errors: Errors,
            ) -> dict[str, tuple[int, dict[str, Any]]]:
    """``raw[section]``'s entries by name (the first of each), duplicates reported."""
    seen: dict[str, tuple[int, dict[str, Any]]] = {}
    for i, entry in _entries(raw, section):
        name = _text(entry.get("name"))
        if name is None:
            continue
        if name in seen:
            errors.append((f"{section}[{i}].name", f"duplicate {what} name {name!r} "
                                                   f"(also {section}[{seen[name][0]}])"))
        else:
            seen[name] = (i, entry)
    return seen


def _check_names(raw: dict[str, Any], errors: Errors) -> None:
    """Duplicate names and references between entries, on the YAML as read: they
    are reported even when some entries failed their own checks."""
    providers = _unique(raw, "providers", "provider", errors)
    models = {name: entry for name, (_, entry) in
              _unique(raw, "models", "model", errors).items()}
    names = list(models)
    for i, m in _entries(raw, "models"):
        where = f"models[{i}]"
        for j, t in _entries(m, "targets"):
            prov = _text(t.get("provider"))
            if prov is not None and prov not in providers:
                errors.append((f"{where}.targets[{j}].provider", f"unknown provider {prov!r}"
                               + _suggest(prov, list(providers))))
        own = _text(m.get("name"))
        for field_name in ("fallbacks", "context_fallbacks"):
            others = m.get(field_name)
            for j, other_raw in enumerate(others if isinstance(others, list) else []):
                other = _text(other_raw)
                if other is None:
                    continue
                if other == own:
                    errors.append((f"{where}.{field_name}[{j}]", "a model cannot fall back to "
                                                                 "itself"))
                elif other not in models:
                    errors.append((f"{where}.{field_name}[{j}]", f"unknown model {other!r}"
                                   + _suggest(other, names)))
        for j, v in _entries(m, "variants"):
            other = _text(v.get("model"))
            if other is None:
                continue
            target = models.get(other)
            if target is None:
                errors.append((f"{where}.variants[{j}].model", f"unknown model {other!r}"
                               + _suggest(other, names)))
            elif target.get("variants"):
                errors.append((f"{where}.variants[{j}].model",
                               f"{other!r} has variants itself; variants must name models "
                               "with targets"))
    key_names: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for i, k in _entries(raw, "auth", "keys"):
        name = _text(k.get("name"))
        if name is not None and name.strip():
            if name in key_names:
                errors.append((f"auth.keys[{i}].name", f"duplicate key name {name!r} "
                                                       f"(also auth.keys[{key_names[name]}])"))
            else:
                key_names[name] = i
        digest = _text(k.get("key_sha256"))
        if digest is not None and _SHA256_HEX.fullmatch(digest):
            if digest in hashes:
                errors.append((f"auth.keys[{i}].key_sha256", "the same key is configured "
                                                             f"twice (also auth.keys"
                                                             f"[{hashes[digest]}])"))
            else:
                hashes[digest] = i


def _check_cidr(value: str, path: str, errors: Errors) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        errors.append((path, f"not an IP address or CIDR block: {value!r}"))


# --- entry points ------------------------------------------------------------


def parse_config(text: str, source: str | None = None) -> Config:
    """Parse and validate YAML text; raise ConfigError listing every problem."""
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow
            before = text[:exc.position]
            where = (f"line {before.count(chr(10)) + 1}, "
                     f"column {exc.position - before.rfind(chr(10))}")
            char = exc.character
            code = char if isinstance(char, int) else ord(char)
            problem = f"character #x{code:04x} is not allowed in YAML"
        problem = " ".join(str(problem).split())  # one line per error
        raise ConfigError([(where, f"invalid YAML: {problem}")]) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError([("", "invalid YAML: collections nested too deeply")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", "the configuration must be a YAML mapping at the top level")])
    errors: list[tuple[str, str]] = []
    raw = _substitute(raw, "", errors)
    cfg = _build_dataclass(Config, raw, "", errors)
    _check_names(raw, errors)
    _check_orchestration(raw, errors)
    if errors:
        raise ConfigError(errors)
    assert isinstance(cfg, Config)
    return dataclasses.replace(cfg, source=source)


def load_config(path: str) -> Config:
    """Read and validate a configuration file."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError([(f"line {line}, column {column}",
                            f"not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                            "save the file as UTF-8")]) from None
    return parse_config(text, source=path)


def demo_config(mock_base_url: str, host: str, port: int, workers: int) -> Config:
    """The built-in demo: two models served by an in-process mock provider."""
    mock = ProviderConfig(name="mock", kind="openai-compatible", base_url=mock_base_url,
                          api_key="demo-provider-key")
    return Config(
        server=ServerConfig(host=host, port=port, workers=workers),
        providers=(mock,),
        models=(
            ModelConfig(name="gpt-4o-mini", targets=(TargetConfig("mock", "mock-small"),),
                        price=PriceConfig(0.15, 0.60)),
            ModelConfig(name="gpt-4o", targets=(TargetConfig("mock", "mock-large"),),
                        price=PriceConfig(2.5, 10.0)),
        ),
        demo=True,
    )
