"""The running configuration as JSON with every secret shown as ``***``.

Redaction is decided by structure, failing safe: numbers, booleans and values
of an enumerated (``Literal``) type are shown; a string is shown only when its
field is listed in :data:`PUBLIC` (names, models, globs, paths); a URL field
is shown without its password and query values; a mapping (headers, metadata)
shows its keys, never its values. Anything else, a new string field included,
is ``***`` until someone decides it is public. Last, no hidden string may
appear anywhere in the answer: if one does (a secret reused as a name), it is
masked there too.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import fastgw.config as config_module
from fastgw.config import Config

MASK = "***"

# Strings shown as they are, by "Class.field": names, model globs, paths, addresses.
PUBLIC = frozenset(
    {
        "ServerConfig.host",
        "ServerConfig.trusted_proxies",
        "ProviderConfig.name",
        "ProviderConfig.api_version",
        "ProviderConfig.ca_file",
        "TargetConfig.provider",
        "TargetConfig.model",
        "ModelConfig.name",
        "ModelConfig.hash_key",
        "ModelConfig.fallbacks",
        "ModelConfig.context_fallbacks",
        "ModelConfig.sticky",
        "VariantConfig.model",
        "VariantConfig.name",
        "ObservabilityConfig.metrics_path",
        "ObservabilityConfig.access_log",
        "KeyConfig.name",
        "KeyConfig.models",
        "KeyConfig.tier",
        "JwtConfig.issuer",
        "JwtConfig.audience",
        "JwtConfig.algorithms",
        "JwtClaimsConfig.subject",
        "JwtClaimsConfig.models",
        "JwtClaimsConfig.tier",
        "AuthConfig.ip_allow",
        "AuthConfig.ip_deny",
        "LimitMatch.key",
        "LimitMatch.model",
        "LimitMatch.tier",
        "LimitMatch.provider",
        "RedisConfig.key_prefix",
        "Config.source",
    }
)

# URLs: shown without credentials (user info, query values).
URLS = frozenset(
    {
        "ProviderConfig.base_url",
        "JwtConfig.jwks_url",
        "ObservabilityConfig.otlp_endpoint",
        "RedisConfig.url",
    }
)


_HINTS: dict[str, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls.__qualname__)
    if hints is None:
        hints = _HINTS[cls.__qualname__] = typing.get_type_hints(cls, vars(config_module))
    return hints


def _is_literal(hint: Any) -> bool:
    if typing.get_origin(hint) is Literal:
        return True
    return any(_is_literal(a) for a in typing.get_args(hint))


def redact_config(cfg: Config) -> dict[str, Any]:
    """``cfg`` as JSON-ready data, secrets masked (see the module's docstring)."""
    hidden: set[str] = set()
    out = _dataclass(cfg, hidden)
    assert isinstance(out, dict)
    # Defence in depth: a hidden value must not show up under another field.
    leaks = sorted((h for h in hidden if len(h) >= 4), key=len, reverse=True)
    return _scrub(out, leaks) if leaks else out


def _dataclass(obj: Any, hidden: set[str]) -> dict[str, Any]:
    cls = type(obj)
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        where = f"{cls.__name__}.{f.name}"
        out[f.name] = _value(getattr(obj, f.name), where, hints[f.name], hidden)
    return out


def _value(value: Any, where: str, hint: Any, hidden: set[str]) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass(value, hidden)
    if isinstance(value, str):
        if where in PUBLIC or _is_literal(hint):
            return value
        if where in URLS:
            return _url(value, hidden)
        hidden.add(value)
        return MASK
    if isinstance(value, Mapping):
        for v in value.values():
            hidden.add(str(v))
        return {str(k): MASK for k in value}
    if isinstance(value, tuple | list | frozenset | set):
        return [_value(v, where, hint, hidden) for v in value]
    hidden.add(str(value))
    return MASK


def _url(value: str, hidden: set[str]) -> str:
    """A URL without its password and query values (a malformed one: masked whole)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        hidden.add(value)
        return MASK
    netloc = host if ":" not in host else f"[{host}]"
    if port is not None:
        netloc += f":{port}"
    if parts.username is not None or parts.password is not None:
        for secret in (parts.username, parts.password):
            if secret:
                hidden.add(secret)
        netloc = f"{MASK}@{netloc}"
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            name, eq, val = pair.partition("=")
            if val:
                hidden.add(val)
            pairs.append(f"{name}={MASK}" if eq else MASK)
        query = "&".join(pairs)
    if parts.fragment:
        hidden.add(parts.fragment)
    return urlunsplit((parts.scheme, netloc, parts.path, query, MASK if parts.fragment else ""))


def _scrub(value: Any, leaks: list[str]) -> Any:
    if isinstance(value, str):
        for leak in leaks:
            if leak in value:
                value = value.replace(leak, MASK)
        return value
    if isinstance(value, dict):
        return {_scrub(k, leaks): _scrub(v, leaks) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, leaks) for v in value]
    return value
