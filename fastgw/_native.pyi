"""Type stubs for ``fastgw._native``, the Rust extension (``rust/``).

The hot paths, each with a pure-Python reference of the same API in
``fastgw._reference``: limiter tables (rate, concurrency and budget buckets
reserved together atomically), a weighted consistent-hash ring, a JWT
verifier, an incremental SSE scanner for the relay loop, and whole HTTP/1.1
messages parsed in one call (llhttp, through httptools, reads everything else),
the access-log line, the response cache's key, and the guardrails' regex
(``RegexGuard``, linear time, and ``RedactWindow``, a stream's redaction). One more, the stream
translator of OpenAI chat clients on Anthropic deployments
(``ChatFromMessagesStream``), has its reference where it is used,
``fastgw.providers.openai_anthropic``.
"""

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, Final, Literal, Protocol, Self, final, overload

__all__ = [
    "Admission",
    "BadAudienceError",
    "BadIssuerError",
    "BadSignatureError",
    "BatchWriter",
    "ChatFromMessagesStream",
    "ChunkedDecoder",
    "ExpiredTokenError",
    "HashRing",
    "JwtError",
    "JwtKeyError",
    "JwtKeySet",
    "JwtVerifier",
    "KeyIndex",
    "Limit",
    "LimiterTable",
    "LogBuffer",
    "LogWriter",
    "MalformedTokenError",
    "MemoryCache",
    "MissingClaimError",
    "NotYetValidError",
    "OtlpEncoder",
    "RedactWindow",
    "RegexGuard",
    "Reservation",
    "Scope",
    "SharedLimiterTable",
    "SseScanner",
    "UnknownKeyError",
    "UnsupportedAlgorithmError",
    "__version__",
    "access_line",
    "build_profile",
    "cache_key",
    "forwarded",
    "hash64",
    "parse_request",
    "parse_response",
    "usage",
]

__version__: Final[str]
build_profile: Final[Literal["debug", "release"]]

def hash64(data: str | bytes, /) -> int:
    """XXH3-64 (seed 0) of ``data`` (a ``str`` is hashed as its UTF-8): the ring's hash."""

# ---------------------------------------------------------------- limiter

@final
class Limit:
    """What a scope allows. Build with ``rate``, ``concurrency`` or ``budget``."""

    @staticmethod
    def rate(amount: float, period_s: float = 60.0, *, burst: float | None = None) -> Limit:
        """``amount`` per ``period_s`` s, refilled continuously; holds ``burst`` (default
        ``amount``). ``rpm`` is ``rate(rpm)``, ``tpm`` is ``rate(tpm)``."""
    @staticmethod
    def concurrency(max_inflight: float) -> Limit:
        """A counter capped at ``max_inflight``: reserve adds, settle/release gives back."""
    @staticmethod
    def budget(
        amount: float, period: Literal["minute", "hour", "day", "week", "month"] | float
    ) -> Limit:
        """``amount`` (e.g. USD) per fixed window, UTC-aligned; reset at each window start."""
    @property
    def kind(self) -> Literal["rate", "concurrency", "budget"]: ...
    @property
    def value(self) -> float:
        """The limit reported in headers (capacity, cap or amount)."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Scope:
    """A bucket name (``str`` or ``bytes``; equal UTF-8 is one bucket) and its limit."""

    def __new__(cls, key: str | bytes, limit: Limit) -> Self: ...
    @property
    def key(self) -> str | bytes: ...
    @property
    def limit(self) -> Limit: ...

@final
class Reservation:
    """The result of ``reserve``; truthy when admitted. Settle or release it once."""

    @property
    def admitted(self) -> bool: ...
    @property
    def retry_after(self) -> float:
        """Seconds before a retry could pass (0.0 if admitted, ``inf`` if a cost exceeds its
        limit). ``Retry-After`` is ``math.ceil`` of it."""
    @property
    def denied_index(self) -> int | None:
        """The refusing scope with the longest wait."""
    @property
    def limits(self) -> tuple[float, ...]: ...
    @property
    def remaining(self) -> tuple[float, ...]:
        """Per scope, left after this request (before it when refused), never below 0.
        ``x-ratelimit-remaining-*`` is ``int()`` of it: rpm 3 gives 2, 1, 0."""
    @property
    def reset_after(self) -> tuple[float, ...]:
        """Per scope, seconds until back to the full limit."""
    @property
    def costs(self) -> tuple[float, ...]: ...
    @property
    def scopes(self) -> tuple[Scope, ...]: ...
    @property
    def settled(self) -> bool: ...
    def __bool__(self) -> bool: ...
    def rate_headers(
        self, requests: tuple[int, ...], tokens: tuple[int, ...], lines: tuple[bytes, ...], /
    ) -> bytes | None:
        """The ``x-ratelimit-*`` lines of the tightest requests scope among the indexes
        ``requests`` and of the tightest tokens scope among ``tokens`` (least remaining,
        the first of equals): ``lines[i]``, then remaining (``int()``) and reset
        (``20ms``, ``1.5s``, ``6m0s``). None when a figure cannot be shown exactly
        (the caller renders it: ``Plan.render`` is the reference)."""

@final
class Admission:
    """A plan's scopes and what each counts, for :meth:`LimiterTable.admit` and
    :meth:`LimiterTable.settle_admitted`: costs, reservation, rate-limit header lines
    and settlement in one call each."""

    def __new__(cls, scopes: Sequence[Scope], dims: Sequence[int], caps: Sequence[float],
                lines: Sequence[bytes]) -> Self:
        """Per scope: its dimension (0 requests, 1 tokens, 2 in-flight, 3 USD), the most
        one request reserves of it, and its ``x-ratelimit-limit-*`` line."""
    def costs(self, tokens: float, usd: float) -> list[float]:
        """1 per request and in-flight slot; the estimates, at most the cap, otherwise."""
    def actual(self, requests: float, tokens: float, usd: float) -> list[float]:
        """The settlement per scope (in-flight slots given back)."""

@final
class LimiterTable:
    """Many named buckets in this process; idle ones are dropped as it is used, and at most
    ``max_keys`` are kept (busy ones evicted only past that)."""

    def __new__(cls, *, max_keys: int = 1_000_000) -> Self: ...
    def reserve(
        self, scopes: Sequence[Scope], costs: Sequence[float], now: float | None = None
    ) -> Reservation:
        """Take ``costs[i]`` from ``scopes[i]`` for every i, or nothing at all. ``now`` is
        seconds since the epoch (default: the clock)."""
    def settle(
        self, reservation: Reservation, actual_costs: Sequence[float], now: float | None = None
    ) -> bool:
        """Correct a reservation with the real costs (refund or extra debit; concurrency
        gives back what it reserved). False if refused or already settled."""
    def admit(self, admission: Admission, tokens: float, usd: float, now: float | None = None
              ) -> tuple[Reservation, bytes | None]:
        """``reserve`` of the admission's scopes at its costs for ``tokens`` and ``usd``, and
        the reservation's ``x-ratelimit-*`` lines (None: not exactly renderable here)."""
    def admit_estimated(self, admission: Admission, body_len: int, doc: dict[str, Any],
                        embeddings: bool, input_per_token: float, output_per_token: float,
                        now: float | None = None
                        ) -> tuple[Reservation, bytes | None, float, float] | None:
        """``admit`` at the request's own estimates: ``(reservation, headers, tokens,
        usd)``, computed from the body's length and parsed document as
        ``fastgw.limits.rules.estimate`` does; None (nothing reserved) when they
        cannot be computed exactly natively (estimate in Python, then ``admit``)."""
    def admit_peeked(self, admission: Admission, body_len: int, completion: int,
                     embeddings: bool, input_per_token: float, output_per_token: float,
                     now: float | None = None
                     ) -> tuple[Reservation, bytes | None, float, float] | None:
        """:meth:`admit_estimated` of a body :func:`peek_request` read: its length and
        the completion tokens the peek found stand for the document."""
    def settle_admitted(self, reservation: Reservation, admission: Admission, requests: float,
                        tokens: float, usd: float, now: float | None = None) -> bool:
        """``settle`` with the admission's settlement for what the request used."""
    def release(self, reservation: Reservation, now: float | None = None) -> bool:
        """Give back everything reserved (error or cancel)."""
    def evict_idle(self, now: float | None = None) -> int: ...
    def peek(self, key: str | bytes) -> tuple[float, float] | None:
        """``(level, stamp)`` as stored."""
    @property
    def evicted_busy(self) -> int: ...
    def __len__(self) -> int: ...

@final
class SharedLimiterTable:
    """A ``LimiterTable`` in shared memory: anonymous (shared with children forked later)
    or a file every process opens by path (e.g. under ``/dev/shm``). At most 16 scopes per
    call; a full set of slots evicts idle, then least recently used, buckets."""

    def __new__(cls, path: str | PathLike[str] | None = None, *, slots: int = 65_536) -> Self: ...
    def reserve(
        self, scopes: Sequence[Scope], costs: Sequence[float], now: float | None = None
    ) -> Reservation: ...
    def settle(
        self, reservation: Reservation, actual_costs: Sequence[float], now: float | None = None
    ) -> bool: ...
    def admit(self, admission: Admission, tokens: float, usd: float, now: float | None = None
              ) -> tuple[Reservation, bytes | None]: ...
    def admit_estimated(self, admission: Admission, body_len: int, doc: dict[str, Any],
                        embeddings: bool, input_per_token: float, output_per_token: float,
                        now: float | None = None
                        ) -> tuple[Reservation, bytes | None, float, float] | None: ...
    def admit_peeked(self, admission: Admission, body_len: int, completion: int,
                     embeddings: bool, input_per_token: float, output_per_token: float,
                     now: float | None = None
                     ) -> tuple[Reservation, bytes | None, float, float] | None:
        """As :meth:`LimiterTable.admit_peeked`."""
    def settle_admitted(self, reservation: Reservation, admission: Admission, requests: float,
                        tokens: float, usd: float, now: float | None = None) -> bool: ...
    def release(self, reservation: Reservation, now: float | None = None) -> bool: ...
    def evict_idle(self, now: float | None = None) -> int: ...
    def recover(self) -> int:
        """After a restart, while no other process maps the file: a new lock, every
        in-flight counter freed (rate and budget buckets kept); the counters freed."""
    def flush(self) -> None:
        """Write the changed pages to the file and wait for the disk."""
    @property
    def capacity(self) -> int: ...
    @property
    def path(self) -> Path | None: ...
    def __len__(self) -> int: ...

# ---------------------------------------------------------------- hash ring

@final
class HashRing:
    """An immutable weighted consistent-hash ring (ketama-style points, XXH3-64)."""

    def __new__(
        cls, targets: Mapping[str, float] | Iterable[tuple[str, float]], *, replicas: int = 160
    ) -> Self: ...
    def lookup(
        self, key: str | bytes, loads: Sequence[float] | None = None, c: float = 1.25
    ) -> str:
        """The target for ``key``; with ``loads`` (in-flight per target, ``targets`` order)
        skip targets whose load would exceed ``c`` times their weighted share, rounded up.
        LookupError if no target."""
    def lookup_index(
        self, key: str | bytes, loads: Sequence[float] | None = None, c: float = 1.25
    ) -> int: ...
    def candidates(
        self,
        key: str | bytes,
        n: int | None = None,
        loads: Sequence[float] | None = None,
        c: float = 1.25,
    ) -> list[str]:
        """Up to ``n`` distinct targets in fallback order (eligible ones first)."""
    def order(self, key: str | bytes, states: Sequence[Any], c: float = 1.25) -> list[int]:
        """Every target's index in fallback order for ``key`` (:meth:`candidates`
        without loads), with ``lookup_index(key, loads, c)`` moved to the front when
        any of ``loads`` is not zero, ``loads`` being the ``inflight`` numbers of
        ``states`` (one object per target, in :attr:`targets` order)."""
    def with_target(self, name: str, weight: float) -> HashRing: ...
    def without_target(self, name: str) -> HashRing: ...
    @property
    def targets(self) -> tuple[str, ...]: ...
    @property
    def weights(self) -> tuple[float, ...]: ...
    @property
    def replicas(self) -> int: ...
    @property
    def points(self) -> int: ...
    def __len__(self) -> int: ...

# ---------------------------------------------------------------- JWT

class JwtError(ValueError):
    """A token was refused; ``reason`` is a stable code for the 401 message."""

    reason: ClassVar[str]

class MalformedTokenError(JwtError):
    """reason ``malformed``."""

class UnsupportedAlgorithmError(JwtError):
    """reason ``unsupported_alg``: unknown, ``none``, not allowed, or not the key's."""

class UnknownKeyError(JwtError):
    """reason ``unknown_kid``."""

class BadSignatureError(JwtError):
    """reason ``bad_signature``."""

class ExpiredTokenError(JwtError):
    """reason ``expired``."""

class NotYetValidError(JwtError):
    """reason ``not_yet_valid`` (``nbf`` or ``iat`` in the future)."""

class BadIssuerError(JwtError):
    """reason ``bad_issuer``."""

class BadAudienceError(JwtError):
    """reason ``bad_audience``."""

class MissingClaimError(JwtError):
    """reason ``missing_claim``."""

class JwtKeyError(ValueError):
    """Key material or verifier settings cannot be used."""

@final
class JwtKeySet:
    """An immutable set of verification keys."""

    @staticmethod
    def from_jwks(jwks: str | bytes) -> JwtKeySet:
        """A JWKS document or one JWK; keys not for signatures or of unsupported types
        are skipped."""
    @staticmethod
    def from_pem(
        pem: str | bytes, *, kid: str | None = None, algorithm: str | None = None
    ) -> JwtKeySet:
        """``PUBLIC KEY`` (RSA >= 2048 bits, P-256, P-384, Ed25519) or ``RSA PUBLIC KEY``."""
    @staticmethod
    def from_secret(
        secret: str | bytes, *, kid: str | None = None, algorithm: str | None = None
    ) -> JwtKeySet: ...
    def union(self, other: JwtKeySet) -> JwtKeySet: ...
    @property
    def kids(self) -> list[str | None]: ...
    def __len__(self) -> int: ...

@final
class JwtVerifier:
    """Checks signature, ``exp``/``nbf``/``iat`` (with ``leeway``), ``iss``, ``aud`` and
    required claims (default ``("exp",)``); caches verified tokens until they expire."""

    def __new__(
        cls,
        keys: JwtKeySet,
        *,
        algorithms: str | Sequence[str],
        issuer: str | Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None,
        leeway: float = 0.0,
        require: str | Sequence[str] | None = None,
        cache_size: int = 4096,
    ) -> Self: ...
    def verify(self, token: str | bytes, now: float | None = None) -> dict[str, Any]:
        """The claims (a new dict; nested values are shared: read-only). Raises a
        ``JwtError`` subclass."""
    def clear_cache(self) -> None: ...
    @property
    def cache_len(self) -> int: ...
    @property
    def algorithms(self) -> list[str]: ...

# ---------------------------------------------------------------- SSE

@final
class SseScanner:
    """Scans one upstream SSE stream chunk by chunk for the relay loop."""

    DONE: ClassVar[int]
    ERROR: ClassVar[int]
    COMMIT: ClassVar[int]
    USAGE: ClassVar[int]
    DROPPED: ClassVar[int]

    def __new__(cls, *, drop_usage: bool = False, max_event_size: int = ...) -> Self: ...
    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """``(bytes_to_forward, flags)``: ``chunk`` itself unless bytes were held back or a
        usage-only chunk dropped. ValueError past ``max_event_size``."""
    def finish(self) -> bytes:
        """Bytes still held back at the end (an event that never ended)."""
    @property
    def committed(self) -> bool: ...
    @property
    def done(self) -> bool: ...
    @property
    def error(self) -> bool: ...
    @property
    def events(self) -> int: ...
    @property
    def boundaries(self) -> list[int]: ...
    @property
    def usage(self) -> dict[str, int] | None: ...

# ---------------------------------------------------------------- guardrails

@final
class RegexGuard:
    """A guardrail pattern compiled once (the ``regex`` crate: linear time in the
    text, whatever the pattern) with its replacement. Empty matches are skipped.
    ValueError when the pattern does not compile (the message says why)."""

    def __new__(cls, pattern: str, replacement: str = "[REDACTED]") -> Self: ...
    @property
    def pattern(self) -> str: ...
    @property
    def replacement(self) -> str: ...
    def matches(self, text: str) -> bool:
        """Whether ``text`` has a (non-empty) match."""
    def redact(self, text: str) -> tuple[str, int]:
        """``(text with every match replaced, number of matches)``; ``text`` itself when
        there is none."""
    def window(self, chars: int) -> RedactWindow:
        """A stream's redaction that holds back at most ``chars`` characters."""

@final
class RedactWindow:
    """One stream's text redacted as it arrives: everything goes out except what may
    still begin a match (an anchored DFA says so), and never more than the window
    is held. Joined, what it gives out is ``RegexGuard.redact`` of the whole text
    when no match is longer than the window."""

    def push(self, piece: str) -> str:
        """Append ``piece``; the redacted text that can go out now (maybe empty)."""
    def finish(self) -> str:
        """The end of the stream: the rest, redacted."""
    def feed_events(self, data: bytes, anchor: bytes, markers: Sequence[bytes],
                    stop_on_match: bool = False) -> tuple[bytes, int]:
        """Read the text delta events at the start of ``data`` (SSE, blank lines
        ``\\n\\n``, no ``\\r``) whose text's JSON string follows ``anchor`` and which
        contain every one of ``markers``, through the window: ``(what goes out, bytes
        read)``; an event whose text went out as it came goes out as it came, one
        without text is left out. Stops at an event of another kind, or
        (``stop_on_match``) after one with a match (left out)."""
    def set_template(self, event: bytes, start: int, end: int) -> None:
        """Remember ``event`` (its text's JSON string at ``event[start:end]``) as the
        form ``render`` writes (``feed_events`` remembers the last event it read)."""
    def render(self, text: str) -> bytes:
        """The remembered event with ``text`` for its text, without its blank line
        (b"": ``text`` empty, or no event)."""
    @property
    def matches(self) -> int: ...
    @property
    def held(self) -> int:
        """Bytes (UTF-8) held back now."""

# ---------------------------------------------------------------- stream translation

@final
class ChatFromMessagesStream:
    """Anthropic Messages SSE in, OpenAI chat-completion chunks out, for an OpenAI chat
    client on an Anthropic deployment. The same bytes, flags (``SseScanner``'s
    ``COMMIT``, ``DONE``, ``ERROR``, ``USAGE``) and state as its pure-Python reference,
    ``fastgw.providers.openai_anthropic.ChatFromMessagesStream``, for any input cut
    anywhere; the rules are written out in ``rust/src/translate.rs``."""

    def __new__(cls, *, include_usage: bool, created: int,
                max_event_size: int = ...) -> Self: ...
    def feed(self, chunk: bytes) -> tuple[bytes, int]:
        """``(bytes for the client, flags)`` for the next piece of the upstream body.
        ValueError when one event is larger than ``max_event_size``."""
    def finish(self) -> bytes:
        """At a clean end of the upstream body: what the client is still owed (an event
        left without its blank line, then the finish chunk, usage chunk and ``[DONE]``
        unless the upstream's end or an error came)."""
    @property
    def committed(self) -> bool: ...
    @property
    def done(self) -> bool: ...
    @property
    def error(self) -> bool: ...
    @property
    def usage(self) -> dict[str, int] | None:
        """``prompt_tokens``, ``completion_tokens``, ``total_tokens`` and, when
        reported, ``cached_tokens``, ``cache_creation_tokens``, ``reasoning_tokens``;
        None before any usage."""

# ---------------------------------------------------------------- HTTP

HeaderPairs = Sequence[tuple[bytes, bytes]]

@final
class Headers(Sequence[tuple[bytes, bytes]]):
    """The header list of a message :func:`parse_request` or :func:`parse_response`
    read, kept as positions in its bytes: a sequence of ``(name, value)`` pairs
    with lowercase names, each made when asked (the answer's native header pass
    reads the bytes directly). Equal to a list of the same pairs."""

    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, i: int, /) -> tuple[bytes, bytes]: ...
    @overload
    def __getitem__(self, i: slice, /) -> list[tuple[bytes, bytes]]: ...
    def __iter__(self) -> Iterator[tuple[bytes, bytes]]: ...
    def __eq__(self, other: object) -> bool:
        """The same pairs as ``other``, a sequence of pairs (a list above all)."""
    def __ne__(self, other: object) -> bool: ...
    __hash__: ClassVar[None]  # type: ignore[assignment]

def parse_request(
    data: bytes, max_head: int, max_body: int, /
) -> tuple[bytes, bytes, bytes, Headers, bytes, bool, int, bytes, bytes | None, bool,
           bytes | None] | None:
    """``data`` as exactly one whole HTTP/1.1 request with nothing unusual in it:
    ``(method, path, query, headers, body, keep_alive, content_length,
    forwarded_block, request_id, controls, credential)``, names lowercase,
    ``content_length`` -1 when absent, the last four :func:`forwarded`'s answer. None otherwise
    (incomplete, pipelined, HTTP/1.0, chunked, ``expect``, upgrade, duplicate
    framing headers, over the limits...): leave it to llhttp."""

def peek_request(body: bytes, /) -> tuple[str, bool, bool, int, bool | None] | None:
    """What the request phase reads of a JSON body, without building its dict:
    ``(model, stream, controls, completion, usage_asked)`` when ``body`` is a
    document ``orjson.loads`` reads as a dict whose ``model`` is a str and whose
    ``stream``, when present, is a bool (a repeated key counts with its last value).
    ``controls``: a top-level ``fastgw`` member; ``completion``: the completion
    tokens ``fastgw.limits.rules.estimate`` reserves for it (the first true of
    ``max_completion_tokens``, ``max_tokens``, ``max_output_tokens`` when a positive
    int, else 256); ``usage_asked``: True when ``stream_options.include_usage`` is
    true, False when there is no ``stream_options`` member, None otherwise. None
    for anything else: parse the body with orjson."""

def parse_response(data: bytes, /) -> tuple[int, Headers, bool, int, bytes | None] | None:
    """The head of an HTTP/1.1 response at the start of ``data``: ``(status, headers,
    keep_alive, head_len, body)``, names lowercase. ``body`` is the whole body of a
    ``content-length`` answer (``data`` must hold exactly head and body), None for a
    chunked one (read ``data[head_len:]`` and what follows with a
    :class:`ChunkedDecoder`). None for anything else (leave it to llhttp)."""

@final
class ChunkedDecoder:
    """Reads a chunked response body read by read, as llhttp does."""

    def __new__(cls) -> Self: ...
    def feed(self, data: bytes, start: int = 0, *, join: bool = False) -> list[bytes]:
        """The chunk data in ``data[start:]``: one piece per chunk (a chunk cut by the
        end of the read gives what was read of it), or with ``join`` at most one
        piece. ValueError when the body is malformed or bytes follow its end."""
    def feed_each(self, data: bytes, start: int, each: Callable[[bytes], object], /
                  ) -> bytes | None:
        """As :meth:`feed`, for a consumer taking chunks one by one for a while:
        ``each(piece)`` is called with each chunk's data in order while it returns
        true; the data of the chunks after the one it returned false for comes back
        joined (None when there is none). What ``each`` raises is raised."""
    @property
    def done(self) -> bool:
        """The last chunk and the trailer have been read."""

def forwarded(headers: HeaderPairs, /) -> tuple[bytes, bytes | None, bool, bytes | None]:
    """The request header pass over ``(name, value)`` pairs (names read in any case,
    sent lowercase): ``(block to send upstream, the client's x-request-id if usable,
    whether an x-fastgw-* control header is present, the caller's credential)``. The
    credential: the first ``authorization``'s token when it is ``Bearer <token>`` (any
    case, stripped, not empty), else the first ``x-api-key`` stripped, when not empty;
    else None."""

def usage(body: bytes, /) -> tuple[int, int] | None:
    """``(prompt_tokens, completion_tokens)`` after the last ``"usage"`` key of a whole
    JSON answer (0 for an absent count); None without the key or either count."""

def splice_model(body: bytes, old: bytes, new: bytes, /) -> bytes | None:
    """``body`` with ``"model":<old>`` (or ``"model": <old>``; both JSON string
    literals) replaced by the same with ``new``, when that occurs and ``"model"``
    occurs nowhere else in ``body``; None otherwise (re-encode)."""

def render_request(prefix: bytes, request_id: bytes, fwd: bytes, body: bytes, old: bytes,
                   new: bytes, /) -> bytes | None:
    """A whole upstream request in one piece: ``prefix`` (request line and the
    target's constant headers), ``content-length``, ``x-request-id``, the forwarded
    header block, the blank line and ``body`` with its model literal ``old``
    replaced by ``new`` as :func:`splice_model` does (unchanged when they are
    equal); None when it cannot be spliced so (render it the general way)."""

def response_block(ctype: bytes, request_id: bytes, target_headers: bytes, attempts: int,
                   overhead_s: float, extra: bytes, up_headers: HeaderPairs,
                   secrets: tuple[bytes, ...], /) -> bytes:
    """The header block of an answer to the client: ``content-type``,
    ``x-request-id``, the target's constant lines, ``x-fastgw-attempts``,
    ``x-fastgw-overhead-ms`` (``"%.3f"`` of the milliseconds), ``extra``, then the
    allow-listed upstream headers (lowercase pairs) with every secret, in turn,
    replaced by ``[redacted]``."""

def answer(status_line: bytes, conn: bytes, ctype: bytes, request_id: bytes,
           target_headers: bytes, attempts: int, overhead_s: float, extra: bytes,
           up_headers: HeaderPairs, secrets: tuple[bytes, ...], body: bytes,
           head_only: bool, /) -> bytes:
    """A whole answer to the client in one piece: ``status_line``, the date line of
    now (:func:`date_line`), :func:`response_block` of the arguments, ``conn`` (the
    connection line, or nothing), ``content-length`` of ``body``, the blank line and
    ``body`` (left out with ``head_only``: an answer to HEAD)."""

def date_line(secs: int | None = None, /) -> bytes:
    """``date: <HTTP date>\\r\\n`` (IMF-fixdate, as ``email.utils.formatdate(secs,
    usegmt=True)``) of ``secs`` (Unix time, 0 to the end of year 9999), else of now,
    rendered at most once a second."""

# ---------------------------------------------------------------- metrics

@final
class Tally:
    """One kind of finished request's numbers between two metric flushes: requests,
    tokens, cost, and the buckets of five histograms (duration, ttfb, ttft, tpot,
    overhead), each observation counted in the first bucket whose upper bound
    holds it. Reference: ``fastgw/_reference/tally.py``."""

    def __init__(self, bounds: Sequence[Sequence[float]]) -> None:
        """Five ascending lists of bucket upper bounds (the last +inf); ValueError
        otherwise."""
    def record(self, duration: float, ttfb: float, overhead: float, prompt: float,
               completion: float, cost: float, ttft: float = -1.0, tpot: float = -1.0,
               /) -> None:
        """One finished request: ``ttfb`` < 0 without an upstream answer, ``ttft`` < 0
        unless a stream (``tpot`` then ignored), ``tpot`` < 0 when unknown,
        ``overhead`` 0 when unknown."""
    def take(self) -> tuple[float, float, float, float,
                            tuple[tuple[list[int], float] | None, ...]]:
        """``(requests, tokens_in, tokens_out, cost, hists)`` since the last take,
        ``hists`` the ``(counts, sum)`` of each histogram (None when it saw
        nothing); everything zeroed."""

# ---------------------------------------------------------------- API keys

@final
class KeyIndex:
    """Configured keys' SHA-256 digests (32 bytes each) -> their objects; a presented
    key is found by its SHA-256 (one native call: hash, lookup, constant-time check);
    a key found once is remembered as presented and found again by a keyed hash and
    a constant-time comparison."""

    def __init__(self, entries: Iterable[tuple[bytes, Any]]) -> None: ...
    def lookup(self, presented: bytes) -> Any:
        """The object of the key whose SHA-256 is ``presented``'s, or None."""
    def remembered(self) -> int:
        """Keys found once and remembered (at most one per configured digest)."""
    def __len__(self) -> int:
        """Distinct digests (a repeated one keeps its last object)."""

# ---------------------------------------------------------------- access log

@final
class LogWriter:
    """A thread writing batches of access-log lines to ``fd`` (which stays the
    caller's to close) without the interpreter's lock: each batch whole, in order,
    its lines counted as written once written (or dropped by a failed write)."""

    def __init__(self, fd: int) -> None: ...
    def submit(self, data: bytes | bytearray, lines: int) -> bool:
        """Queue a copy of ``data`` (``lines`` lines); False once closed."""
    @property
    def written(self) -> int: ...
    @property
    def pending(self) -> int:
        """Lines submitted and not yet written."""
    def close(self, timeout_s: float = 5.0) -> bool:
        """Write what is queued, then stop the thread, waiting up to ``timeout_s``:
        True when it stopped; False when it is still blocked in a write (a pipe
        nobody reads), its descriptor still in use (do not close it). Idempotent."""


class BatchWriter(Protocol):
    """What a :class:`LogBuffer` hands its batches to: a :class:`LogWriter` (each
    batch handed over without a copy), or any object with its ``submit`` and
    ``pending``."""

    def submit(self, data: bytes | bytearray, lines: int, /) -> bool: ...
    @property
    def pending(self) -> int: ...


@final
class LogBuffer:
    """The access-log lines held between two flushes, for ``writer``, rendered
    straight into one buffer (reference: ``fastgw._reference.accesslog``). A line
    is dropped and counted instead when ``max_pending`` lines are pending (held,
    or handed to the writer and unwritten as of the last flush)."""

    def __init__(self, writer: BatchWriter, max_pending: int) -> None: ...
    def access(
        self, time: float, request_id: bytes, key: str | None, client_ip: str, path: bytes,
        model: str | None, served_model: str | None, route: str | None,
        variant: str | None, provider: str | None, status: int, stream: bool,
        attempts: int, latency_s: float, ttfb_s: float, overhead_s: float,
        usage: tuple[int, int, float] | None, error: str | None, cache: str | None = None, /,
    ) -> bool:
        """Hold :func:`access_line`'s line of the arguments (or drop it): True when it
        is the first line held since the last flush (the caller schedules one)."""
    def line(self, line: bytes) -> bool:
        """Hold a rendered line (a JSON object and a newline), as :meth:`access`."""
    def flush(self) -> bool:
        """The held lines to the writer in one batch, followed, when lines were
        dropped since the last batch, by ``{"event":"access_log_dropped","lines":N}``;
        True while lines are pending (unwritten by the writer)."""
    @property
    def lines(self) -> int:
        """Lines held, not yet flushed."""
    @property
    def dropped(self) -> int:
        """Lines dropped since the last batch."""


def access_line(
    time: float, request_id: bytes, key: str | None, client_ip: str, path: bytes,
    model: str | None, served_model: str | None, route: str | None, variant: str | None,
    provider: str | None, status: int, stream: bool, attempts: int, latency_s: float,
    ttfb_s: float, overhead_s: float, usage: tuple[int, int, float] | None, error: str | None,
    cache: str | None = None, /,
) -> bytes:
    """One JSON access-log line, newline included: ``time``, ``request_id``, ``key``,
    ``client_ip``, ``method``, ``path``, ``model``, ``served_model``, ``route``,
    ``variant``, ``provider``, ``status``, ``stream``, ``attempts``, ``latency_ms``,
    ``ttfb_ms`` (null when ``ttfb_s`` < 0), ``overhead_ms``, ``tokens_in``,
    ``tokens_out``, ``cost_usd`` (rounded to 8 decimals; the three null without
    ``usage``), ``cache`` (null) and ``error`` when given. Durations in seconds,
    written in milliseconds cut to the microsecond."""

# ---------------------------------------------------------------- response cache

@final
class MemoryCache:
    """Cache entries by key in an LRU bounded by entry count and by bytes, with a
    TTL per entry (reference: ``fastgw._reference.memcache``). An entry is any
    object with ``created`` (unix seconds) and ``body`` (bytes); it costs its
    body's and its key's lengths plus ``overhead`` bytes. :meth:`store` keeps an
    answer's parts and makes its entry with ``factory(created, body, prompt_tokens,
    completion_tokens)`` when it is first read."""

    def __init__(self, max_entries: int, max_bytes: int, overhead: int = 0,
                 factory: Callable[[float, bytes, Any, Any], Any] | None = None) -> None: ...
    def get(self, key: bytes, now: float, max_age: float | None = None) -> Any | None:
        """The entry under ``key`` unless it has expired (then dropped), or is
        ``max_age`` seconds old or older (kept); a hit becomes the most recently used."""
    def lookup(self, body: bytes, scope: str, endpoint: str, model: str,
               now: float | None = None, max_age: float | None = None,
               deterministic: bool = False) -> tuple[bytes | None, Any | None]:
        """``(key, entry or None)`` in one call: ``cache_key`` of ``body`` and the UTF-8
        of ``scope``, ``endpoint`` and ``model``, then ``get`` (``now`` None: the clock,
        unix seconds). With ``deterministic``, ``(None, None)`` when the body's top-level
        ``temperature`` is not a number equal to zero. ``ValueError`` when ``body`` is
        not a JSON object."""
    def put(self, key: bytes, entry: Any, ttl_s: float, now: float) -> bool:
        """Store ``entry`` for ``ttl_s`` seconds from ``now``, replacing what ``key``
        held, evicting the least recently used past the bounds (an expired entry's
        room first); False (nothing stored, the old entry gone too) when ``ttl_s``
        is not positive or the entry alone is over ``max_bytes``."""
    def store(self, key: bytes, body: bytes, prompt_tokens: Any, completion_tokens: Any,
              ttl_s: float, now: float | None = None) -> bool:
        """``put`` of the entry ``factory(now, body, prompt_tokens, completion_tokens)``
        (``now`` None: the clock), made when first read; False (nothing stored, what
        ``key`` held kept) when ``body`` does not begin with ``{`` and end with ``}``
        (ASCII whitespace aside); ``TypeError`` without a factory."""
    def delete(self, key: bytes) -> bool: ...
    def clear(self) -> None: ...
    def keys(self) -> list[bytes]:
        """The keys from least to most recently used."""
    @property
    def bytes(self) -> int: ...
    @property
    def evictions(self) -> int: ...
    @property
    def max_entries(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...

@final
class OtlpEncoder:
    """The span encoder of one exporter: it keeps each kind of span's serialized
    constant part (bounded), so a span costs its own part, and the spans encoded
    until they are taken."""

    def __init__(self) -> None: ...
    def add(self, trace: Any, epoch: float, /) -> int:
        """Encode one finished ``fastgw.tracing.Trace`` (its report set) at once and
        keep its spans (its request span and one per upstream attempt); the spans
        kept, counted. ``epoch`` turns perf_counter readings into Unix time."""
    def pending(self) -> int:
        """Spans kept (added since the last take)."""
    def take(self, pid: int, version: str, /) -> bytes:
        """The serialized OTLP ``ExportTraceServiceRequest`` of the spans kept: the
        resource (``service.name`` fastgw, ``version``, ``process.pid``), the fastgw
        scope and the spans; none are kept after."""
    def encode(self, batch: list[Any], epoch: float, pid: int, version: str, /) -> bytes:
        """``add`` of each trace of ``batch`` (a list of ``fastgw.tracing.Trace``),
        then ``take``. The reference is ``fastgw._reference.otlp.encode``."""
    def kept(self) -> tuple[int, int]:
        """Constant parts kept: (request spans, attempt spans)."""

def cache_key(body: bytes, scope: bytes, endpoint: bytes, model: bytes, /) -> bytes:
    """The response cache's key: 16 bytes, XXH3-128 (big-endian, as
    ``xxhash.xxh3_128_digest``) of ``scope``, ``endpoint`` and ``model``, each as
    its length (8 bytes, little-endian) then its bytes, then the canonical JSON of
    ``body`` without its top-level ``stream``, ``stream_options``, ``user`` and
    ``fastgw``: object members sorted by their key's UTF-8 bytes (a repeated key's
    last value kept), strings re-escaped one way (only ``"``, ``\\`` and control
    characters; the rest raw UTF-8), integers in ``[-2**63, 2**64)`` as integers,
    any other number as the nearest float, written as an integer when integral
    and within ``2**53`` (``1``, ``1.0``, ``1e0`` alike; ``-0.0`` as ``0``), else
    in the shortest scientific form (``1.5e0``), no whitespace. ValueError (with
    a short reason) when ``body`` is not a JSON object (or not JSON as serde_json
    reads it: a lone surrogate escape, a number beyond float range, more than 127
    levels of nesting...)."""
