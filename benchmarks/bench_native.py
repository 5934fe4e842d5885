"""Per-call cost of the native hot paths against their Python references.

Run: ``python benchmarks/bench_native.py [--only NAME ...] [--scale F]``.

Each row times one call made from Python (the PyO3 crossing included) with
the native module and with ``fastgw._reference`` in the same run, as the best
of several repeats, and checks it against the target from issue 3:

- limiter reserve over 3 scopes <= 1 us and >= 5x the reference;
- ring lookup <= 0.5 us;
- cached JWT <= 0.5 us, uncached HS256 <= 5 us, RS256 <= 60 us;
- SSE scan of a 50-event stream >= 5x the reference;
- cache key of a typical (~330-byte) chat request <= 1 us.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fastgw import _native as native
from fastgw._reference import cachekey as ref_cachekey
from fastgw._reference import jwt as ref_jwt
from fastgw._reference import limiter as ref_limiter
from fastgw._reference import ring as ref_ring
from fastgw._reference import sse as ref_sse

T0 = 1_700_000_000.0


@dataclass
class Row:
    name: str
    native_us: float
    reference_us: float | None
    max_us: float | None = None
    min_speedup: float | None = None

    @property
    def speedup(self) -> float | None:
        return None if self.reference_us is None else self.reference_us / self.native_us

    @property
    def ok(self) -> bool:
        fast = self.max_us is None or self.native_us <= self.max_us
        ratio = self.min_speedup is None or (self.speedup or 0.0) >= self.min_speedup
        return fast and ratio


def per_call_us(fn: Callable[[], Any], calls: int, repeats: int = 7) -> float:
    """Best-of-``repeats`` time of one call, in microseconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / calls / 1000.0)
    return best


def bench_limiter(scale: float) -> list[Row]:
    """Three scopes (rpm, tpm, monthly USD) with room to spare: the admit path."""
    reserve, both = [], []
    for mod in (native, ref_limiter):
        table: Any = mod.LimiterTable()
        scopes = [
            mod.Scope("key:team-a:rpm", mod.Limit.rate(1e12)),
            mod.Scope("key:team-a:tpm", mod.Limit.rate(1e15)),
            mod.Scope("model:gpt-4o-mini:usd", mod.Limit.budget(1e12, "month")),
        ]
        costs = [1.0, 1500.0, 0.002]
        actual = [1.0, 900.0, 0.001]
        n = int((200_000 if mod is native else 20_000) * scale) or 1
        reserve.append(per_call_us(partial(table.reserve, scopes, costs, T0), n))

        def cycle(
            table: Any = table, scopes: Any = scopes, costs: Any = costs, actual: Any = actual
        ) -> None:
            table.settle(table.reserve(scopes, costs, T0), actual, T0)

        both.append(per_call_us(cycle, n))
    return [
        Row("limiter reserve, 3 scopes", reserve[0], reserve[1], 1.0, 5.0),
        Row("limiter reserve+settle, 3 scopes", both[0], both[1]),
    ]


def bench_ring(scale: float) -> list[Row]:
    targets = {f"azure-{i}/gpt-4o-mini": float(1 + i % 3) for i in range(10)}
    times = []
    for mod in (native, ref_ring):
        ring: Any = mod.HashRing(targets)
        key = "user-8c1f0e2a-4b6d"
        n = int((500_000 if mod is native else 20_000) * scale) or 1
        times.append(per_call_us(partial(ring.lookup, key), n))
    loads = [3.0] * 10
    ring = native.HashRing(targets)
    bounded = per_call_us(
        lambda: ring.lookup("user-8c1f0e2a-4b6d", loads), int(300_000 * scale) or 1
    )
    return [
        Row("ring lookup", times[0], times[1], 0.5),
        Row("ring lookup, bounded load (10 loads)", bounded, None),
    ]


def bench_jwt(scale: float) -> list[Row]:
    secret = b"benchmark-secret-" * 4
    claims = {
        "sub": "user-123",
        "iss": "https://idp.example.com/",
        "aud": "fastgw",
        "exp": int(T0) + 3600,
        "iat": int(T0) - 10,
        "tier": "pro",
        "fastgw_models": ["gpt-4o*", "claude-*"],
    }
    keys: dict[str, tuple[Any, Any]] = {
        "HS256": (secret, secret),
        "RS256": (k := rsa.generate_private_key(65537, 2048), k.public_key()),
        "ES256": (e := ec.generate_private_key(ec.SECP256R1()), e.public_key()),
        "EdDSA": (d := ed25519.Ed25519PrivateKey.generate(), d.public_key()),
    }
    rows = []
    for alg, (private, public) in keys.items():
        token = pyjwt.encode(claims, private, algorithm=alg)
        if alg == "HS256":
            sets: tuple[Any, Any] = (
                native.JwtKeySet.from_secret(secret),
                ref_jwt.JwtKeySet.from_secret(secret),
            )
        else:
            jwk = json.dumps(
                {
                    "keys": [
                        json.loads(pyjwt.algorithms.get_default_algorithms()[alg].to_jwk(public))
                    ]
                }
            )
            sets = (native.JwtKeySet.from_jwks(jwk), ref_jwt.JwtKeySet.from_jwks(jwk))
        kw: dict[str, Any] = {"algorithms": [alg], "issuer": claims["iss"], "audience": "fastgw"}
        uncached = []
        for mod, ks in zip((native, ref_jwt), sets, strict=True):
            v: Any = mod.JwtVerifier(ks, cache_size=0, **kw)
            n = int((20_000 if mod is native else 2_000) * scale) or 1
            if alg != "HS256":
                n = max(1, n // 10)
            uncached.append(per_call_us(partial(v.verify, token, T0), n))
        limit = {"HS256": 5.0, "RS256": 60.0}.get(alg)
        rows.append(Row(f"jwt verify {alg}, uncached", uncached[0], uncached[1], limit))
        if alg == "HS256":
            cached = []
            for mod, ks in zip((native, ref_jwt), sets, strict=True):
                v = mod.JwtVerifier(ks, **kw)
                v.verify(token, T0)
                n = int((300_000 if mod is native else 50_000) * scale) or 1
                cached.append(per_call_us(partial(v.verify, token, T0), n))
            rows.append(Row("jwt verify, cached", cached[0], cached[1], 0.5))
    return rows


def _stream_50() -> list[bytes]:
    """A 50-event OpenAI chat stream with usage, one event per chunk."""

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> bytes:
        body = {
            "id": "chatcmpl-AbC123",
            "object": "chat.completion.chunk",
            "created": 1_730_000_000,
            "model": "gpt-4o-mini-2024-07-18",
            "system_fingerprint": "fp_0ba0d124f1",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            "usage": usage,
        }
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": f" word{i}"}) for i in range(46)]
    events.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 20, "completion_tokens": 46, "total_tokens": 66}
    events.append(
        b"data: "
        + json.dumps({"id": "chatcmpl-AbC123", "choices": [], "usage": usage}).encode()
        + b"\n\n"
    )
    events.append(b"data: [DONE]\n\n")
    assert len(events) == 50
    return events


def bench_sse(scale: float) -> list[Row]:
    events = _stream_50()
    rows = []
    for label, drop in (
        ("sse scan, 50-event stream", False),
        ("sse scan+drop usage, 50 events", True),
    ):
        times = []
        for mod in (native, ref_sse):

            def run(mod: Any = mod, drop: bool = drop) -> None:
                s = mod.SseScanner(drop_usage=drop)
                for e in events:
                    s.feed(e)

            n = int((20_000 if mod is native else 1_000) * scale) or 1
            times.append(per_call_us(run, n))
        rows.append(Row(label, times[0], times[1], None, 5.0 if not drop else None))
    return rows


def _chat_body(content: str) -> bytes:
    """A chat request as an OpenAI client sends it (streamed, with a user)."""
    return json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                {"role": "user", "content": content},
            ],
            "temperature": 0,
            "max_tokens": 256,
            "stream": True,
            "stream_options": {"include_usage": True},
            "user": "user-8c1f0e2a",
        }
    ).encode()


def bench_cachekey(scale: float) -> list[Row]:
    """The response cache's key: a typical chat request, and a long conversation."""
    typical = _chat_body("What is the capital of France, and what is it known for?")
    long = _chat_body("Summarize this, please. " * 2700)  # ~64 KiB: read without the GIL
    rows = []
    for label, body, target, calls in (
        (f"cache key, {len(typical)}-byte chat body", typical, 1.0, 200_000),
        (f"cache key, {len(long) // 1024} KiB chat body", long, None, 2_000),
    ):
        times = []
        for mod in (native, ref_cachekey):
            n = int((calls if mod is native else calls // 20) * scale) or 1
            times.append(
                per_call_us(
                    partial(mod.cache_key, body, b"team-a", b"/v1/chat/completions",
                            b"gpt-4o-mini"),
                    n,
                )
            )
        rows.append(Row(label, times[0], times[1], target))
    return rows


BENCHES: dict[str, Callable[[float], list[Row]]] = {
    "limiter": bench_limiter,
    "ring": bench_ring,
    "jwt": bench_jwt,
    "sse": bench_sse,
    "cachekey": bench_cachekey,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="*", choices=sorted(BENCHES), help="run only these groups")
    p.add_argument("--scale", type=float, default=1.0, help="multiply iteration counts")
    args = p.parse_args(argv)
    print(
        f"fastgw._native {native.__version__}, build {native.build_profile}, "
        f"Python {sys.version.split()[0]}"
    )
    if native.build_profile != "release":
        print("warning: debug build; run `pip install -e .` for a release build")
    rows: list[Row] = []
    for name in args.only or list(BENCHES):
        rows += BENCHES[name](args.scale)
    print(f"{'workload':40} {'native us':>10} {'python us':>10} {'speedup':>8}  target")
    failed = 0
    for r in rows:
        ref = "-" if r.reference_us is None else f"{r.reference_us:10.3f}"
        speed = "-" if r.speedup is None else f"{r.speedup:7.1f}x"
        target = " ".join(
            t
            for t in (
                f"<= {r.max_us} us" if r.max_us is not None else "",
                f">= {r.min_speedup}x" if r.min_speedup is not None else "",
            )
            if t
        )
        verdict = "" if not target else ("ok" if r.ok else "MISSED")
        failed += bool(target) and not r.ok
        print(f"{r.name:40} {r.native_us:10.3f} {ref:>10} {speed:>8}  {target} {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
