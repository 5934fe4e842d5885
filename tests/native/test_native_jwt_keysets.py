"""``JwtKeySet.from_pem``, ``from_secret`` and ``union`` against PyJWT: generated
key sets (HMAC secrets of random length, RSA and EC keys of a few sizes, kids
present, absent or shared, algorithms pinned or not) and generated tokens (valid,
signed by another key, tampered payload or signature, expired, another alg in the
header, kid absent, known or unknown). The expected outcome is worked out with
PyJWT alone, key by key, following the documented key selection: a token's
``kid`` picks the keys with that kid (else the keys without a kid), no ``kid``
picks every key; of those, the keys that fit the algorithm (and whose pinned
algorithm, if any, is that one) are tried."""

from __future__ import annotations

import base64
import json
import time
import warnings
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fastgw import _native as native

pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)

FITS = {
    "hmac": ["HS256", "HS384", "HS512"],
    "rsa": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
    "p256": ["ES256"],
    "p384": ["ES384"],
    "ed25519": ["EdDSA"],
}
ALL_ALGS = [a for algs in FITS.values() for a in algs]


@dataclass(frozen=True)
class Asym:
    kind: str
    private: Any
    pem: bytes


def _asym(kind: str, private: Any) -> Asym:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return Asym(kind, private, pem)


# Generated once for the module: RSA key generation is slow.
POOL = [
    _asym("rsa", rsa.generate_private_key(65537, 2048)),
    _asym("rsa", rsa.generate_private_key(65537, 2048)),
    _asym("rsa", rsa.generate_private_key(65537, 3072)),
    _asym("p256", ec.generate_private_key(ec.SECP256R1())),
    _asym("p256", ec.generate_private_key(ec.SECP256R1())),
    _asym("p384", ec.generate_private_key(ec.SECP384R1())),
    _asym("ed25519", ed25519.Ed25519PrivateKey.generate()),
]


@dataclass(frozen=True)
class Entry:
    """One key of a set: an HMAC secret or a pool key, with its kid and pinned alg."""

    secret: bytes | None
    pool: int | None
    kid: str | None
    alg: str | None

    @property
    def kind(self) -> str:
        return "hmac" if self.pool is None else POOL[self.pool].kind

    def accepts(self, alg: str) -> bool:
        return alg in FITS[self.kind] and (self.alg is None or self.alg == alg)

    def pyjwt_key(self) -> Any:
        return self.secret if self.pool is None else POOL[self.pool].private.public_key()

    def build(self) -> native.JwtKeySet:
        if self.pool is None:
            assert self.secret is not None
            return native.JwtKeySet.from_secret(self.secret, kid=self.kid, algorithm=self.alg)
        return native.JwtKeySet.from_pem(POOL[self.pool].pem, kid=self.kid, algorithm=self.alg)


# Lengths spread from 1 to past SHA-512's block (128 bytes: longer keys are hashed).
# PyJWT refuses HMAC secrets that look like PEM or SSH keys; those are not the point.
SECRETS = st.integers(1, 160).flatmap(lambda n: st.binary(min_size=n, max_size=n)).filter(
    lambda b: b"-----" not in b and b"ssh-" not in b and b"ecdsa-" not in b)
KIDS = st.sampled_from([None, "a", "b", "c"])


@st.composite
def entries(draw: st.DrawFn, secrets: list[bytes]) -> Entry:
    if draw(st.booleans()):
        seen = bool(secrets) and draw(st.booleans())
        secret = draw(st.sampled_from(secrets)) if seen else draw(SECRETS)
        secrets.append(secret)
        pinned = draw(st.none() | st.sampled_from(FITS["hmac"]))
        return Entry(secret, None, draw(KIDS), pinned)
    i = draw(st.integers(0, len(POOL) - 1))
    pinned = draw(st.none() | st.sampled_from(FITS[POOL[i].kind]))
    return Entry(None, i, draw(KIDS), pinned)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@st.composite
def tokens(draw: st.DrawFn, keys: list[Entry], secrets: list[bytes], now: float) -> str:
    """A token signed by a set's key (mostly) or another one, then perhaps altered."""
    kid = draw(st.sampled_from([None, "a", "b", "c", "unknown"]))
    if draw(st.integers(0, 2)):
        signer = draw(st.sampled_from(keys))
        kind = signer.kind
        key: Any = signer.secret if signer.pool is None else POOL[signer.pool].private
        if draw(st.booleans()):
            kid = signer.kid
    elif draw(st.booleans()):
        kind = "hmac"
        seen = bool(secrets) and draw(st.booleans())
        key = draw(st.sampled_from(secrets)) if seen else draw(SECRETS)
    else:
        pool = POOL[draw(st.integers(0, len(POOL) - 1))]
        kind, key = pool.kind, pool.private
    alg = draw(st.sampled_from(FITS[kind]))
    exp = now + draw(st.sampled_from([3600, 3600, -3600]))
    claims: dict[str, Any] = {"sub": draw(st.text(max_size=8)), "exp": exp}
    headers: dict[str, Any] = {}
    if kid is not None:
        headers["kid"] = kid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = pyjwt.api_jws.PyJWS().encode(json.dumps(claims).encode(), key, alg,
                                             headers=headers)
    h, p, s = token.split(".")
    change = draw(st.sampled_from(["none", "none", "none", "payload", "signature", "alg"]))
    if change == "payload":
        p = b64(json.dumps({**claims, "sub": claims["sub"] + "!"}).encode())
    elif change == "signature":
        sig = bytearray(unb64(s))
        sig[draw(st.integers(0, len(sig) - 1))] ^= 1 << draw(st.integers(0, 7))
        s = b64(bytes(sig))
    elif change == "alg":
        header = json.loads(unb64(h))
        header["alg"] = draw(st.sampled_from([a for a in ALL_ALGS if a != alg]))
        h = b64(json.dumps(header).encode())
    return f"{h}.{p}.{s}"


def expected(token: str, keys: list[Entry], algorithms: list[str]) -> tuple[str, Any]:
    """What verifying ``token`` against ``keys`` gives, from PyJWT key by key."""
    header = pyjwt.get_unverified_header(token)
    alg, kid = header["alg"], header.get("kid")
    if alg not in algorithms:
        return ("unsupported_alg", None)
    if kid is not None:
        same = [k for k in keys if k.kid == kid] or [k for k in keys if k.kid is None]
        if not same:
            return ("unknown_kid", None)
    else:
        same = keys
    candidates = [k for k in same if k.accepts(alg)]
    if not candidates:
        return ("unsupported_alg", None)
    reason = "bad_signature"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for k in candidates:
            try:
                claims = pyjwt.decode(token, k.pyjwt_key(), algorithms=[alg],
                                      options={"require": ["exp"]})
            except pyjwt.ExpiredSignatureError:
                reason = "expired"  # the signature held
                continue
            except pyjwt.InvalidSignatureError:
                continue
            return ("ok", claims)
    return (reason, None)


def outcome(keys: native.JwtKeySet, algorithms: list[str], token: str,
            now: float) -> tuple[str, Any]:
    verifier = native.JwtVerifier(keys, algorithms=algorithms, cache_size=0)
    try:
        return ("ok", verifier.verify(token, now))
    except native.JwtError as e:
        return (e.reason, None)


def build(entries_: list[Entry]) -> native.JwtKeySet:
    out = entries_[0].build()
    for e in entries_[1:]:
        out = out.union(e.build())
    return out


# Every algorithm but a few, so that most tokens get as far as their keys.
ALGORITHMS = st.sets(st.sampled_from(ALL_ALGS), max_size=3).map(
    lambda off: [a for a in ALL_ALGS if a not in off] or ["HS256"])
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@SETTINGS
@given(data=st.data())
def test_key_sets_verify_exactly_what_pyjwt_does(data: st.DataObject) -> None:
    now = time.time()
    secrets: list[bytes] = []
    keys = data.draw(st.lists(entries(secrets), min_size=1, max_size=4))
    algorithms = data.draw(ALGORITHMS)
    keyset = build(keys)
    assert len(keyset) == len(keys) and keyset.kids == [k.kid for k in keys]
    for _ in range(3):
        token = data.draw(tokens(keys, secrets, now))
        want = expected(token, keys, algorithms)
        event(want[0])
        assert outcome(keyset, algorithms, token, now) == want, (token, keys, algorithms)


@SETTINGS
@given(data=st.data())
def test_a_union_accepts_exactly_what_either_set_accepts(data: st.DataObject) -> None:
    now = time.time()
    secrets: list[bytes] = []
    left = data.draw(st.lists(entries(secrets), min_size=1, max_size=3))
    right = data.draw(st.lists(entries(secrets), min_size=1, max_size=3))
    algorithms = data.draw(ALGORITHMS)
    a, b = build(left), build(right)
    both = a.union(b)
    assert len(both) == len(a) + len(b) and both.kids == a.kids + b.kids
    assert len(a) == len(left) and len(b) == len(right)  # the operands are unchanged
    for _ in range(4):
        token = data.draw(tokens(left + right, secrets, now))
        got_a = outcome(a, algorithms, token, now)
        got_b = outcome(b, algorithms, token, now)
        got = outcome(both, algorithms, token, now)
        event(f"{got_a[0]} | {got_b[0]} -> {got[0]}")
        if got[0] == "ok":
            assert got_a[0] == "ok" or got_b[0] == "ok", (token, left, right)
        # A kid that names keys in one set shadows the other set's kid-less keys, so
        # the union is not the plain "or" of the two; PyJWT on the joined list decides.
        assert got == expected(token, left + right, algorithms), (token, left, right)
        if got_a[0] == "ok" and got_b[0] == "ok":
            assert got[0] == "ok"
        if "kid" not in pyjwt.get_unverified_header(token):
            assert (got[0] == "ok") == (got_a[0] == "ok" or got_b[0] == "ok")


@settings(max_examples=60, deadline=None)
@given(secret=SECRETS, alg=st.sampled_from(ALL_ALGS), i=st.integers(0, len(POOL) - 1))
def test_a_pinned_algorithm_must_fit_the_key(secret: bytes, alg: str, i: int) -> None:
    pool = POOL[i]
    if alg in FITS[pool.kind]:
        assert native.JwtKeySet.from_pem(pool.pem, algorithm=alg).kids == [None]
    else:
        with pytest.raises(native.JwtKeyError):
            native.JwtKeySet.from_pem(pool.pem, algorithm=alg)
    if alg in FITS["hmac"]:
        assert len(native.JwtKeySet.from_secret(secret, kid="k", algorithm=alg)) == 1
    else:
        with pytest.raises(native.JwtKeyError):
            native.JwtKeySet.from_secret(secret, algorithm=alg)
