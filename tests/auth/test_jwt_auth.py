"""JWT / OIDC end to end: tokens made by PyJWT (and by hand for attacks), keys from a
secret, a PEM public key, or a JWKS served by a test IdP that rotates keys, breaks
and goes away."""

from __future__ import annotations

import concurrent.futures
import json
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import openai
import pytest
from auth_helpers import EcKey, JwksServer, RsaKey, b64, claims, raw_token, sha
from gwtest import chat, http, http_json, minimal_yaml, running, wait_for

SECRET = "hs-secret-for-tests-0123456789abcdef"


def hs_yaml(port: int, extra: str = "") -> str:
    return minimal_yaml(port, f"""
auth:
  jwt: {{issuer: "https://idp.test/", audience: fastgw, algorithms: [HS256],
         secret: "{SECRET}", leeway_s: 30}}
{extra}""")


def jwks_yaml(url: str, *, cache_s: float = 300, min_refresh_s: float = 30,
              extra: str = "") -> Callable[[int], str]:
    def yaml_for(port: int) -> str:
        return minimal_yaml(port, f"""
auth:
  jwt:
    issuer: "https://idp.test/"
    audience: fastgw
    algorithms: [ES256, RS256]
    jwks_url: "{url}"
    jwks_cache_s: {cache_s}
    jwks_min_refresh_s: {min_refresh_s}
    claims: {{subject: sub, models: fastgw_models, tier: tier}}
{extra}""")
    return yaml_for


def hs(**extra: Any) -> str:
    return jwt.encode(claims(**extra), SECRET, algorithm="HS256")


def call(port: int, token: str, model: str = "gpt-test") -> tuple[int, Any]:
    return http_json(port, "POST", "/v1/chat/completions", chat(model),
                     {"authorization": f"Bearer {token}"})


def test_valid_hs256_token_passes_and_names_the_caller() -> None:
    def yaml(port: int) -> str:
        # Per-key metric labels are opt-in.
        return hs_yaml(port).replace("observability: {access_log: off}",
                                     "observability: {access_log: off, key_labels: true}")

    from fastgw import metrics

    with running(yaml) as gw:
        # Counters are process-wide: the caller's spend is what this request adds.
        before = gw.metric(metrics.COST, "gpt-test", "svc-search")
        status, doc = call(gw.port, hs(sub="svc-search"))
        assert status == 200, doc
        assert gw.metric(metrics.COST, "gpt-test", "svc-search") - before > 0
        assert 'key="svc-search"' in http(gw.port, "GET", "/metrics").body.decode()
        status, doc = http_json(gw.port, "GET", "/v1/models",
                                headers={"authorization": f"Bearer {hs()}"})
        assert status == 200 and {m["id"] for m in doc["data"]} == {"gpt-test", "same-name"}


REFUSALS = [
    ("expired", lambda: hs(exp=int(time.time()) - 120), "token_expired"),
    ("not yet valid", lambda: hs(nbf=int(time.time()) + 120), "token_not_yet_valid"),
    ("issued in the future", lambda: hs(iat=int(time.time()) + 600), "token_not_yet_valid"),
    ("wrong issuer", lambda: hs(iss="https://evil.test/"), "token_bad_issuer"),
    ("wrong audience", lambda: hs(aud="someone-else"), "token_bad_audience"),
    ("no audience", lambda: hs(aud=None), "token_missing_claim"),
    ("bad signature", lambda: jwt.encode(claims(), "another-secret-of-32-bytes-or-more!!",
                                         algorithm="HS256"), "token_bad_signature"),
    ("alg none", lambda: raw_token({"alg": "none", "typ": "JWT"}, claims(), None),
     "token_algorithm_not_allowed"),
    ("alg not allowed", lambda: jwt.encode(claims(), SECRET + "x" * 40, algorithm="HS512"),
     "token_algorithm_not_allowed"),
    ("no exp", lambda: hs(exp=None), "token_missing_claim"),
    ("no subject", lambda: hs(sub=None), "token_missing_claim"),
    ("tampered payload", lambda: _tampered(), "token_bad_signature"),
    ("garbage", lambda: "eyJhbGciOi.not-base64!.x", "invalid_token"),
]


def _tampered() -> str:
    head, _, sig = hs(sub="alice").split(".")
    payload = b64(json.dumps(claims(sub="root")).encode())
    return f"{head}.{payload}.{sig}"


@pytest.mark.parametrize(("case", "make", "code"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_every_refusal_is_a_401_with_its_reason(case: str, make: Callable[[], str],
                                                code: str) -> None:
    with running(hs_yaml) as gw:
        status, doc = call(gw.port, make())
        assert status == 401, (case, doc)
        assert doc["error"]["type"] == "authentication_error"
        assert doc["error"]["code"] == code, doc
        assert "token was refused" in doc["error"]["message"]
        assert gw.mock_stats()["requests"] == 0


def test_leeway_accepts_small_clock_skew() -> None:
    with running(hs_yaml) as gw:
        now = int(time.time())
        assert call(gw.port, hs(exp=now - 10))[0] == 200
        assert call(gw.port, hs(nbf=now + 10))[0] == 200


def test_rs256_public_key_and_algorithm_confusion() -> None:
    key, other = RsaKey(), RsaKey()
    pem = key.public_pem()

    def yaml_for(port: int) -> str:
        return minimal_yaml(port, "auth:\n  jwt:\n    algorithms: [RS256]\n"
                                  "    issuer: \"https://idp.test/\"\n    audience: fastgw\n"
                                  "    public_key_pem: |\n" + textwrap.indent(pem, "      "))

    with running(yaml_for) as gw:
        assert call(gw.port, key.token())[0] == 200
        status, doc = call(gw.port, other.token())
        assert (status, doc["error"]["code"]) == (401, "token_bad_signature")
        # The classic attack: HS256 with the *public* key as the HMAC secret.
        forged = raw_token({"alg": "HS256", "typ": "JWT"}, claims(sub="root"), pem.encode())
        status, doc = call(gw.port, forged)
        assert (status, doc["error"]["code"]) == (401, "token_algorithm_not_allowed")


def test_hmac_with_a_public_key_is_refused_by_check_config() -> None:
    from fastgw.config import parse_config
    from fastgw.errors import ConfigError

    text = minimal_yaml(1, 'auth: {jwt: {algorithms: [RS256, HS256], jwks_url: '
                           '"https://idp.test/jwks"}}')
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert "algorithm confusion" in dict(info.value.errors)["auth.jwt.algorithms"]


def test_jwks_claims_map_models_and_tier() -> None:
    key = EcKey()
    extra = "limits:\n  - {match: {tier: free}, rpm: 2}\n"
    with JwksServer([key.jwk()]) as idp, running(jwks_yaml(idp.url, extra=extra)) as gw:
        paid = key.token(sub="bob", fastgw_models=["gpt-*"], tier="pro")
        assert call(gw.port, paid)[0] == 200
        status, doc = call(gw.port, paid, "same-name")
        assert status == 403 and doc["error"]["code"] == "model_not_allowed"
        status, doc = http_json(gw.port, "GET", "/v1/models",
                                headers={"authorization": f"Bearer {paid}"})
        assert [m["id"] for m in doc["data"]] == ["gpt-test"]
        spaced = key.token(sub="carol", fastgw_models="same-name gpt-test")
        assert call(gw.port, spaced, "same-name")[0] == 200
        none = key.token(sub="dave")
        assert call(gw.port, none)[0] == 403
        free = key.token(sub="erin", fastgw_models=["*"], tier="free")
        assert [call(gw.port, free)[0] for _ in range(3)] == [200, 200, 429]
        for _ in range(3):  # the pro caller is not in the free tier's rule
            assert call(gw.port, paid)[0] == 200
        assert idp.count() == 1


def test_jwks_key_rotation_by_kid() -> None:
    k1, k2 = EcKey("k1"), EcKey("k2")
    with JwksServer([k1.jwk()]) as idp, \
            running(jwks_yaml(idp.url, cache_s=1.0, min_refresh_s=0.2)) as gw:
        t1 = k1.token(fastgw_models=["*"])
        assert call(gw.port, t1)[0] == 200
        assert idp.count() == 1
        # The IdP starts signing with k2 and publishes both (overlap).
        idp.set_keys([k1.jwk(), k2.jwk()])
        time.sleep(0.25)
        t2 = k2.token(fastgw_models=["*"])
        assert call(gw.port, t2)[0] == 200  # unknown kid -> one refresh -> known
        assert idp.count() == 2
        assert call(gw.port, t1)[0] == 200
        # k1 is retired: once the cache is refreshed, k1 tokens fail.
        idp.set_keys([k2.jwk()])
        time.sleep(1.1)
        assert call(gw.port, t2)[0] == 200  # stale keys still verify; refresh in background
        assert wait_for(lambda: idp.count() >= 3, timeout=3)
        retired = k1.token(fastgw_models=["*"])
        # The refreshed keys are installed just after the fetch.
        assert wait_for(lambda: call(gw.port, retired)[0] == 401, timeout=5)
        status, doc = call(gw.port, retired)
        assert status == 401 and doc["error"]["code"] == "token_key_unknown"
        assert call(gw.port, t2)[0] == 200


def test_a_flood_of_unknown_kids_cannot_hammer_the_idp() -> None:
    key = EcKey("real")
    with JwksServer([key.jwk()]) as idp, running(jwks_yaml(idp.url, min_refresh_s=30)) as gw:
        assert call(gw.port, key.token(fastgw_models=["*"]))[0] == 200
        before = idp.count()
        rogue = EcKey()

        def forged(_: int) -> int:
            token = jwt.encode(claims(fastgw_models=["*"]), rogue.private, algorithm="ES256",
                               headers={"kid": uuid.uuid4().hex})
            return call(gw.port, token)[0]

        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(forged, range(60)))
        assert statuses == [401] * 60
        assert idp.count() - before <= 1
        assert call(gw.port, key.token(fastgw_models=["*"]))[0] == 200


def test_idp_down_keeps_serving_from_the_cached_keys() -> None:
    key = EcKey("k")
    idp = JwksServer([key.jwk()])
    with running(jwks_yaml(idp.url, cache_s=0.3, min_refresh_s=0.1)) as gw:
        token = key.token(fastgw_models=["*"])
        assert call(gw.port, token)[0] == 200
        idp.stop()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert call(gw.port, token)[0] == 200
            time.sleep(0.05)
        other = EcKey("new").token(fastgw_models=["*"])
        status, doc = call(gw.port, other)
        assert status == 401 and doc["error"]["code"] == "token_key_unknown"


def test_jwks_unreachable_at_start_is_503_then_recovers() -> None:
    key = EcKey("k")
    with JwksServer([key.jwk()]) as idp:
        idp.status = 500
        with running(jwks_yaml(idp.url, min_refresh_s=0.3)) as gw:
            token = key.token(fastgw_models=["*"])
            r = http(gw.port, "POST", "/v1/chat/completions", chat(),
                     {"authorization": f"Bearer {token}"})
            assert r.status == 503, r.body
            assert b"jwks_unavailable" in r.body
            assert int(r.headers["retry-after"]) >= 1
            idp.status = 200
            assert wait_for(lambda: call(gw.port, token)[0] == 200, timeout=3, interval=0.1)


def test_api_keys_and_tokens_together_and_the_openai_sdk() -> None:
    key = "sk-both-1234"

    def yaml_for(port: int) -> str:
        return hs_yaml(port).replace(
            "auth:\n", f'auth:\n  keys: [{{name: svc, key_sha256: "{sha(key)}"}}]\n', 1)

    with running(yaml_for) as gw:
        assert call(gw.port, key)[0] == 200
        assert call(gw.port, hs())[0] == 200
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key=hs(), max_retries=0)
        reply = client.chat.completions.create(model="gpt-test",
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        expired = openai.OpenAI(base_url=gw.url + "/v1",
                                api_key=hs(exp=int(time.time()) - 600), max_retries=0)
        with pytest.raises(openai.AuthenticationError) as info:
            expired.chat.completions.create(model="gpt-test",
                                            messages=[{"role": "user", "content": "hi"}])
        assert "expired" in str(info.value)


def test_tokens_with_cached_keys_need_no_task_and_a_new_kid_waits_for_the_fetch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fastgw.pipeline.runner import Proxy

    tasks: list[str] = []
    proceed = Proxy._proceed

    def counted(self: Proxy, *args: Any) -> Any:
        tasks.append("task")
        return proceed(self, *args)

    monkeypatch.setattr(Proxy, "_proceed", counted)
    k1, k2 = EcKey("k1"), EcKey("k2")
    with JwksServer([k1.jwk(), k2.jwk()]) as idp, \
            running(jwks_yaml(idp.url, min_refresh_s=0.0)) as gw:
        t1 = k1.token(fastgw_models=["*"])
        assert call(gw.port, t1)[0] == 200  # warms the upstream pool
        tasks.clear()
        assert [call(gw.port, t1)[0] for _ in range(5)] == [200] * 5
        assert tasks == []  # verified from the cached keys: the direct path
        fetched = idp.count()
        k3 = EcKey("k3")
        idp.set_keys([k1.jwk(), k2.jwk(), k3.jwk()])
        assert call(gw.port, k3.token(fastgw_models=["*"]))[0] == 200
        assert tasks == ["task"] and idp.count() == fetched + 1  # waited for the fetch
