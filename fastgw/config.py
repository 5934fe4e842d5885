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
import os
import re
import types
import typing
from collections.abc import Mapping
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
    output_per_mtok: float = 0.0


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
class ObservabilityConfig:
    metrics_path: str = "/metrics"
    # stdout | stderr | off | a file path (YAML's bare off/false also mean off)
    access_log: str | bool = "stdout"
    log_format: Literal["json"] = "json"
    otlp_endpoint: str | None = None
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


# --- environment substitution ------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Substituted(str):
    """A string produced by ``${...}`` substitution: may be coerced to a number."""

    __slots__ = ()


def _substitute(node: Any, path: str, errors: list[tuple[str, str]]) -> Any:
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
    if isinstance(node, dict):
        return {k: _substitute(v, _join(path, str(k)), errors) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", errors) for i, v in enumerate(node)]
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- generic builder from type hints -----------------------------------------

_MISSING = object()


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
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append((path, f"expected a mapping, got {_describe(value)}"))
            return _MISSING
        return _build_dataclass(tp, value, path, errors)
    if origin is Literal:
        if value in args:
            return value
        errors.append((path, f"expected one of {', '.join(repr(a) for a in args)}, got {value!r}"
                       + _suggest(value, [str(a) for a in args])))
        return _MISSING
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
        out = {str(k): _build(args[1], v, _join(path, str(k)), errors) for k, v in value.items()}
        return _MISSING if any(x is _MISSING for x in out.values()) else out
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, _Substituted) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
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
        if isinstance(value, str):
            return str(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    else:  # pragma: no cover - a field type the loader does not know is a bug
        raise TypeError(f"unsupported config type {tp!r} at {path}")
    errors.append((path, f"expected {_type_name(tp)}, got {_describe(value)}"))
    return _MISSING


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
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
    return cls(**kwargs)


# --- semantic checks ---------------------------------------------------------


def _check(cfg: Config, errors: list[tuple[str, str]]) -> None:
    s = cfg.server
    for name in ("port",):
        if not 0 <= getattr(s, name) <= 65535:
            errors.append((f"server.{name}", "must be between 0 and 65535"))
    for name in ("workers", "max_body_bytes", "max_header_bytes", "backlog"):
        if getattr(s, name) < 1:
            errors.append((f"server.{name}", "must be at least 1"))
    for name in ("keepalive_timeout_s", "header_timeout_s", "drain_timeout_s"):
        if getattr(s, name) <= 0:
            errors.append((f"server.{name}", "must be greater than 0"))
    for i, cidr in enumerate(s.trusted_proxies):
        _check_cidr(cidr, f"server.trusted_proxies[{i}]", errors)

    seen: dict[str, int] = {}
    for i, p in enumerate(cfg.providers):
        where = f"providers[{i}]"
        if p.name in seen:
            errors.append((f"{where}.name", f"duplicate provider name {p.name!r} "
                                            f"(also providers[{seen[p.name]}])"))
        seen[p.name] = i
        url = urlsplit(p.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            errors.append((f"{where}.base_url",
                           f"must be an http:// or https:// URL, got {p.base_url!r}"))
        if p.max_connections < 1:
            errors.append((f"{where}.max_connections", "must be at least 1"))
        for tname in ("connect_s", "first_byte_s", "idle_s", "total_s"):
            if getattr(p.timeouts, tname) <= 0:
                errors.append((f"{where}.timeouts.{tname}", "must be greater than 0"))
        if p.kind == "anthropic":
            errors.append((f"{where}.kind", "kind 'anthropic' (OpenAI <-> Messages "
                                            "translation) is not available in this version; "
                                            "use an OpenAI-compatible endpoint"))
        if p.kind == "azure" and not p.api_version:
            errors.append((f"{where}.api_version", "required for kind 'azure' "
                                                   "(e.g. 2024-10-21)"))

    models_seen: dict[str, int] = {}
    for i, m in enumerate(cfg.models):
        where = f"models[{i}]"
        if m.name in models_seen:
            errors.append((f"{where}.name", f"duplicate model name {m.name!r} "
                                            f"(also models[{models_seen[m.name]}])"))
        models_seen[m.name] = i
        if m.variants and m.targets:
            errors.append((where, "a model has either targets or variants, not both"))
        elif not m.targets and not m.variants:
            errors.append((f"{where}.targets", "a model needs at least one target "
                                               "(or variants)"))
        for j, t in enumerate(m.targets):
            if t.provider not in seen:
                errors.append((f"{where}.targets[{j}].provider",
                               f"unknown provider {t.provider!r}"
                               + _suggest(t.provider, list(seen))))
            if t.weight <= 0:
                errors.append((f"{where}.targets[{j}].weight", "must be greater than 0"))
    _check_routing(cfg, errors)
    _check_access(cfg, errors)
    admin_hash = cfg.admin.key_sha256
    if admin_hash is not None and not re.fullmatch(r"[0-9a-f]{64}", admin_hash):
        errors.append(("admin.key_sha256", "must be 64 lowercase hex characters "
                                           "(the sha256 of the admin key)"))
    log = cfg.observability
    if not log.metrics_path.startswith("/"):
        errors.append(("observability.metrics_path", "must start with '/'"))
    if log.otlp_endpoint is not None:
        errors.append(("observability.otlp_endpoint", "OTLP span export is not available in "
                                                      "this version; remove the setting"))
    if log.max_key_labels < 1:
        errors.append(("observability.max_key_labels", "must be at least 1"))


_HASH_KEY = re.compile(r"header:[A-Za-z0-9-]+|key|body:user|prefix")
_STICKY = re.compile(r"header:[A-Za-z0-9-]+|key")


def _check_routing(cfg: Config, errors: list[tuple[str, str]]) -> None:
    """Fallbacks, variants, retries, balancing and provider quotas."""
    by_name = {m.name: m for m in cfg.models}
    names = list(by_name)
    for i, m in enumerate(cfg.models):
        where = f"models[{i}]"
        for field_name in ("fallbacks", "context_fallbacks"):
            for j, other in enumerate(getattr(m, field_name)):
                if other == m.name:
                    errors.append((f"{where}.{field_name}[{j}]", "a model cannot fall back to "
                                                                 "itself"))
                elif other not in by_name:
                    errors.append((f"{where}.{field_name}[{j}]", f"unknown model {other!r}"
                                   + _suggest(other, names)))
        for j, v in enumerate(m.variants):
            target = by_name.get(v.model)
            if target is None:
                errors.append((f"{where}.variants[{j}].model", f"unknown model {v.model!r}"
                               + _suggest(v.model, names)))
            elif target.variants:
                errors.append((f"{where}.variants[{j}].model",
                               f"{v.model!r} has variants itself; variants must name models "
                               "with targets"))
            if v.weight <= 0:
                errors.append((f"{where}.variants[{j}].weight", "must be greater than 0"))
        if m.sticky is not None and not _STICKY.fullmatch(m.sticky):
            errors.append((f"{where}.sticky", f"expected 'key' or 'header:NAME', got "
                                              f"{m.sticky!r}"))
        if m.hash_key is not None and not _HASH_KEY.fullmatch(m.hash_key):
            errors.append((f"{where}.hash_key", "expected 'header:NAME', 'key', 'body:user' or "
                                                f"'prefix', got {m.hash_key!r}"))
        if m.balance == "consistent-hash" and m.hash_key is None and m.targets:
            errors.append((f"{where}.hash_key", "required with balance: consistent-hash "
                                                "(header:NAME, key, body:user or prefix)"))
        r = m.retry
        if r.attempts < 1:
            errors.append((f"{where}.retry.attempts", "must be at least 1 (1 = no retry)"))
        if r.backoff_ms < 0 or r.max_backoff_ms < r.backoff_ms:
            errors.append((f"{where}.retry.backoff_ms", "must be >= 0 and <= max_backoff_ms"))
    for i, p in enumerate(cfg.providers):
        lim = p.limits
        if lim is None:
            continue
        for name in ("rpm", "tpm", "max_inflight", "burst"):
            value = getattr(lim, name)
            if value is not None and value < 1:
                errors.append((f"providers[{i}].limits.{name}", "must be at least 1"))
        if lim.max_queue < 0:
            errors.append((f"providers[{i}].limits.max_queue", "must be 0 or more"))
        if lim.queue_timeout_s <= 0:
            errors.append((f"providers[{i}].limits.queue_timeout_s", "must be greater than 0"))
    h = cfg.health
    for name in ("consecutive_failures", "min_requests"):
        if getattr(h, name) < 1:
            errors.append((f"health.{name}", "must be at least 1"))
    for name in ("window_s", "base_ejection_s", "max_ejection_s", "probe_interval_s"):
        if getattr(h, name) <= 0:
            errors.append((f"health.{name}", "must be greater than 0"))
    if not 0 < h.error_ratio <= 1:
        errors.append(("health.error_ratio", "must be in (0, 1]"))
    if cfg.retry_budget.percent < 0 or cfg.retry_budget.min_concurrent < 0:
        errors.append(("retry_budget", "percent and min_concurrent must be 0 or more"))


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                   "PS512", "ES256", "ES384", "EdDSA")


def _check_access(cfg: Config, errors: list[tuple[str, str]]) -> None:
    """auth, limits, limits_backend and redis."""
    a = cfg.auth
    names: dict[str, int] = {}
    hashes: dict[str, int] = {}
    for i, k in enumerate(a.keys):
        where = f"auth.keys[{i}]"
        if not k.name.strip():
            errors.append((f"{where}.name", "must not be empty (it names the key in logs "
                                            "and metrics)"))
        elif k.name in names:
            errors.append((f"{where}.name", f"duplicate key name {k.name!r} "
                                            f"(also auth.keys[{names[k.name]}])"))
        names.setdefault(k.name, i)
        if not _SHA256_HEX.fullmatch(k.key_sha256):
            errors.append((f"{where}.key_sha256",
                           "must be 64 lowercase hex characters: the sha256 of the key "
                           "(printf %s \"$KEY\" | sha256sum), never the key itself"))
        elif k.key_sha256 in hashes:
            errors.append((f"{where}.key_sha256", "the same key is configured twice "
                                                  f"(also auth.keys[{hashes[k.key_sha256]}])"))
        hashes.setdefault(k.key_sha256, i)
        if not k.models:
            errors.append((f"{where}.models", "a key needs at least one model pattern "
                                              "('*' allows every model)"))
        for j, pattern in enumerate(k.models):
            if not pattern.strip():
                errors.append((f"{where}.models[{j}]", "must not be empty"))
        if k.tier is not None and not k.tier.strip():
            errors.append((f"{where}.tier", "must not be empty"))
        if k.limits is not None:
            _check_limit_values(k.limits, f"{where}.limits", errors)
    jwt = a.jwt
    if jwt is not None:
        sources = [n for n in ("jwks_url", "secret", "public_key_pem")
                   if getattr(jwt, n) is not None]
        if len(sources) != 1:
            errors.append(("auth.jwt", "set exactly one of jwks_url, secret or public_key_pem"
                           + (f" (got {' and '.join(sources)})" if sources else "")))
        if not jwt.algorithms:
            errors.append(("auth.jwt.algorithms", "list at least one algorithm (e.g. RS256)"))
        for i, alg in enumerate(jwt.algorithms):
            if alg.lower() == "none":
                errors.append((f"auth.jwt.algorithms[{i}]", "'none' (unsigned tokens) is "
                                                            "never accepted"))
            elif alg not in _JWT_ALGORITHMS:
                errors.append((f"auth.jwt.algorithms[{i}]", f"unknown algorithm {alg!r}; use "
                               + ", ".join(_JWT_ALGORITHMS) + _suggest(alg, list(_JWT_ALGORITHMS))))
        hmac_algs = [x for x in jwt.algorithms if x.startswith("HS")]
        other_algs = [x for x in jwt.algorithms if x in _JWT_ALGORITHMS and not x.startswith("HS")]
        if jwt.secret is not None:
            if not jwt.secret:
                errors.append(("auth.jwt.secret", "must not be empty"))
            if other_algs:
                errors.append(("auth.jwt.algorithms", "a secret verifies HS256/HS384/HS512 "
                               f"tokens only; remove {', '.join(other_algs)} or use "
                               "public_key_pem / jwks_url"))
        elif hmac_algs and (jwt.jwks_url is not None or jwt.public_key_pem is not None):
            errors.append(("auth.jwt.algorithms", f"{', '.join(hmac_algs)} need a shared "
                           "secret (auth.jwt.secret); with public keys they would invite "
                           "algorithm confusion"))
        if jwt.jwks_url is not None:
            url = urlsplit(jwt.jwks_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                errors.append(("auth.jwt.jwks_url", "must be an http:// or https:// URL, got "
                                                    f"{jwt.jwks_url!r}"))
        if jwt.public_key_pem is not None and "-----BEGIN" not in jwt.public_key_pem:
            errors.append(("auth.jwt.public_key_pem", "must be a PEM public key "
                                                      "(-----BEGIN PUBLIC KEY-----...)"))
        if jwt.leeway_s < 0:
            errors.append(("auth.jwt.leeway_s", "must be 0 or more"))
        if jwt.jwks_cache_s <= 0:
            errors.append(("auth.jwt.jwks_cache_s", "must be greater than 0"))
        if jwt.jwks_min_refresh_s < 0:
            errors.append(("auth.jwt.jwks_min_refresh_s", "must be 0 or more"))
        for name in ("subject", "models", "tier"):
            claim = getattr(jwt.claims, name)
            if claim is not None and not claim.strip():
                errors.append((f"auth.jwt.claims.{name}", "must name a claim"))
    for field_name in ("ip_allow", "ip_deny"):
        for i, cidr in enumerate(getattr(a, field_name)):
            _check_cidr(cidr, f"auth.{field_name}[{i}]", errors)
    for i, rule in enumerate(cfg.limits):
        where = f"limits[{i}]"
        if (rule.rpm is None and rule.tpm is None and rule.max_inflight is None
                and rule.budget_usd is None):
            errors.append((where, "a limit rule needs at least one of rpm, tpm, max_inflight "
                                  "or budget_usd"))
        _check_limit_values(rule, where, errors)
        for name in ("key", "model", "tier", "provider"):
            pattern = getattr(rule.match, name)
            if pattern is not None and not pattern.strip():
                errors.append((f"{where}.match.{name}", "must not be empty (leave it out to "
                                                        "match everything)"))
    r = cfg.redis
    url = urlsplit(r.url)
    if url.scheme not in ("redis", "rediss", "unix"):
        errors.append(("redis.url", "must be a redis://, rediss:// or unix:// URL, got "
                                    f"{r.url!r}"))
    if r.timeout_s <= 0:
        errors.append(("redis.timeout_s", "must be greater than 0"))
    if not r.key_prefix or any(c in r.key_prefix for c in "{} \t\r\n"):
        errors.append(("redis.key_prefix", "must be a non-empty name without braces or "
                                           "spaces"))


def _check_limit_values(spec: Any, where: str, errors: list[tuple[str, str]]) -> None:
    for name in ("rpm", "tpm", "max_inflight"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            errors.append((f"{where}.{name}", "must be at least 1"))
    budget = spec.budget_usd
    if budget is not None and not budget.amount > 0:
        errors.append((f"{where}.budget_usd.amount", "must be greater than 0"))


def _check_references(raw: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    """When the structure is broken, still report targets naming unknown providers."""
    providers = raw.get("providers")
    models = raw.get("models")
    if not isinstance(providers, list) or not isinstance(models, list):
        return
    names = [p["name"] for p in providers if isinstance(p, dict) and isinstance(p.get("name"), str)]
    for i, m in enumerate(models):
        targets = m.get("targets") if isinstance(m, dict) else None
        if not isinstance(targets, list):
            continue
        for j, t in enumerate(targets):
            prov = t.get("provider") if isinstance(t, dict) else None
            if isinstance(prov, str) and prov not in names:
                errors.append((f"models[{i}].targets[{j}].provider",
                               f"unknown provider {prov!r}" + _suggest(prov, names)))


def _check_cidr(value: str, path: str, errors: list[tuple[str, str]]) -> None:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        errors.append((path, f"not an IP address or CIDR block: {value!r}"))


# --- entry points ------------------------------------------------------------


def parse_config(text: str, source: str | None = None) -> Config:
    """Parse and validate YAML text; raise ConfigError listing every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([(where, f"invalid YAML: {problem}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("", "the configuration must be a YAML mapping at the top level")])
    errors: list[tuple[str, str]] = []
    raw = _substitute(raw, "", errors)
    cfg = _build_dataclass(Config, raw, "", errors)
    if cfg is not _MISSING:
        _check(cfg, errors)
    else:
        _check_references(raw, errors)
    if errors:
        raise ConfigError(errors)
    assert isinstance(cfg, Config)
    return dataclasses.replace(cfg, source=source)


def load_config(path: str) -> Config:
    """Read and validate a configuration file."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([("", f"cannot read {path}: {exc.strerror}")]) from None
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
