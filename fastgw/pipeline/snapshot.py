"""The routing snapshot: configuration turned into ready-to-use runtime objects.

Built once per configuration (start and every reload) and swapped whole, so a
request sees one consistent view from start to end. Everything constant per
target (request line, credentials, response headers) is rendered to bytes
here, not per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from fastgw.config import Config, ModelConfig, ProviderConfig
from fastgw.providers import openai
from fastgw.upstream.client import Endpoint, Timeouts, UpstreamClient
from fastgw.upstream.pool import Pool


@dataclass(slots=True, eq=False)
class ProviderRuntime:
    cfg: ProviderConfig
    name: str
    endpoint: Endpoint
    pool: Pool
    timeouts: Timeouts
    secrets: tuple[bytes, ...]  # values scrubbed from anything sent back to clients


@dataclass(slots=True, eq=False)
class TargetRuntime:
    provider: ProviderRuntime
    model: str
    weight: float
    # x-fastgw-provider / x-fastgw-model lines, rendered once
    response_headers: bytes
    _prefixes: dict[str, bytes] = field(default_factory=dict)

    def prefix(self, endpoint: str) -> bytes:
        """Request line, host, credentials and content type for ``endpoint``."""
        p = self._prefixes.get(endpoint)
        if p is None:
            prov = self.provider
            p = self._prefixes[endpoint] = openai.request_prefix(
                prov.cfg, prov.endpoint.host_header, prov.endpoint.path_prefix, endpoint,
                self.model)
        return p


@dataclass(slots=True, eq=False)
class ModelRoute:
    name: str
    cfg: ModelConfig
    targets: tuple[TargetRuntime, ...]
    input_per_token: float
    output_per_token: float


@dataclass(slots=True, eq=False)
class Snapshot:
    config: Config
    providers: dict[str, ProviderRuntime]
    models: dict[str, ModelRoute]
    created: int = 0

    def models_body(self, names: list[str] | None = None) -> bytes:
        """``GET /v1/models`` answer for the given model names (all by default)."""
        chosen = self.models.values() if names is None else [self.models[n] for n in names]
        return orjson.dumps({"object": "list", "data": [model_object(m, self.created)
                                                         for m in chosen]})


def model_object(route: ModelRoute, created: int) -> dict[str, object]:
    return {"id": route.name, "object": "model", "created": created, "owned_by": "fastgw"}


def _header_value(value: str) -> bytes:
    # Header values are latin-1 on the wire; anything else is sent as UTF-8 bytes,
    # and CR/LF can never reach a header (config names are validated, this is a guard).
    return value.replace("\r", " ").replace("\n", " ").encode("utf-8")


def build_snapshot(config: Config, client: UpstreamClient, created: int) -> Snapshot:
    providers: dict[str, ProviderRuntime] = {}
    for p in config.providers:
        ep = Endpoint.parse(p.base_url)
        t = p.timeouts
        pool = client.pool(ep, max_connections=p.max_connections, idle_s=p.idle_connection_s,
                           connect_s=t.connect_s)
        secrets = tuple(s.encode() for s in (p.api_key,) if s)
        providers[p.name] = ProviderRuntime(
            cfg=p, name=p.name, endpoint=ep, pool=pool,
            timeouts=Timeouts(t.connect_s, t.first_byte_s, t.idle_s, t.total_s),
            secrets=secrets)
    models: dict[str, ModelRoute] = {}
    for m in config.models:
        targets = tuple(
            TargetRuntime(
                provider=providers[t.provider], model=t.model, weight=t.weight,
                response_headers=(b"x-fastgw-provider: " + _header_value(t.provider)
                                  + b"\r\nx-fastgw-model: " + _header_value(t.model) + b"\r\n"))
            for t in m.targets)
        price = m.price
        models[m.name] = ModelRoute(
            name=m.name, cfg=m, targets=targets,
            input_per_token=price.input_per_mtok / 1e6 if price else 0.0,
            output_per_token=price.output_per_mtok / 1e6 if price else 0.0)
    return Snapshot(config=config, providers=providers, models=models, created=created)
