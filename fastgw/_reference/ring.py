"""Pure-Python reference of the native hash ring (``fastgw._native.HashRing``).

The specification is in ``rust/src/ring.rs``; this module follows it step for
step, including its hash, XXH3-64 with seed 0 (written out below from the
XXH3 specification, with the default 192-byte secret), so that the native
ring and this one send every key to the same target.
"""

from __future__ import annotations

import bisect
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["HashRing", "hash64"]

_M64 = (1 << 64) - 1
_P32_1, _P32_2, _P32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
_P64_1, _P64_2, _P64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P64_4, _P64_5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5
_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
_STRIPE = 64
_SECRET_MIN = 136


def _r64(b: bytes, i: int) -> int:
    return int(struct.unpack_from("<Q", b, i)[0])


def _r32(b: bytes, i: int) -> int:
    return int(struct.unpack_from("<I", b, i)[0])


def _xxh64_avalanche(h: int) -> int:
    h ^= h >> 33
    h = (h * _P64_2) & _M64
    h ^= h >> 29
    h = (h * _P64_3) & _M64
    return h ^ (h >> 32)


def _avalanche(h: int) -> int:
    h ^= h >> 37
    h = (h * 0x165667919E3779F9) & _M64
    return h ^ (h >> 32)


def _rotl(v: int, r: int) -> int:
    return ((v << r) | (v >> (64 - r))) & _M64


def _strong_avalanche(h: int, length: int) -> int:
    h ^= _rotl(h, 49) ^ _rotl(h, 24)
    h = (h * 0x9FB21C651E98DF25) & _M64
    h ^= ((h >> 35) + length) & _M64
    h = (h * 0x9FB21C651E98DF25) & _M64
    return h ^ (h >> 28)


def _fold(a: int, b: int) -> int:
    p = a * b
    return (p & _M64) ^ (p >> 64)


def _mix16(data: bytes, i: int, s: int) -> int:
    return _fold(_r64(data, i) ^ _r64(_SECRET, s), _r64(data, i + 8) ^ _r64(_SECRET, s + 8))


def _bswap64(v: int) -> int:
    return int.from_bytes(v.to_bytes(8, "little"), "big")


def hash64(data: str | bytes) -> int:
    """XXH3-64 (seed 0) of ``data`` (a ``str`` is hashed as its UTF-8)."""
    b = data.encode() if isinstance(data, str) else bytes(data)
    n = len(b)
    if n == 0:
        return _xxh64_avalanche(_r64(_SECRET, 56) ^ _r64(_SECRET, 64))
    if n <= 3:
        combo = (b[0] << 16) | (b[n >> 1] << 24) | b[n - 1] | (n << 8)
        return _xxh64_avalanche(combo ^ (_r32(_SECRET, 0) ^ _r32(_SECRET, 4)))
    if n <= 8:
        input64 = (_r32(b, n - 4) + (_r32(b, 0) << 32)) & _M64
        return _strong_avalanche(input64 ^ (_r64(_SECRET, 8) ^ _r64(_SECRET, 16)), n)
    if n <= 16:
        lo = _r64(b, 0) ^ (_r64(_SECRET, 24) ^ _r64(_SECRET, 32))
        hi = _r64(b, n - 8) ^ (_r64(_SECRET, 40) ^ _r64(_SECRET, 48))
        return _avalanche((n + _bswap64(lo) + hi + _fold(lo, hi)) & _M64)
    acc = (n * _P64_1) & _M64
    if n <= 128:
        if n > 32:
            if n > 64:
                if n > 96:
                    acc += _mix16(b, 48, 96) + _mix16(b, n - 64, 112)
                acc += _mix16(b, 32, 64) + _mix16(b, n - 48, 80)
            acc += _mix16(b, 16, 32) + _mix16(b, n - 32, 48)
        acc += _mix16(b, 0, 0) + _mix16(b, n - 16, 16)
        return _avalanche(acc & _M64)
    if n <= 240:
        for i in range(8):
            acc += _mix16(b, 16 * i, 16 * i)
        acc = _avalanche(acc & _M64)
        for i in range(8, n // 16):
            acc += _mix16(b, 16 * i, 16 * (i - 8) + 3)
        acc += _mix16(b, n - 16, _SECRET_MIN - 17)
        return _avalanche(acc & _M64)
    return _long(b)


def _accumulate(acc: list[int], b: bytes, i: int, s: int) -> None:
    for lane in range(8):
        v = _r64(b, i + 8 * lane)
        k = v ^ _r64(_SECRET, s + 8 * lane)
        acc[lane ^ 1] = (acc[lane ^ 1] + v) & _M64
        acc[lane] = (acc[lane] + (k & 0xFFFFFFFF) * (k >> 32)) & _M64


def _long(b: bytes) -> int:
    n = len(b)
    acc = [_P32_3, _P64_1, _P64_2, _P64_3, _P64_4, _P32_2, _P64_5, _P32_1]
    stripes = (len(_SECRET) - _STRIPE) // 8
    block = _STRIPE * stripes
    blocks = (n - 1) // block
    for blk in range(blocks):
        for st in range(stripes):
            _accumulate(acc, b, blk * block + st * _STRIPE, st * 8)
        for lane in range(8):
            a = acc[lane] ^ (acc[lane] >> 47) ^ _r64(_SECRET, len(_SECRET) - _STRIPE + 8 * lane)
            acc[lane] = (a * _P32_1) & _M64
    for st in range(((n - 1) - block * blocks) // _STRIPE):
        _accumulate(acc, b, blocks * block + st * _STRIPE, st * 8)
    _accumulate(acc, b, n - _STRIPE, len(_SECRET) - _STRIPE - 7)
    result = (n * _P64_1) & _M64
    for i in range(4):
        s = 11 + 16 * i
        result += _fold(acc[2 * i] ^ _r64(_SECRET, s), acc[2 * i + 1] ^ _r64(_SECRET, s + 8))
    return _avalanche(result & _M64)


class HashRing:
    """An immutable weighted consistent-hash ring of named targets."""

    __slots__ = ("_hashes", "_names", "_owners", "_replicas", "_weight_sum", "_weights")

    def __init__(
        self, targets: Mapping[str, float] | Iterable[tuple[str, float]], *, replicas: int = 160
    ) -> None:
        given: object = targets
        if isinstance(given, str):
            raise TypeError("targets must be a mapping or (name, weight) pairs")
        pairs = list(targets.items()) if isinstance(targets, Mapping) else list(targets)
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self._replicas = replicas
        self._names: list[str] = []
        self._weights: list[float] = []
        self._weight_sum = 0.0
        points: list[tuple[int, bytes, int]] = []
        seen: set[str] = set()
        for t, (name, w) in enumerate(pairs):
            w = float(w)
            if name in seen:
                raise ValueError(f"duplicate target {name!r}")
            seen.add(name)
            if not (math.isfinite(w) and w >= 0.0):
                raise ValueError(f"weight of {name!r} must be finite and >= 0, got {w}")
            n = max(1.0, math.floor(w * replicas + 0.5)) if w > 0.0 else 0.0
            if n > 1_000_000:
                raise ValueError(f"weight {w} x replicas {replicas} gives too many points")
            raw = name.encode()
            points.extend((hash64(raw + b"#" + str(i).encode()), raw, t) for i in range(int(n)))
            self._names.append(name)
            self._weights.append(w)
            self._weight_sum += w
        points.sort(key=lambda p: (p[0], p[1]))
        self._hashes = [p[0] for p in points]
        self._owners = [p[2] for p in points]

    @property
    def targets(self) -> tuple[str, ...]:
        """Target names, in construction order."""
        return tuple(self._names)

    @property
    def weights(self) -> tuple[float, ...]:
        """Target weights, in construction order."""
        return tuple(self._weights)

    @property
    def replicas(self) -> int:
        """Points per unit of weight."""
        return self._replicas

    @property
    def points(self) -> int:
        """Points on the ring."""
        return len(self._hashes)

    def __len__(self) -> int:
        return len(self._names)

    def _start(self, key: str | bytes) -> int | None:
        if isinstance(key, str):
            key = key.encode()
        elif not isinstance(key, bytes):
            raise TypeError(f"expected str or bytes, got {type(key).__name__}")
        if not self._hashes:
            return None
        i = bisect.bisect_left(self._hashes, hash64(key))
        return 0 if i == len(self._hashes) else i

    def _eligible(self, loads: Sequence[float], c: float) -> list[bool]:
        loads = [float(x) for x in loads]
        if len(loads) != len(self._names):
            raise ValueError(f"{len(loads)} loads given for {len(self._names)} targets")
        if not (math.isfinite(c) and c >= 1.0):
            raise ValueError(f"load factor c must be finite and >= 1, got {c}")
        total = 0.0
        for x in loads:
            if not (math.isfinite(x) and x >= 0.0):
                raise ValueError(f"loads must be finite and >= 0, got {x}")
            total += x
        ws = self._weight_sum
        return [
            ws > 0.0 and x + 1.0 <= math.ceil(c * (total + 1.0) * (w / ws))
            for x, w in zip(loads, self._weights, strict=True)
        ]

    def lookup_index(
        self, key: str | bytes, loads: Sequence[float] | None = None, c: float = 1.25
    ) -> int:
        """Index in ``targets`` of the target for ``key``."""
        eligible = None if loads is None else self._eligible(loads, c)
        start = self._start(key)
        if start is None:
            raise LookupError("the ring has no target with a positive weight")
        first = self._owners[start]
        if eligible is None or eligible[first]:
            return first
        m = len(self._hashes)
        for step in range(1, m):
            t = self._owners[(start + step) % m]
            if eligible[t]:
                return t
        return first

    def lookup(
        self, key: str | bytes, loads: Sequence[float] | None = None, c: float = 1.25
    ) -> str:
        """The target for ``key`` (bounded by ``loads`` when given)."""
        return self._names[self.lookup_index(key, loads, c)]

    def candidates(
        self,
        key: str | bytes,
        n: int | None = None,
        loads: Sequence[float] | None = None,
        c: float = 1.25,
    ) -> list[str]:
        """Up to ``n`` distinct targets in fallback order for ``key``."""
        eligible = None if loads is None else self._eligible(loads, c)
        start = self._start(key)
        if start is None:
            return []
        want = len(self._names) if n is None else min(n, len(self._names))
        out: list[int] = []
        later: list[int] = []
        seen: set[int] = set()
        m = len(self._hashes)
        if want > 0:
            for step in range(m):
                t = self._owners[(start + step) % m]
                if t in seen:
                    continue
                seen.add(t)
                if eligible is not None and not eligible[t]:
                    later.append(t)
                else:
                    out.append(t)
                    if len(out) == want:
                        break
                if eligible is None and len(seen) == want:
                    break
            out.extend(later[: want - len(out)])
        return [self._names[i] for i in out]

    def order(self, key: str | bytes, states: Sequence[Any], c: float = 1.25) -> list[int]:
        """Every target's index in fallback order for ``key``, the bounded-load
        lookup (``loads``: the ``inflight`` of ``states``) first when any is not 0."""
        index = {name: i for i, name in enumerate(self._names)}
        order = [index[name] for name in self.candidates(key)]
        loads = [s.inflight for s in states]
        if any(loads) and order:
            first = self.lookup_index(key, loads, c)
            if first != order[0]:
                order.remove(first)
                order.insert(0, first)
        return order

    def _pairs(self) -> list[tuple[str, float]]:
        return list(zip(self._names, self._weights, strict=True))

    def with_target(self, name: str, weight: float) -> HashRing:
        """A new ring with ``name`` added (or its weight changed)."""
        pairs = self._pairs()
        for i, (n, _) in enumerate(pairs):
            if n == name:
                pairs[i] = (name, weight)
                break
        else:
            pairs.append((name, weight))
        return HashRing(pairs, replicas=self._replicas)

    def without_target(self, name: str) -> HashRing:
        """A new ring without ``name``."""
        return HashRing([p for p in self._pairs() if p[0] != name], replicas=self._replicas)
