"""Pure-Python reference of the native JWT verifier (``fastgw._native``).

Same API as ``JwtKeySet`` and ``JwtVerifier`` and the same checks in the same
order (listed in ``rust/src/jwt.rs``), so that both refuse a token for the
same reason. Signatures are checked with PyJWT's algorithm objects and keys
loaded with ``cryptography``; both are imported lazily, when a key set is
built. The exception classes mirror the native ones by name and ``reason``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "BadAudienceError",
    "BadIssuerError",
    "BadSignatureError",
    "ExpiredTokenError",
    "JwtError",
    "JwtKeyError",
    "JwtKeySet",
    "JwtVerifier",
    "MalformedTokenError",
    "MissingClaimError",
    "NotYetValidError",
    "UnknownKeyError",
    "UnsupportedAlgorithmError",
]


class JwtError(ValueError):
    """A token was refused; ``reason`` says why."""

    reason = "invalid"


class MalformedTokenError(JwtError):
    """Not a well-formed JWS compact token."""

    reason = "malformed"


class UnsupportedAlgorithmError(JwtError):
    """Algorithm unknown, ``none``, not allowed, or not usable with the key."""

    reason = "unsupported_alg"


class UnknownKeyError(JwtError):
    """No key carries the token's ``kid``."""

    reason = "unknown_kid"


class BadSignatureError(JwtError):
    """The signature does not verify."""

    reason = "bad_signature"


class ExpiredTokenError(JwtError):
    """``exp`` has passed."""

    reason = "expired"


class NotYetValidError(JwtError):
    """``nbf`` or ``iat`` is in the future."""

    reason = "not_yet_valid"


class BadIssuerError(JwtError):
    """``iss`` is not accepted."""

    reason = "bad_issuer"


class BadAudienceError(JwtError):
    """``aud`` is not accepted."""

    reason = "bad_audience"


class MissingClaimError(JwtError):
    """A required claim is absent."""

    reason = "missing_claim"


class JwtKeyError(ValueError):
    """Key material or verifier settings cannot be used."""


_ALGS = (
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
)  # fmt: skip
_FITS = {
    "hmac": {"HS256", "HS384", "HS512"},
    "rsa": {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"},
    "p256": {"ES256"},
    "p384": {"ES384"},
    "ed25519": {"EdDSA"},
}
_B64URL = re.compile(rb"[A-Za-z0-9_-]*")
_MAX_CACHED_TOKEN = 8192


def _b64_strict(part: bytes, what: str) -> bytes:
    """Base64url without padding, with no stray bits (as the native engine)."""
    if not _B64URL.fullmatch(part) or len(part) % 4 == 1:
        raise MalformedTokenError(f"token {what} is not valid base64url")
    raw = base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != part:
        raise MalformedTokenError(f"token {what} is not valid base64url")
    return raw


def _b64_key(s: object, field: str) -> bytes:
    if not isinstance(s, str):
        raise JwtKeyError(f'JWK has no string field "{field}"')
    try:
        return base64.urlsafe_b64decode(s.rstrip("=") + "=" * (-len(s.rstrip("=")) % 4))
    except (binascii.Error, ValueError) as e:
        raise JwtKeyError(f"JWK field {field!r}: {e}") from None


def _text(obj: dict[str, Any], field: str) -> str | None:
    v = obj.get(field)
    if v is None:
        return None
    if not isinstance(v, str):
        raise JwtKeyError(f"JWK field {field!r} must be a string")
    return v


class _Key:
    __slots__ = ("alg", "kid", "kind", "material")

    def __init__(self, kid: str | None, alg: str | None, kind: str, material: Any) -> None:
        self.kid = kid
        self.alg = alg
        self.kind = kind
        self.material = material

    def accepts(self, alg: str) -> bool:
        return alg in _FITS[self.kind] and (self.alg is None or self.alg == alg)


def _rsa(n: int, e: int) -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    bits = n.bit_length()
    if not 2048 <= bits <= 8192:
        raise JwtKeyError(f"RSA modulus of {bits} bits: 2048 to 8192 are accepted")
    if e < 3 or e % 2 == 0 or e >= 1 << 33:
        raise JwtKeyError("RSA exponent must be odd, >= 3 and < 2^33")
    return rsa.RSAPublicNumbers(e, n).public_key()


def _jwk(obj: dict[str, Any]) -> _Key | None:
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    use = _text(obj, "use")
    if use is not None and use != "sig":
        return None
    alg = _text(obj, "alg")
    if alg is not None and alg not in _ALGS:
        return None
    kid = _text(obj, "kid")
    kty = _text(obj, "kty")
    if kty == "oct":
        key = _Key(kid, alg, "hmac", _b64_key(obj.get("k"), "k"))
    elif kty == "RSA":
        n = int.from_bytes(_b64_key(obj.get("n"), "n"), "big")
        e = int.from_bytes(_b64_key(obj.get("e"), "e"), "big")
        key = _Key(kid, alg, "rsa", _rsa(n, e))
    elif kty == "EC":
        crv = _text(obj, "crv")
        if crv not in ("P-256", "P-384"):
            return None
        size, curve, kind = (
            (32, ec.SECP256R1(), "p256") if crv == "P-256" else (48, ec.SECP384R1(), "p384")
        )
        x = _b64_key(obj.get("x"), "x")
        y = _b64_key(obj.get("y"), "y")
        if len(x) != size or len(y) != size:
            raise JwtKeyError("EC coordinates have the wrong length for the curve")
        try:
            pub = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError as e:
            raise JwtKeyError(f"bad EC point: {e}") from None
        key = _Key(kid, alg, kind, pub)
    elif kty == "OKP":
        if _text(obj, "crv") != "Ed25519":
            return None
        x = _b64_key(obj.get("x"), "x")
        if len(x) != 32:
            raise JwtKeyError("Ed25519 key must be 32 bytes")
        key = _Key(kid, alg, "ed25519", ed25519.Ed25519PublicKey.from_public_bytes(x))
    elif kty is None:
        raise JwtKeyError('JWK has no "kty"')
    else:
        return None
    if alg is not None and alg not in _FITS[key.kind]:
        raise JwtKeyError(f"JWK alg {alg} does not fit its key type")
    return key


def _as_bytes(v: str | bytes) -> bytes:
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, bytes):
        return v
    raise TypeError(f"expected str or bytes, got {type(v).__name__}")


class JwtKeySet:
    """An immutable set of verification keys."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[_Key] = ()) -> None:
        self._keys: tuple[_Key, ...] = tuple(keys)

    @staticmethod
    def from_jwks(jwks: str | bytes) -> JwtKeySet:
        """Keys from a JWKS document (or one JWK)."""
        try:
            doc = json.loads(_as_bytes(jwks).decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise JwtKeyError(f"JWKS is not valid JSON: {e}") from None
        if not isinstance(doc, dict):
            raise JwtKeyError("JWKS must be a JSON object")
        if "keys" in doc:
            items = doc["keys"]
            if not isinstance(items, list):
                raise JwtKeyError('JWKS "keys" must be an array')
        else:
            items = [doc]
        keys = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise JwtKeyError(f"JWKS key {i} is not an object")
            try:
                k = _jwk(item)
            except JwtKeyError as e:
                raise JwtKeyError(f"JWKS key {i}: {e}") from None
            if k is not None:
                keys.append(k)
        if not keys:
            raise JwtKeyError("JWKS holds no usable signature key")
        return JwtKeySet(keys)

    @staticmethod
    def from_pem(
        pem: str | bytes, *, kid: str | None = None, algorithm: str | None = None
    ) -> JwtKeySet:
        """One public key in PEM."""
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        if algorithm is not None and algorithm not in _ALGS:
            raise JwtKeyError(f"unsupported algorithm {algorithm!r}")
        try:
            pub = load_pem_public_key(_as_bytes(pem).strip())
        except (ValueError, TypeError) as e:
            raise JwtKeyError(f"bad PEM: {e}") from None
        if isinstance(pub, rsa.RSAPublicKey):
            nums = pub.public_numbers()
            key = _Key(kid, algorithm, "rsa", _rsa(nums.n, nums.e))
        elif isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp256r1":
            key = _Key(kid, algorithm, "p256", pub)
        elif isinstance(pub, ec.EllipticCurvePublicKey) and pub.curve.name == "secp384r1":
            key = _Key(kid, algorithm, "p384", pub)
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            key = _Key(kid, algorithm, "ed25519", pub)
        else:
            raise JwtKeyError("unsupported public key algorithm")
        if algorithm is not None and algorithm not in _FITS[key.kind]:
            raise JwtKeyError(f"algorithm {algorithm} does not fit this key")
        return JwtKeySet([key])

    @staticmethod
    def from_secret(
        secret: str | bytes, *, kid: str | None = None, algorithm: str | None = None
    ) -> JwtKeySet:
        """One HMAC secret."""
        if algorithm is not None and algorithm not in _FITS["hmac"]:
            if algorithm in _ALGS:
                raise JwtKeyError("a secret can only be used with HS256, HS384 or HS512")
            raise JwtKeyError(f"unsupported algorithm {algorithm!r}")
        return JwtKeySet([_Key(kid, algorithm, "hmac", _as_bytes(secret))])

    def union(self, other: JwtKeySet) -> JwtKeySet:
        """This set's keys followed by ``other``'s."""
        return JwtKeySet(self._keys + other._keys)

    @property
    def kids(self) -> list[str | None]:
        """The ``kid`` of each key."""
        return [k.kid for k in self._keys]

    def __len__(self) -> int:
        return len(self._keys)


def _strings(v: str | Iterable[str]) -> list[str]:
    return [v] if isinstance(v, str) else [str(x) for x in v]


def _no_constants(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _finite_float(text: str) -> float:
    v = float(text)
    if math.isinf(v):
        raise ValueError("number out of range")
    return v


def _json_int(text: str) -> int | float:
    # serde_json keeps 64-bit integers and reads larger ones as floats.
    v = int(text)
    return v if -(2**63) <= v < 2**64 else _finite_float(text)


class _Obj(dict[str, Any]):
    """A decoded JSON object that remembers its repeated keys."""

    dups: frozenset[str] = frozenset()


def _pairs(pairs: list[tuple[str, Any]]) -> _Obj:
    out = _Obj()
    seen: set[str] = set()
    for k, v in pairs:
        if k in out:
            seen.add(k)
        out[k] = v
    if seen:
        out.dups = frozenset(seen)
    return out


def _json_object(raw: bytes, what: str, hook: Any = None) -> dict[str, Any]:
    stripped = raw.lstrip(b" \t\r\n")
    if not stripped.startswith(b"{"):
        raise MalformedTokenError(f"token {what} is not a JSON object")
    try:
        value = json.loads(
            raw.decode("utf-8"),
            parse_constant=_no_constants,
            parse_float=_finite_float,
            parse_int=_json_int,
            object_pairs_hook=hook,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedTokenError(f"token {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedTokenError(f"token {what} is not a JSON object")
    return value


def _number(claims: dict[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    v = claims[name]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise MalformedTokenError(f"{name!r} claim must be a number")
    return float(v)


def _check_times(
    times: tuple[float | None, float | None, float | None], now: float, leeway: float
) -> None:
    iat, nbf, exp = times
    if iat is not None and iat > now + leeway:
        raise NotYetValidError("token is not yet valid (iat is in the future)")
    if nbf is not None and nbf > now + leeway:
        raise NotYetValidError("token is not yet valid (nbf)")
    if exp is not None and exp <= now - leeway:
        raise ExpiredTokenError("token has expired")


class JwtVerifier:
    """Verifies tokens against a key set, with a cache of verified tokens."""

    __slots__ = (
        "_algorithms",
        "_audiences",
        "_cache",
        "_cache_size",
        "_impls",
        "_issuers",
        "_keys",
        "_leeway",
        "_require",
    )

    def __init__(
        self,
        keys: JwtKeySet,
        *,
        algorithms: str | Sequence[str],
        issuer: str | Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None,
        leeway: float = 0.0,
        require: str | Sequence[str] | None = None,
        cache_size: int = 4096,
    ) -> None:
        from jwt.algorithms import get_default_algorithms

        algs = _strings(algorithms)
        for a in algs:
            if a not in _ALGS:
                raise JwtKeyError(f"unsupported algorithm {a!r}")
        if not algs:
            raise JwtKeyError("at least one algorithm must be allowed")
        leeway = float(leeway)
        if not (math.isfinite(leeway) and leeway >= 0.0):
            raise JwtKeyError("leeway must be a finite number of seconds >= 0")
        self._keys = keys
        self._algorithms = algs
        self._issuers = None if issuer is None else _strings(issuer)
        self._audiences = None if audience is None else _strings(audience)
        self._leeway = leeway
        self._require = ["exp"] if require is None else _strings(require)
        self._impls = get_default_algorithms()
        self._cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[dict[str, Any], Any]] = OrderedDict()

    @property
    def algorithms(self) -> list[str]:
        """Allowed algorithm names."""
        return list(self._algorithms)

    @property
    def cache_len(self) -> int:
        """Tokens in the cache."""
        return len(self._cache)

    def clear_cache(self) -> None:
        """Forgets every cached token."""
        self._cache.clear()

    def verify(self, token: str | bytes, now: float | None = None) -> dict[str, Any]:
        """The claims of a valid token (a new dict each call)."""
        if not isinstance(token, str | bytes):
            raise TypeError("token must be str or bytes")
        raw = _as_bytes(token)
        t = time.time() if now is None else float(now)
        hit = self._cache.get(raw)
        if hit is not None:
            try:
                _check_times(hit[1], t, self._leeway)
            except JwtError:
                del self._cache[raw]
            else:
                self._cache.move_to_end(raw)
                return dict(hit[0])
        claims, times = self._verify(raw, t)
        if self._cache_size > 0 and len(raw) <= _MAX_CACHED_TOKEN:
            self._cache[raw] = (claims, times)
            self._cache.move_to_end(raw)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return dict(claims)

    def _verify(
        self, raw: bytes, now: float
    ) -> tuple[dict[str, Any], tuple[float | None, float | None, float | None]]:
        parts = raw.split(b".")
        if len(parts) != 3:
            raise MalformedTokenError("token must have three dot-separated parts")
        h, p, s = parts
        header = _json_object(_b64_strict(h, "header"), "header", _pairs)
        if isinstance(header, _Obj) and header.dups & {"alg", "kid", "crit"}:
            # serde refuses a repeated field it knows; do the same.
            raise MalformedTokenError("token header repeats a field")
        if "crit" in header and header["crit"] is not None:
            raise MalformedTokenError("the crit header parameter is not supported")
        alg = header.get("alg")
        kid = header.get("kid")
        if alg is None or not isinstance(alg, str):
            raise MalformedTokenError("token header has no alg")
        if kid is not None and not isinstance(kid, str):
            raise MalformedTokenError("token header kid must be a string")
        if alg not in _ALGS:
            raise UnsupportedAlgorithmError(f"algorithm {alg!r} is not supported")
        if alg not in self._algorithms:
            raise UnsupportedAlgorithmError(f"algorithm {alg} is not allowed")
        keys = self._keys._keys
        if kid is not None:
            same = [k for k in keys if k.kid == kid] or [k for k in keys if k.kid is None]
            if not same:
                raise UnknownKeyError(f"no key has kid {kid!r}")
            candidates = [k for k in same if k.accepts(alg)]
        else:
            candidates = [k for k in keys if k.accepts(alg)]
        if not candidates:
            if not keys:
                raise UnknownKeyError("no key is configured")
            raise UnsupportedAlgorithmError(f"no key for algorithm {alg}")
        sig = _b64_strict(s, "signature")
        payload = _b64_strict(p, "payload")
        impl = self._impls[alg]
        signing_input = h + b"." + p
        if not any(impl.verify(signing_input, k.material, sig) for k in candidates):
            raise BadSignatureError("signature verification failed")
        claims = _json_object(payload, "payload")
        for name in self._require:
            if name not in claims:
                raise MissingClaimError(f"token has no {name!r} claim")
        times = (_number(claims, "iat"), _number(claims, "nbf"), _number(claims, "exp"))
        _check_times(times, now, self._leeway)
        if self._issuers is not None:
            if "iss" not in claims:
                raise MissingClaimError('token has no "iss" claim')
            iss = claims["iss"]
            if not isinstance(iss, str) or iss not in self._issuers:
                raise BadIssuerError("token issuer is not accepted")
        if "aud" in claims:
            if self._audiences is None:
                raise BadAudienceError("token names an audience but none is configured")
            aud = claims["aud"]
            if isinstance(aud, str):
                ok = aud in self._audiences
            elif isinstance(aud, list):
                if not all(isinstance(a, str) for a in aud):
                    raise BadAudienceError("aud must be a string or a list of strings")
                ok = any(a in self._audiences for a in aud)
            else:
                raise BadAudienceError("aud must be a string or a list of strings")
            if not ok:
                raise BadAudienceError("token audience is not accepted")
        elif self._audiences is not None:
            raise MissingClaimError('token has no "aud" claim')
        return claims, times
