"""JWT / OIDC bearer tokens, verified by the native verifier.

Keys come from ``auth.jwt.secret`` (HS*), ``public_key_pem`` or a
``jwks_url``. A JWKS is fetched through a function the pipeline hands in (the
gateway's own upstream client), then cached:

- a token whose ``kid`` no cached key carries triggers one refresh, at most
  once per ``jwks_min_refresh_s`` (a flood of made-up kids cannot hammer the
  identity provider: between refreshes they are refused from the cache);
- keys older than ``jwks_cache_s`` are refreshed in the background while the
  cached ones keep verifying;
- when the identity provider is down, the last good keys keep serving.

Every refusal is a 401 whose message and ``code`` give the reason (expired,
not yet valid, wrong issuer or audience, bad signature, ``alg: none`` or an
algorithm the configuration does not allow, unknown key).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastgw import _native
from fastgw.config import JwtConfig
from fastgw.errors import ServiceUnavailable, Unauthorized
from fastgw.metrics import JWKS_FETCHES

log = logging.getLogger("fastgw.auth")

Fetch = Callable[[str], Awaitable[bytes]]

_CODES = {
    "malformed": "invalid_token",
    "unsupported_alg": "token_algorithm_not_allowed",
    "unknown_kid": "token_key_unknown",
    "bad_signature": "token_bad_signature",
    "expired": "token_expired",
    "not_yet_valid": "token_not_yet_valid",
    "bad_issuer": "token_bad_issuer",
    "bad_audience": "token_bad_audience",
    "missing_claim": "token_missing_claim",
}


def looks_like_jwt(token: bytes) -> bool:
    """Three dot-separated parts: worth handing to the verifier."""
    return token.count(b".") == 2


class JwtAuth:
    """Verifies bearer tokens; owns the key cache for one ``auth.jwt`` configuration."""

    __slots__ = ("_attempt_at", "_clock", "_fetch", "_inflight", "_loaded_at", "_verifier",
                 "cfg", "fetch_timeout_s", "fetches")

    def __init__(self, cfg: JwtConfig, fetch: Fetch | None = None, *,
                 fetch_timeout_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Static keys are loaded here (``JwtKeyError`` when unusable); a JWKS on
        :meth:`start` or on first use."""
        self.cfg = cfg
        self._fetch = fetch
        self._clock = clock
        self.fetch_timeout_s = fetch_timeout_s
        self._verifier: _native.JwtVerifier | None = None
        self._loaded_at = 0.0  # clock() of the last good JWKS
        self._attempt_at = -1e18  # clock() of the last JWKS fetch started
        self._inflight: asyncio.Task[bool] | None = None
        self.fetches = 0  # JWKS fetches started (tests, logs)
        if cfg.secret is not None:
            self._verifier = self._make(_native.JwtKeySet.from_secret(cfg.secret))
        elif cfg.public_key_pem is not None:
            self._verifier = self._make(_native.JwtKeySet.from_pem(cfg.public_key_pem))
        elif cfg.jwks_url is None or fetch is None:
            raise ValueError("auth.jwt needs a secret, a public key, or a jwks_url and a fetcher")

    def _make(self, keys: _native.JwtKeySet) -> _native.JwtVerifier:
        c = self.cfg
        require = ["exp"]
        if c.claims.subject not in require:
            require.append(c.claims.subject)
        return _native.JwtVerifier(keys, algorithms=list(c.algorithms), issuer=c.issuer,
                                   audience=c.audience, leeway=c.leeway_s, require=require)

    @property
    def ready(self) -> bool:
        """True once keys are loaded."""
        return self._verifier is not None

    async def start(self) -> None:
        """Load the JWKS, if there is one and it is not loaded yet (failure is logged:
        tokens then trigger new attempts, at most once per ``jwks_min_refresh_s``)."""
        if self._verifier is None:
            await self._refresh()

    def verify_now(self, token: bytes) -> dict[str, Any] | None:
        """:meth:`verify` when it needs no JWKS fetch: the claims, or
        :class:`Unauthorized`; None when keys must be fetched first (none loaded
        yet, or a ``kid`` we do not know while a refresh is allowed)."""
        verifier = self._verifier
        if self.cfg.jwks_url is not None:
            if verifier is None:
                return None
            now = self._clock()
            if now - self._loaded_at > self.cfg.jwks_cache_s and self._may_refresh(now):
                self._refresh_in_background()
        assert verifier is not None
        try:
            return verifier.verify(token)
        except _native.UnknownKeyError as exc:
            if self.cfg.jwks_url is None or not self._may_refresh(self._clock()):
                raise _refused(exc) from None
            return None  # the provider may have rotated its keys: fetch them
        except _native.JwtError as exc:
            raise _refused(exc) from None

    async def verify(self, token: bytes) -> dict[str, Any]:
        """The claims of a valid token; :class:`Unauthorized` (401) with the reason
        otherwise, :class:`ServiceUnavailable` (503) when no key could ever be loaded."""
        claims = self.verify_now(token)
        if claims is not None:
            return claims
        if self._verifier is not None or self._may_refresh(self._clock()):
            await self._refresh()
        verifier = self._verifier
        if verifier is None:
            wait = max(1, math.ceil(self.cfg.jwks_min_refresh_s))
            raise ServiceUnavailable(
                "cannot verify tokens: the identity provider's keys (auth.jwt.jwks_url) "
                "could not be fetched; try again shortly", code="jwks_unavailable",
                headers=[(b"retry-after", b"%d" % wait)])
        try:
            return verifier.verify(token)
        except _native.JwtError as exc:
            raise _refused(exc) from None

    # -- JWKS cache -------------------------------------------------------------------

    def _may_refresh(self, now: float) -> bool:
        return self._inflight is not None or now - self._attempt_at >= self.cfg.jwks_min_refresh_s

    def _refresh_in_background(self) -> None:
        if self._inflight is None:
            self._start_fetch()

    def _start_fetch(self) -> asyncio.Task[bool]:
        self._attempt_at = self._clock()
        self.fetches += 1
        task = asyncio.get_running_loop().create_task(self._load())
        self._inflight = task
        task.add_done_callback(self._fetch_done)
        return task

    def _fetch_done(self, task: asyncio.Task[bool]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh(self) -> bool:
        """Fetch the JWKS now, or join the fetch under way (one at a time)."""
        task = self._inflight or self._start_fetch()
        # shield: a caller that goes away does not cancel a fetch others wait for
        return await asyncio.shield(task)

    async def _load(self) -> bool:
        url = self.cfg.jwks_url
        assert url is not None and self._fetch is not None
        try:
            async with asyncio.timeout(self.fetch_timeout_s):
                body = await self._fetch(url)
            keys = _native.JwtKeySet.from_jwks(body)
            verifier = self._make(keys)
        except Exception as exc:  # any failure keeps the cached keys (logged, counted)
            JWKS_FETCHES.labels("error").inc()
            log.warning("JWKS fetch from %s failed (%s)%s", url,
                        str(exc) or exc.__class__.__name__,
                        "; the cached keys keep serving" if self._verifier is not None else "")
            return False
        JWKS_FETCHES.labels("ok").inc()
        self._verifier = verifier
        self._loaded_at = self._clock()
        return True

    def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()


def _refused(exc: Exception) -> Unauthorized:
    reason = str(getattr(exc, "reason", "invalid"))
    return Unauthorized(f"the bearer token was refused: {exc} ({reason}); get a new token "
                        "from your identity provider", code=_CODES.get(reason, "invalid_token"))
