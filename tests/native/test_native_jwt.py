"""The native JWT verifier accepts what PyJWT signs, refuses for the same
reason as the reference, and never panics on garbage."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastgw import _native as native
from fastgw._reference import jwt as ref

from .conftest import HMAC_SECRET, SigningKey

# Sockets leaked by other tests' servers can be collected while these run;
# pytest would blame the test that happens to trigger the collection.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <socket\.socket:pytest.PytestUnraisableExceptionWarning"
)

ALL_ALGS = ["HS256", "HS384", "HS512", "RS256", "RS384", "RS512"]
ALL_ALGS += ["PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"]
REASONS = {
    "MalformedTokenError": "malformed",
    "UnsupportedAlgorithmError": "unsupported_alg",
    "UnknownKeyError": "unknown_kid",
    "BadSignatureError": "bad_signature",
    "ExpiredTokenError": "expired",
    "NotYetValidError": "not_yet_valid",
    "BadIssuerError": "bad_issuer",
    "BadAudienceError": "bad_audience",
    "MissingClaimError": "missing_claim",
}
NOW = 1_800_000_000.0


def _outcome(verifier: Any, token: str | bytes, now: float) -> tuple[str, Any]:
    try:
        return ("ok", verifier.verify(token, now))
    except (native.JwtError, ref.JwtError) as e:
        return (e.reason, None)


def _pair(jwks: str, **kw: Any) -> tuple[Any, Any]:
    kw.setdefault("algorithms", ALL_ALGS)
    return (
        native.JwtVerifier(native.JwtKeySet.from_jwks(jwks), **kw),
        ref.JwtVerifier(ref.JwtKeySet.from_jwks(jwks), **kw),
    )


def _sign(key: SigningKey | None, alg: str, claims: dict[str, Any], **headers: Any) -> str:
    secret: Any = HMAC_SECRET if key is None else key.private
    kid = "hmac-1" if key is None else key.kid
    # PyJWS signs any payload (PyJWT's encode would refuse odd claims).
    payload = json.dumps(claims).encode()
    return pyjwt.api_jws.PyJWS().encode(payload, secret, alg, headers={"kid": kid, **headers})


def _key_for(alg: str, keys: list[SigningKey]) -> SigningKey | None:
    if alg.startswith("HS"):
        return None
    if alg[:2] in ("RS", "PS"):
        return keys[0]
    return {"ES256": keys[1], "ES384": keys[2], "EdDSA": keys[3]}[alg]


def test_exceptions_form_one_tree_with_reason_codes() -> None:
    for name, reason in REASONS.items():
        cls = getattr(native, name)
        assert issubclass(cls, native.JwtError) and issubclass(cls, ValueError)
        assert cls.reason == reason == getattr(ref, name).reason
    assert issubclass(native.JwtKeyError, ValueError)
    assert not issubclass(native.JwtKeyError, native.JwtError)


@pytest.mark.parametrize("alg", ALL_ALGS)
def test_every_algorithm_verifies_a_pyjwt_token(
    alg: str, all_keys: list[SigningKey], jwks_json: str
) -> None:
    claims = {"sub": "u-1", "exp": int(time.time()) + 3600, "scope": ["a", "b"], "n": 1.5}
    token = _sign(_key_for(alg, all_keys), alg, claims)
    nat, rf = _pair(jwks_json)
    assert nat.verify(token) == rf.verify(token) == claims
    key = _key_for(alg, all_keys)
    expected = pyjwt.decode(
        token, HMAC_SECRET if key is None else key.private.public_key(), algorithms=[alg]
    )
    assert nat.verify(token) == expected


@pytest.mark.parametrize("alg", ["RS256", "PS512", "ES256", "ES384", "EdDSA"])
def test_pem_keys_verify(alg: str, all_keys: list[SigningKey]) -> None:
    key = _key_for(alg, all_keys)
    assert key is not None
    token = _sign(key, alg, {"exp": NOW + 60})
    keys = native.JwtKeySet.from_pem(key.public_pem, kid=key.kid)
    assert native.JwtVerifier(keys, algorithms=[alg]).verify(token, NOW) == {"exp": NOW + 60}


def test_pkcs1_rsa_pem_verifies(rsa_key: SigningKey) -> None:
    pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    token = _sign(rsa_key, "RS256", {"exp": NOW + 1})
    keys = native.JwtKeySet.from_pem(pem)
    assert native.JwtVerifier(keys, algorithms="RS256").verify(token, NOW) == {"exp": NOW + 1}


def test_alg_none_and_algorithm_confusion_are_refused(rsa_key: SigningKey) -> None:
    header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(b'{"exp":9999999999}').rstrip(b"=").decode()
    rsa_pem = native.JwtKeySet.from_pem(rsa_key.public_pem)
    v = native.JwtVerifier(rsa_pem, algorithms=["RS256", "HS256"])
    with pytest.raises(native.UnsupportedAlgorithmError):
        v.verify(f"{header}.{body}.", NOW)
    # HS256 "signed" with the RSA public key (its PEM) as the HMAC secret: the
    # classic confusion attack. An RSA key never verifies an HMAC algorithm.
    head = base64.urlsafe_b64encode(b'{"alg":"HS256"}').rstrip(b"=").decode()
    signing_input = f"{head}.{body}".encode()
    mac = hmac.new(rsa_key.public_pem, signing_input, hashlib.sha256).digest()
    forged = signing_input.decode() + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    for verifier in (
        v,
        ref.JwtVerifier(ref.JwtKeySet.from_pem(rsa_key.public_pem), algorithms=["RS256", "HS256"]),
    ):
        with pytest.raises((native.UnsupportedAlgorithmError, ref.UnsupportedAlgorithmError)):
            verifier.verify(forged, NOW)
    with pytest.raises(native.UnsupportedAlgorithmError):
        native.JwtVerifier(rsa_pem, algorithms=["RS256"]).verify(_sign(None, "HS256", {}), NOW)


def test_kid_selects_the_key(all_keys: list[SigningKey], jwks_json: str) -> None:
    nat, rf = _pair(jwks_json)
    token = _sign(all_keys[1], "ES256", {"exp": NOW + 5}, kid="nope")
    assert _outcome(nat, token, NOW)[0] == _outcome(rf, token, NOW)[0] == "unknown_kid"
    # The P-256 key under the RSA key's kid: the RSA key cannot do ES256.
    token = _sign(all_keys[1], "ES256", {"exp": NOW + 5}, kid="rsa-1")
    assert _outcome(nat, token, NOW)[0] == "unsupported_alg"
    # Without a kid, every key that fits the algorithm is tried.
    no_kid = pyjwt.encode({"exp": NOW + 5}, all_keys[1].private, algorithm="ES256")
    assert nat.verify(no_kid, NOW) == {"exp": NOW + 5}


CLAIMS = st.fixed_dictionaries(
    {},
    optional={
        "exp": st.sampled_from([NOW - 100, NOW - 5, NOW, NOW + 5, NOW + 1000]),
        "nbf": st.sampled_from([NOW - 100, NOW + 5, NOW + 50]),
        "iat": st.sampled_from([NOW - 10, NOW + 3, NOW + 100]),
        "iss": st.sampled_from(["https://idp/", "https://evil/", 7, None]),
        "aud": st.sampled_from(["fastgw", "other", ["x", "fastgw"], ["x"], [1], 3]),
        "sub": st.text(max_size=10),
        "extra": st.recursive(
            st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
            max_leaves=6,
        ),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    claims=CLAIMS,
    alg=st.sampled_from(["HS256", "HS512", "ES256", "EdDSA"]),
    leeway=st.sampled_from([0.0, 10.0]),
    issuer=st.sampled_from([None, "https://idp/", ["a", "https://idp/"]]),
    audience=st.sampled_from([None, "fastgw", ["fastgw", "y"]]),
    require=st.sampled_from([None, [], ["sub", "exp"]]),
)
def test_claim_checks_match_the_reference(
    claims: dict[str, Any],
    alg: str,
    leeway: float,
    issuer: Any,
    audience: Any,
    require: Any,
    all_keys: list[SigningKey],
    jwks_json: str,
) -> None:
    token = _sign(_key_for(alg, all_keys), alg, claims)
    nat, rf = _pair(jwks_json, issuer=issuer, audience=audience, leeway=leeway, require=require)
    assert _outcome(nat, token, NOW) == _outcome(rf, token, NOW)
    # And again from the cache, a minute later.
    assert _outcome(nat, token, NOW + 60) == _outcome(rf, token, NOW + 60)


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/ "


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alg=st.sampled_from(["HS256", "RS256", "PS256", "ES384", "EdDSA"]),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["set", "insert", "delete"]),
            st.integers(0, 10_000),
            st.sampled_from(_B64),
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_tampered_tokens_are_refused_like_the_reference(
    alg: str, edits: list[Any], all_keys: list[SigningKey], jwks_json: str
) -> None:
    key = _key_for(alg, all_keys)
    token = list(_sign(key, alg, {"sub": "u", "exp": NOW + 60, "aud": "fastgw"}))
    for kind, pos, ch in edits:
        i = pos % (len(token) + 1)
        if kind == "insert":
            token.insert(i, ch)
        elif token and i < len(token):
            if kind == "set":
                token[i] = ch
            else:
                del token[i]
    tampered = "".join(token)
    nat, rf = _pair(jwks_json, audience="fastgw")
    got = _outcome(nat, tampered, NOW)
    assert got == _outcome(rf, tampered, NOW)
    if got[0] == "ok":  # then PyJWT, the independent check, agrees it is valid
        pub: Any = HMAC_SECRET if key is None else key.private.public_key()
        pyjwt.decode(
            tampered, pub, algorithms=[alg], audience="fastgw", options={"verify_exp": False}
        )


@settings(max_examples=300, deadline=None)
@given(junk=st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_garbage_gives_a_typed_error(junk: str | bytes, jwks_json: str) -> None:
    nat, rf = _pair(jwks_json)
    assert _outcome(nat, junk, NOW)[0] == _outcome(rf, junk, NOW)[0] != "ok"


@settings(max_examples=200, deadline=None)
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "crit", "typ"]),
        st.one_of(
            st.sampled_from(["HS256", "none", "RS256", "hmac-1", "HS999"]),
            st.none(),
            st.integers(),
            st.lists(st.text(max_size=2), max_size=2),
        ),
    ),
    payload=st.sampled_from(
        [b'{"exp": 1900000000}', b"[1]", b"{", b'"x"', b"{} ", b'{"exp": 1e400}']
    ),
)
def test_odd_headers_and_payloads_match_the_reference(
    header: dict[str, Any], payload: bytes, jwks_json: str
) -> None:
    def b64(b: bytes) -> bytes:
        return base64.urlsafe_b64encode(b).rstrip(b"=")

    signing_input = b64(json.dumps(header).encode()) + b"." + b64(payload)
    sig = hmac.new(HMAC_SECRET, signing_input, hashlib.sha256).digest()
    token = signing_input + b"." + b64(sig)
    nat, rf = _pair(jwks_json)
    assert _outcome(nat, token, NOW)[0] == _outcome(rf, token, NOW)[0]


def test_cache_returns_copies_and_rechecks_expiry(jwks_json: str) -> None:
    nat, _ = _pair(jwks_json)
    token = _sign(None, "HS256", {"exp": NOW + 10, "roles": ["a"]})
    first = nat.verify(token, NOW)
    first["injected"] = True
    assert nat.cache_len == 1
    assert nat.verify(token, NOW + 1) == {"exp": NOW + 10, "roles": ["a"]}
    with pytest.raises(native.ExpiredTokenError):
        nat.verify(token, NOW + 10)
    assert nat.cache_len == 0
    assert nat.verify(token, NOW + 9) == {"exp": NOW + 10, "roles": ["a"]}
    nat.clear_cache()
    assert nat.cache_len == 0


def test_required_exp_is_the_default(jwks_json: str) -> None:
    nat, rf = _pair(jwks_json)
    token = _sign(None, "HS256", {"sub": "forever"})
    assert _outcome(nat, token, NOW) == _outcome(rf, token, NOW) == ("missing_claim", None)
    lax = native.JwtVerifier(native.JwtKeySet.from_jwks(jwks_json), algorithms="HS256", require=[])
    assert lax.verify(token, NOW) == {"sub": "forever"}


def test_bad_key_material_is_a_key_error(tmp_path: Any) -> None:
    weak = rsa.generate_private_key(65537, 1024).public_key()
    weak_pem = weak.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for mod in (native, ref):
        with pytest.raises(mod.JwtKeyError, match="2048"):
            mod.JwtKeySet.from_pem(weak_pem)
        with pytest.raises(mod.JwtKeyError):
            mod.JwtKeySet.from_jwks("not json")
        with pytest.raises(mod.JwtKeyError):
            mod.JwtKeySet.from_jwks(
                '{"keys": [{"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB"}]}'
            )
        with pytest.raises(mod.JwtKeyError):
            mod.JwtKeySet.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
        with pytest.raises(mod.JwtKeyError):
            mod.JwtVerifier(mod.JwtKeySet.from_secret(b"k"), algorithms=["none"])
        with pytest.raises(mod.JwtKeyError):
            mod.JwtVerifier(mod.JwtKeySet.from_secret(b"k"), algorithms=["HS256"], leeway=-1)


def test_key_sets_combine(rsa_key: SigningKey) -> None:
    keys = native.JwtKeySet.from_secret(HMAC_SECRET, kid="hmac-1").union(
        native.JwtKeySet.from_pem(rsa_key.public_pem, kid="rsa-1", algorithm="RS256")
    )
    assert keys.kids == ["hmac-1", "rsa-1"] and len(keys) == 2
    v = native.JwtVerifier(keys, algorithms=["HS256", "RS256", "PS256"])
    assert v.verify(_sign(None, "HS256", {"exp": NOW + 1}), NOW)
    assert v.verify(_sign(rsa_key, "RS256", {"exp": NOW + 1}), NOW)
    # The RSA key was pinned to RS256.
    with pytest.raises(native.UnsupportedAlgorithmError):
        v.verify(_sign(rsa_key, "PS256", {"exp": NOW + 1}), NOW)
