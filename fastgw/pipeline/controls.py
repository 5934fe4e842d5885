"""Per-request routing inputs: controls, balancing keys and variant choice.

Controls come from the body's ``fastgw`` object or from headers
(``x-fastgw-order``, ``x-fastgw-only``, ``x-fastgw-ignore``,
``x-fastgw-allow-fallbacks``, ``x-fastgw-max-price``), OpenRouter-style:

* ``order``: providers to try first, in this order
* ``only`` / ``ignore``: providers allowed / excluded
* ``allow_fallbacks``: false keeps the request on the asked model
* ``max_price``: ``{input_per_mtok, output_per_mtok}`` (or one number for both);
  models priced above are skipped
* ``metadata``: an object of strings a cascade's ``accept_if.metadata`` rules
  read (pipeline/cascade.py), with the body's own ``metadata``
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

from fastgw.errors import BadRequest
from fastgw.pipeline.ctx import RequestCtx
from fastgw.pipeline.snapshot import ModelRoute, Variant


@dataclass(slots=True)
class Controls:
    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    max_input: float | None = None  # USD per million tokens
    max_output: float | None = None

    def allows(self, provider: str) -> bool:
        if provider in self.ignore:
            return False
        return self.only is None or provider in self.only

    def affordable(self, route: ModelRoute) -> bool:
        if self.max_input is not None and route.input_per_token * 1e6 > self.max_input:
            return False
        return not (self.max_output is not None
                    and route.output_per_token * 1e6 > self.max_output)


NO_CONTROLS = Controls()

_HEADERS = (b"x-fastgw-order", b"x-fastgw-only", b"x-fastgw-ignore",
            b"x-fastgw-allow-fallbacks", b"x-fastgw-max-price")


def read_controls(ctx: RequestCtx) -> Controls:
    """Controls of this request; strips the ``fastgw`` object from the body."""
    raw: dict[str, Any] = {}
    for name, value in ctx.cycle.headers:
        if name.startswith(b"x-fastgw-") and name in _HEADERS:
            key = name[9:].decode().replace("-", "_")
            text = value.decode("utf-8", "replace").strip()
            if key in ("order", "only", "ignore"):
                raw[key] = [p.strip() for p in text.split(",") if p.strip()]
            elif key == "allow_fallbacks":
                raw[key] = text.lower() not in ("false", "0", "no")
            else:
                raw[key] = _number(text, "x-fastgw-max-price")
    body_controls = ctx.doc.get("fastgw")
    if body_controls is not None:
        if not isinstance(body_controls, dict):
            raise BadRequest("'fastgw' must be an object of routing controls", param="fastgw")
        raw.update(body_controls)
        doc = {k: v for k, v in ctx.doc.items() if k != "fastgw"}
        ctx.doc = doc
        ctx.body = orjson.dumps(doc)
    if not raw:
        return NO_CONTROLS
    return _parse(raw)


def _parse(raw: dict[str, Any]) -> Controls:
    unknown = set(raw) - {"order", "only", "ignore", "allow_fallbacks", "max_price", "metadata"}
    if unknown:
        raise BadRequest(f"unknown routing control(s) {sorted(unknown)}; use order, only, "
                         "ignore, allow_fallbacks, max_price or metadata", param="fastgw")
    if "metadata" in raw and not isinstance(raw["metadata"], dict):
        raise BadRequest("'fastgw.metadata' must be an object", param="fastgw.metadata")
    c = Controls()
    for key in ("order", "only", "ignore"):
        if key in raw:
            v = raw[key]
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise BadRequest(f"'fastgw.{key}' must be a list of provider names",
                                 param=f"fastgw.{key}")
            if key == "order":
                c.order = tuple(v)
            elif key == "only":
                c.only = frozenset(v)
            else:
                c.ignore = frozenset(v)
    if "allow_fallbacks" in raw:
        if not isinstance(raw["allow_fallbacks"], bool):
            raise BadRequest("'fastgw.allow_fallbacks' must be true or false",
                             param="fastgw.allow_fallbacks")
        c.allow_fallbacks = raw["allow_fallbacks"]
    if "max_price" in raw:
        mp = raw["max_price"]
        if isinstance(mp, int | float) and not isinstance(mp, bool):
            c.max_input = c.max_output = float(mp)
        elif isinstance(mp, dict):
            for k, v in mp.items():
                if k in ("input_per_mtok", "prompt"):
                    c.max_input = _number(v, "fastgw.max_price." + k)
                elif k in ("output_per_mtok", "completion"):
                    c.max_output = _number(v, "fastgw.max_price." + k)
                else:
                    raise BadRequest(f"unknown max_price field {k!r}; use input_per_mtok "
                                     "and output_per_mtok", param="fastgw.max_price")
        else:
            raise BadRequest("'fastgw.max_price' must be a number or {input_per_mtok, "
                             "output_per_mtok}", param="fastgw.max_price")
    return c


def _number(v: Any, where: str) -> float:
    try:
        if isinstance(v, bool):
            raise ValueError
        return float(v)
    except (TypeError, ValueError):
        raise BadRequest(f"'{where}' must be a number (USD per million tokens)",
                         param=where) from None


def apply_order(order: list[int], route: ModelRoute, controls: Controls) -> list[int]:
    """The balancer's order, filtered by only/ignore and re-ranked by ``order``."""
    if controls is NO_CONTROLS:
        return order
    targets = route.targets
    kept = [i for i in order if controls.allows(targets[i].provider.name)]
    if controls.order:
        rank = {p: n for n, p in enumerate(controls.order)}
        last = len(rank)
        kept.sort(key=lambda i: rank.get(targets[i].provider.name, last))
    return kept


def hash_key(ctx: RequestCtx, spec: str | None) -> str | bytes | None:
    """The consistent-hash key of this request (None: no key, use the fallback); a
    ``str`` is hashed as its UTF-8 (by the native ring, without an encode here)."""
    if spec is None:
        return None
    if spec == "key":
        return ctx.key_name or _client_ip(ctx)
    if spec == "body:user":
        user = ctx.doc.get("user")
        return user.encode() if isinstance(user, str) and user else None
    if spec == "prefix":
        return conversation_prefix(ctx.doc)
    if spec.startswith("header:"):
        return ctx.cycle.header(spec[7:].lower().encode())
    return None


def conversation_prefix(doc: dict[str, Any]) -> bytes | None:
    """A digest of what a provider's prompt cache keys on: system prompt, tools and
    the first user turn. Later turns do not change it, so a conversation sticks."""
    messages = doc.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    head: list[Any] = []
    for m in messages:
        head.append(m)
        if isinstance(m, dict) and m.get("role") == "user":
            break
    h = hashlib.blake2b(orjson.dumps(head), digest_size=16)
    tools = doc.get("tools")
    if tools:
        h.update(orjson.dumps(tools))
    return h.digest()


def _client_ip(ctx: RequestCtx) -> bytes:
    return ctx.cycle.client_addr[0].encode()


def choose_variant(ctx: RequestCtx, route: ModelRoute, rnd: float) -> Variant:
    """A weighted choice; with ``sticky`` the same caller always gets the same one."""
    sticky = route.cfg.sticky
    point: float
    if sticky is not None:
        if sticky == "key":
            k = ctx.key_name.encode() if ctx.key_name else _client_ip(ctx)
        else:
            k = ctx.cycle.header(sticky[7:].lower().encode()) or _client_ip(ctx)
        point = (zlib.crc32(route.name.encode() + b"\0" + k) / 2**32) * route.variant_total
    else:
        point = rnd * route.variant_total
    acc = 0.0
    for v in route.variants:
        acc += v.weight
        if point < acc:
            return v
    return route.variants[-1]
