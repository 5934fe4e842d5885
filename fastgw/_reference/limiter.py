"""Pure-Python reference of the native limiter table (``fastgw._native``).

Same API as ``LimiterTable``, ``Limit``, ``Scope`` and ``Reservation`` in the
extension, and the same float operations in the same order, so that the
answers are bit-equal (tests compare them with ``==``). See
``rust/src/limiter.rs`` for the design: three bucket kinds sharing one state
shape, all-or-none reserve, settle with refund or extra debit, and lossless
eviction of idle buckets by a cursor walking the table.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Admission", "Limit", "LimiterTable", "Reservation", "Scope"]

_DAY = 86_400.0
_MAX_VALUE = 9_007_199_254_740_992.0
_RATE, _CONCURRENCY, _BUDGET = "rate", "concurrency", "budget"
_PERIODS = {"minute": 60.0, "hour": 3600.0, "day": _DAY, "week": 7.0 * _DAY}
_table_ids = itertools.count(1)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date."""
    y = y - 1 if m <= 2 else y
    era = y // 400
    yoe = y - era * 400
    mp = m - 3 if m > 2 else m + 9
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    """The date of day ``z`` since 1970-01-01."""
    z += 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (1 if m <= 2 else 0), m, d


def _window_start(period: float | None, now: float) -> float:
    """Start of the window holding ``now``; ``period`` None means months."""
    if period is not None:
        return math.floor(now / period) * period
    y, m, _ = _civil_from_days(math.floor(now / _DAY))
    return _days_from_civil(y, m, 1) * _DAY


def _window_end(period: float | None, start: float) -> float:
    if period is not None:
        return start + period
    y, m, _ = _civil_from_days(math.floor(start / _DAY))
    y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return _days_from_civil(y, m, 1) * _DAY


def _positive(what: str, v: float) -> float:
    v = float(v)
    if not (math.isfinite(v) and 0.0 < v <= _MAX_VALUE):
        raise ValueError(f"{what} must be a positive finite number, got {v}")
    return v


def _non_negative(what: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v <= _MAX_VALUE:
        raise ValueError(f"{what} must be a finite number >= 0, got {v}")
    return v


def _check_now(now: float | None) -> float:
    if now is None:
        return time.time()
    now = float(now)
    if not (math.isfinite(now) and abs(now) <= _MAX_VALUE):
        raise ValueError(f"now must be a finite time in seconds, got {now}")
    return now


@dataclass(frozen=True, slots=True)
class _State:
    level: float
    stamp: float


class Limit:
    """What a scope allows: a rate, a concurrency cap or a budget."""

    __slots__ = ("_a", "_b", "_kind", "_period")

    def __init__(self, kind: str, a: float, b: float, period: float | None) -> None:
        self._kind = kind
        self._a = a  # capacity / max / amount
        self._b = b  # refill per second (rate)
        self._period = period  # budget window seconds, None = month

    @staticmethod
    def rate(amount: float, period_s: float = 60.0, *, burst: float | None = None) -> Limit:
        """``amount`` per ``period_s`` seconds, holding a burst of ``burst``."""
        amount = _positive("rate amount", amount)
        period_s = _positive("rate period", period_s)
        capacity = amount if burst is None else _positive("burst", burst)
        return Limit(_RATE, capacity, amount / period_s, None)

    @staticmethod
    def concurrency(max_inflight: float) -> Limit:
        """At most ``max_inflight`` at once."""
        return Limit(_CONCURRENCY, _non_negative("max in flight", max_inflight), 0.0, None)

    @staticmethod
    def budget(amount: float, period: str | float) -> Limit:
        """``amount`` per period (a name or seconds)."""
        amount = _non_negative("budget amount", amount)
        if isinstance(period, str):
            if period == "month":
                return Limit(_BUDGET, amount, 0.0, None)
            if period not in _PERIODS:
                raise ValueError(
                    f"unknown budget period {period!r}: "
                    "use minute, hour, day, week, month or seconds"
                )
            return Limit(_BUDGET, amount, 0.0, _PERIODS[period])
        return Limit(_BUDGET, amount, 0.0, _positive("budget period", period))

    @property
    def kind(self) -> str:
        """``"rate"``, ``"concurrency"`` or ``"budget"``."""
        return self._kind

    @property
    def value(self) -> float:
        """The limit reported in headers."""
        return self._a

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Limit) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Limit({self._kind}, {self._a}, {self._b}, {self._period})"

    def _key(self) -> tuple[str, float, float, float | None]:
        return (self._kind, self._a, self._b, self._period)

    # Bucket semantics; mirror of rust/src/limiter.rs `impl Limit`.

    def _fresh(self, now: float) -> _State:
        if self._kind == _RATE:
            return _State(self._a, now)
        if self._kind == _CONCURRENCY:
            return _State(0.0, 0.0)
        return _State(0.0, _window_start(self._period, now))

    def _refresh(self, s: _State, now: float) -> _State:
        if self._kind == _RATE:
            if now > s.stamp:
                return _State(min(self._a, s.level + (now - s.stamp) * self._b), now)
            return s
        if self._kind == _CONCURRENCY:
            return s
        start = _window_start(self._period, now)
        return _State(0.0, start) if start > s.stamp else s

    def _is_idle(self, s: _State, now: float) -> bool:
        if self._kind == _RATE:
            return self._refresh(s, now).level >= self._a
        if self._kind == _CONCURRENCY:
            return s.level <= 0.0
        return s.level <= 0.0 or _window_start(self._period, now) > s.stamp

    def _status(self, s: _State, now: float) -> tuple[float, float, float]:
        if self._kind == _RATE:
            return (self._a, max(s.level, 0.0), (self._a - s.level) / self._b)
        if self._kind == _CONCURRENCY:
            return (self._a, max(self._a - s.level, 0.0), 0.0)
        end = _window_end(self._period, s.stamp)
        return (self._a, max(self._a - s.level, 0.0), end - now)

    def _take(self, s: _State, cost: float, now: float) -> _State | float:
        """The new state, or the seconds to wait (a float)."""
        if self._kind == _RATE:
            if cost <= s.level:
                return _State(s.level - cost, s.stamp)
            return math.inf if cost > self._a else (cost - s.level) / self._b
        if self._kind == _CONCURRENCY:
            if s.level + cost <= self._a:
                return _State(s.level + cost, s.stamp)
            return math.inf if cost > self._a else 1.0
        if s.level + cost <= self._a:
            return _State(s.level + cost, s.stamp)
        return math.inf if cost > self._a else _window_end(self._period, s.stamp) - now

    def _adopt(self, old: Limit, s: _State, now: float) -> _State:
        if self._kind == old._kind == _RATE:
            return _State(min(s.level, self._a), s.stamp)
        if self._kind == old._kind == _CONCURRENCY:
            return s
        if self._kind == old._kind == _BUDGET and self._period == old._period:
            return s
        return self._fresh(now)


def _key_bytes(key: str | bytes) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    raise TypeError(f"expected str or bytes, got {type(key).__name__}")


class Scope:
    """A bucket name and its limit."""

    __slots__ = ("_bkey", "_key", "_limit")

    def __init__(self, key: str | bytes, limit: Limit) -> None:
        self._bkey = _key_bytes(key)
        self._key = key
        self._limit = limit

    @property
    def key(self) -> str | bytes:
        """The bucket name, as given."""
        return self._key

    @property
    def limit(self) -> Limit:
        """The limit."""
        return self._limit

    def __repr__(self) -> str:
        return f"Scope({self._key!r}, {self._limit!r})"


class Reservation:
    """The result of a reserve; truthy when admitted."""

    __slots__ = (
        "_admitted",
        "_costs",
        "_denied",
        "_retry_after",
        "_scopes",
        "_settled",
        "_statuses",
        "_table_id",
        "_windows",
    )

    def __init__(
        self,
        table_id: int,
        scopes: tuple[Scope, ...],
        costs: tuple[float, ...],
        admitted: bool,
        retry_after: float,
        denied: int | None,
        statuses: list[tuple[float, float, float]],
        windows: list[float],
    ) -> None:
        self._table_id = table_id
        self._scopes = scopes
        self._costs = costs
        self._admitted = admitted
        self._retry_after = retry_after
        self._denied = denied
        self._statuses = statuses
        self._windows = windows
        self._settled = False

    @property
    def admitted(self) -> bool:
        """True when every scope took its cost."""
        return self._admitted

    @property
    def retry_after(self) -> float:
        """Seconds to wait before retrying (0.0 when admitted)."""
        return self._retry_after

    @property
    def denied_index(self) -> int | None:
        """Index of the scope with the longest wait, when refused."""
        return self._denied

    @property
    def limits(self) -> tuple[float, ...]:
        """Per scope: the limit."""
        return tuple(s[0] for s in self._statuses)

    @property
    def remaining(self) -> tuple[float, ...]:
        """Per scope: what is left."""
        return tuple(s[1] for s in self._statuses)

    @property
    def reset_after(self) -> tuple[float, ...]:
        """Per scope: seconds until back to the full limit."""
        return tuple(s[2] for s in self._statuses)

    @property
    def costs(self) -> tuple[float, ...]:
        """The costs reserved."""
        return self._costs

    @property
    def scopes(self) -> tuple[Scope, ...]:
        """The scopes, in call order."""
        return self._scopes

    @property
    def settled(self) -> bool:
        """True once settled or released."""
        return self._settled

    def __bool__(self) -> bool:
        return self._admitted

    def rate_headers(
        self, requests: tuple[int, ...], tokens: tuple[int, ...], lines: tuple[bytes, ...], /
    ) -> bytes | None:
        """The ``x-ratelimit-*`` lines of the tightest requests scope among the indexes
        ``requests`` and of the tightest tokens scope among ``tokens``; None when a
        figure cannot be shown exactly."""
        n = len(self._statuses)
        if any(not 0 <= i < n for i in (*requests, *tokens)):
            raise ValueError("scope index out of range")
        picked = {i: lines[i] for i in (*requests, *tokens)}
        for line in picked.values():
            if not isinstance(line, bytes):
                raise TypeError("a limit line is bytes")
        return _render_rate_headers(self._statuses, requests, tokens, picked)


def _reset_duration(seconds: float) -> bytes | None:
    """OpenAI's reset format (``20ms``, ``1.5s``, ``6m0s``, ``1h2m4s``); None past 1e15 s."""
    if seconds <= 0.0 or math.isnan(seconds) or seconds == math.inf:
        return b"0s"
    if seconds < 1.0:
        return b"%dms" % math.ceil(seconds * 1000.0)
    if seconds < 60.0:
        return f"{seconds:.3f}".rstrip("0").rstrip(".").encode() + b"s"
    if seconds < 1e15:
        m, sec = divmod(math.ceil(seconds), 60)
        if m < 60:
            return b"%dm%ds" % (m, sec)
        return b"%dh%dm%ds" % (m // 60, m % 60, sec)
    return None


def _render_rate_headers(statuses: Sequence[tuple[float, float, float]],
                         requests: Sequence[int], tokens: Sequence[int],
                         lines: dict[int, bytes] | Sequence[bytes]) -> bytes | None:
    """For requests, then tokens: the scope with the least remaining (the first of
    equals), its limit line, remaining (toward zero) and reset lines."""
    if not statuses:
        return b""
    out = b""
    for idx, what in ((requests, b"requests"), (tokens, b"tokens")):
        best: int | None = None
        for i in idx:
            if best is None or statuses[i][1] < statuses[best][1]:
                best = i
        if best is None:
            continue
        _, remaining, reset = statuses[best]
        if not math.isfinite(remaining) or abs(remaining) >= 1e15:
            return None
        out += lines[best] + b"x-ratelimit-remaining-%s: %d\r\n" % (what, int(remaining))
        text = _reset_duration(reset)
        if text is None:
            return None
        out += b"x-ratelimit-reset-%s: %s\r\n" % (what, text)
    return out


_REQUESTS, _TOKENS, _INFLIGHT, _USD = 0, 1, 2, 3


class Admission:
    """A plan's scopes and what each counts (0 requests, 1 tokens, 2 in-flight, 3 USD),
    with per scope the most one request reserves of it and its limit line."""

    __slots__ = ("_caps", "_dims", "_lines", "_requests", "_scopes", "_tokens")

    def __init__(self, scopes: Sequence[Scope], dims: Sequence[int], caps: Sequence[float],
                 lines: Sequence[bytes]) -> None:
        self._scopes = tuple(scopes)
        for sc in self._scopes:
            if not isinstance(sc, Scope):
                raise TypeError("scopes must be Scope objects")
        n = len(self._scopes)
        self._dims = tuple(int(d) for d in dims)
        self._caps = tuple(float(c) for c in caps)
        self._lines = tuple(bytes(line) for line in lines)
        if len(self._dims) != n or len(self._caps) != n or len(self._lines) != n:
            raise ValueError("dims, caps and lines need one entry per scope")
        if any(not 0 <= d <= _USD for d in self._dims):
            raise ValueError("a dimension is 0, 1, 2 or 3")
        self._requests = tuple(i for i in range(n) if self._dims[i] == _REQUESTS)
        self._tokens = tuple(i for i in range(n) if self._dims[i] == _TOKENS)

    def costs(self, tokens: float, usd: float) -> list[float]:
        """1 per request and in-flight slot; the estimates, at most the cap, otherwise."""
        out = []
        for d, cap in zip(self._dims, self._caps, strict=True):
            if d == _TOKENS:
                out.append(_fmin(float(tokens), cap))
            elif d == _USD:
                out.append(_fmin(float(usd), cap))
            else:
                out.append(1.0)
        return out

    def actual(self, requests: float, tokens: float, usd: float) -> list[float]:
        """The settlement per scope (in-flight slots given back)."""
        by_dim = (float(requests), float(tokens), 0.0, float(usd))
        return [by_dim[d] for d in self._dims]


def _fmin(a: float, b: float) -> float:
    """IEEE minNum, as Rust's ``f64::min``: a NaN argument gives the other."""
    if math.isnan(a):
        return b
    if math.isnan(b):
        return a
    return a if a < b else b


def _floats(values: Iterable[float], what: str, n: int) -> list[float]:
    out = [float(v) for v in values]
    if len(out) != n:
        raise ValueError(f"{len(out)} {what} given for {n} scopes")
    for v in out:
        _non_negative(what, v)
    return out


# The most idle buckets a table keeps unswept: an idle bucket answers as a fresh one
# would, so below this size dropping it only costs its re-creation at the key's next
# request (a few keys with limits far above their traffic would otherwise be dropped
# and made again on every request).
SWEEP_FLOOR = 1024


def sweep_floor(max_keys: int) -> int:
    """Buckets a table keeps before it sweeps idle ones: half of ``max_keys``, at
    most :data:`SWEEP_FLOOR`."""
    return min(max_keys // 2, SWEEP_FLOOR)


class LimiterTable:
    """Many named buckets in this process (reference of the native class)."""

    __slots__ = ("_cursor", "_entries", "_evicted_busy", "_id", "_index", "_keys", "_max_keys")

    def __init__(self, *, max_keys: int = 1_000_000) -> None:
        self._id = next(_table_ids)
        self._max_keys = max(1, max_keys)
        # Insertion-ordered buckets with swap-remove, as indexmap does.
        self._keys: list[bytes] = []
        self._entries: list[tuple[Limit, _State]] = []
        self._index: dict[bytes, int] = {}
        self._cursor = 0
        self._evicted_busy = 0

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def evicted_busy(self) -> int:
        """Buckets evicted while busy because ``max_keys`` was reached."""
        return self._evicted_busy

    def peek(self, key: str | bytes) -> tuple[float, float] | None:
        """``(level, stamp)`` of ``key``'s bucket as stored, or None."""
        i = self._index.get(_key_bytes(key))
        if i is None:
            return None
        s = self._entries[i][1]
        return (s.level, s.stamp)

    def recover(self) -> int:
        """Reference of ``SharedLimiterTable.recover`` (a table kept in a file, reopened
        after a restart): every concurrency counter dropped, the other buckets kept.
        Returns how many were dropped."""
        i = n = 0
        while i < len(self._keys):
            if self._entries[i][0].kind == _CONCURRENCY:
                self._swap_remove(i)
                n += 1
            else:
                i += 1
        return n

    def _swap_remove(self, i: int) -> None:
        last = len(self._keys) - 1
        del self._index[self._keys[i]]
        if i != last:
            self._keys[i] = self._keys[last]
            self._entries[i] = self._entries[last]
            self._index[self._keys[i]] = i
        self._keys.pop()
        self._entries.pop()

    def _slot(self, key: bytes, limit: Limit, now: float) -> int:
        i = self._index.get(key)
        if i is not None:
            old, s = self._entries[i]
            if old != limit:
                self._entries[i] = (limit, limit._adopt(old, s, now))
            return i
        self._keys.append(key)
        self._entries.append((limit, limit._fresh(now)))
        self._index[key] = len(self._keys) - 1
        return len(self._keys) - 1

    def _maintain(self, now: float, n: int) -> None:
        sweep = n + 1 if len(self._keys) > sweep_floor(self._max_keys) else 0
        for _ in range(sweep):
            if not self._keys:
                self._cursor = 0
                break
            if self._cursor >= len(self._keys):
                self._cursor = 0
            limit, s = self._entries[self._cursor]
            if limit._is_idle(s, now):
                self._swap_remove(self._cursor)
            else:
                self._cursor += 1
        while self._keys and len(self._keys) + n > self._max_keys:
            if self._cursor >= len(self._keys):
                self._cursor = 0
            limit, s = self._entries[self._cursor]
            if not limit._is_idle(s, now):
                self._evicted_busy += 1
            self._swap_remove(self._cursor)

    def reserve(
        self, scopes: Sequence[Scope], costs: Sequence[float], now: float | None = None
    ) -> Reservation:
        """Admits against every scope atomically, all or none."""
        scopes = tuple(scopes)
        for s in scopes:
            if not isinstance(s, Scope):
                raise TypeError("scopes must hold Scope objects")
        costs_l = [float(c) for c in costs]
        t = _check_now(now)
        if len(costs_l) != len(scopes):
            raise ValueError(f"{len(costs_l)} costs given for {len(scopes)} scopes")
        _floats(costs_l, "costs", len(scopes))
        self._maintain(t, len(scopes))
        slots: list[int] = []
        work: list[_State] = []
        statuses: list[tuple[float, float, float]] = []
        admitted = True
        retry_after = 0.0
        denied: int | None = None
        for i, sc in enumerate(scopes):
            limit = sc._limit
            slot = self._slot(sc._bkey, limit, t)
            prev = [p for p, j in enumerate(slots) if j == slot]
            base = work[prev[-1]] if prev else limit._refresh(self._entries[slot][1], t)
            slots.append(slot)
            taken = limit._take(base, costs_l[i], t)
            if isinstance(taken, _State):
                statuses.append(limit._status(taken, t))
                work.append(taken)
            else:
                statuses.append(limit._status(base, t))
                work.append(base)
                if admitted or taken > retry_after:
                    retry_after = taken
                    denied = i
                admitted = False
        if admitted:
            for i, slot in enumerate(slots):
                self._entries[slot] = (self._entries[slot][0], work[i])
        return Reservation(
            self._id,
            scopes,
            tuple(costs_l),
            admitted,
            retry_after,
            denied,
            statuses,
            [w.stamp for w in work],
        )

    def settle(
        self, reservation: Reservation, actual_costs: Sequence[float], now: float | None = None
    ) -> bool:
        """Corrects an admitted reservation; True when applied."""
        if reservation._table_id != self._id:
            raise ValueError("reservation belongs to another table")
        actual = [float(c) for c in actual_costs]
        t = _check_now(now)
        if not reservation._admitted or reservation._settled:
            return False
        _floats(actual, "actual costs", len(reservation._scopes))
        reservation._settled = True
        for i, sc in enumerate(reservation._scopes):
            limit = sc._limit
            reserved = reservation._costs[i]
            slot = self._index.get(sc._bkey)
            if limit._kind == _CONCURRENCY:
                if slot is not None:
                    lim, s = self._entries[slot]
                    self._entries[slot] = (lim, _State(max(s.level - reserved, 0.0), s.stamp))
                continue
            delta = actual[i] - reserved
            if slot is None:
                if not delta > 0.0:
                    continue
                slot = self._slot(sc._bkey, limit, t)
            lim, s = self._entries[slot]
            s = limit._refresh(s, t)
            if limit._kind == _RATE:
                self._entries[slot] = (lim, _State(min(limit._a, s.level - delta), s.stamp))
            elif s.stamp == reservation._windows[i]:
                self._entries[slot] = (lim, _State(max(s.level + delta, 0.0), s.stamp))
        return True

    def admit(self, admission: Admission, tokens: float, usd: float,
              now: float | None = None) -> tuple[Reservation, bytes | None]:
        """``reserve`` of the admission's scopes at its costs for ``tokens`` and ``usd``,
        and the reservation's ``x-ratelimit-*`` lines (None: not exactly renderable)."""
        res = self.reserve(admission._scopes, admission.costs(tokens, usd), now)
        head = _render_rate_headers(res._statuses, admission._requests, admission._tokens,
                                    admission._lines)
        return res, head

    def settle_admitted(self, reservation: Reservation, admission: Admission,
                        requests: float, tokens: float, usd: float,
                        now: float | None = None) -> bool:
        """``settle`` with the admission's settlement for what the request used."""
        return self.settle(reservation, admission.actual(requests, tokens, usd), now)

    def release(self, reservation: Reservation, now: float | None = None) -> bool:
        """Gives back everything reserved."""
        return self.settle(reservation, [0.0] * len(reservation._scopes), now)

    def evict_idle(self, now: float | None = None) -> int:
        """Drops every idle bucket; returns how many."""
        t = _check_now(now) if now is not None else time.time()
        before = len(self._keys)
        i = 0
        while i < len(self._keys):
            limit, s = self._entries[i]
            if limit._is_idle(s, t):
                self._swap_remove(i)
            else:
                i += 1
        return before - len(self._keys)
