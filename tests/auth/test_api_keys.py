"""API keys end to end: sha256-configured keys, both headers, model allow-lists,
/v1/models per caller, the OpenAI SDK's typed errors, reloads, the admin key."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import openai
import orjson
import pytest
from auth_helpers import sha
from gwtest import chat, http, http_json, minimal_yaml, running

KEY_A = "sk-team-a-4f1c2b9e"
KEY_B = "sk-team-b-77aa01cc"
ADMIN = "admin-key-5e5e"

KEYS = f"""
auth:
  keys:
    - {{name: team-a, key_sha256: "{sha(KEY_A)}", models: ["gpt-*"],
       metadata: {{owner: search}}}}
    - {{name: team-b, key_sha256: "{sha(KEY_B)}", models: [same-name]}}
"""


def keyed(port: int) -> str:
    return minimal_yaml(port, KEYS)


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_missing_key_is_401_with_a_message_that_says_how_to_send_one() -> None:
    with running(keyed) as gw:
        status, doc = http_json(gw.port, "POST", "/v1/chat/completions", chat())
        assert status == 401
        err = doc["error"]
        assert err["type"] == "authentication_error"
        assert "Authorization: Bearer" in err["message"]
        assert gw.mock_stats()["requests"] == 0


def test_unknown_key_and_other_schemes_are_401() -> None:
    with running(keyed) as gw:
        status, doc = http_json(gw.port, "POST", "/v1/chat/completions", chat(),
                                bearer("sk-not-configured"))
        assert status == 401
        assert doc["error"]["code"] == "invalid_api_key"
        assert "not valid" in doc["error"]["message"]
        # The hash is configured, not the key: presenting the hash itself must fail.
        assert http(gw.port, "POST", "/v1/chat/completions", chat(),
                    bearer(sha(KEY_A))).status == 401
        assert http(gw.port, "POST", "/v1/chat/completions", chat(),
                    {"authorization": f"Basic {KEY_A}"}).status == 401
        assert http(gw.port, "POST", "/v1/chat/completions", chat(),
                    {"authorization": "Bearer "}).status == 401


def test_bearer_and_x_api_key_both_authenticate() -> None:
    with running(keyed) as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", chat(), bearer(KEY_A))
        assert r.status == 200, r.body
        r = http(gw.port, "POST", "/v1/chat/completions", chat(), {"x-api-key": KEY_A})
        assert r.status == 200, r.body
        r = http(gw.port, "POST", "/v1/chat/completions", chat(),
                 {"authorization": f"bearer   {KEY_A}  "})
        assert r.status == 200, r.body


def test_client_key_is_never_forwarded_upstream() -> None:
    with running(keyed) as gw:
        status, doc = http_json(gw.port, "POST", "/v1/chat/completions", chat(),
                                {**bearer(KEY_A), "x-mock-echo": "1"})
        assert status == 200
        seen = doc["echo"]["headers"]
        assert seen["authorization"] == "Bearer sk-provider-secret"
        assert KEY_A not in orjson.dumps(doc["echo"]).decode()


def test_model_outside_the_allow_list_is_403() -> None:
    with running(keyed) as gw:
        status, doc = http_json(gw.port, "POST", "/v1/chat/completions", chat("same-name"),
                                bearer(KEY_A))
        assert status == 403
        assert doc["error"]["type"] == "permission_error"
        assert doc["error"]["code"] == "model_not_allowed"
        assert "team-a" in doc["error"]["message"]
        assert http(gw.port, "POST", "/v1/chat/completions", chat("gpt-test"),
                    bearer(KEY_B)).status == 403
        assert http(gw.port, "POST", "/v1/chat/completions", chat("same-name"),
                    bearer(KEY_B)).status == 200
        assert gw.mock_stats()["requests"] == 1


def test_unknown_model_outside_the_allow_list_is_403_not_404() -> None:
    # A caller learns nothing about models it may not use: whether they exist or not.
    with running(keyed) as gw:
        status, doc = http_json(gw.port, "POST", "/v1/chat/completions", chat("no-such-model"),
                                bearer(KEY_A))
        assert status == 403, doc
        status, doc = http_json(gw.port, "POST", "/v1/chat/completions", chat("gpt-nope"),
                                bearer(KEY_A))
        assert status == 404, doc  # inside its allow-list: plainly unknown


def test_models_endpoint_lists_only_the_callers_models() -> None:
    with running(keyed) as gw:
        status, doc = http_json(gw.port, "GET", "/v1/models")
        assert status == 401
        status, doc = http_json(gw.port, "GET", "/v1/models", headers=bearer("sk-wrong"))
        assert status == 401
        status, doc = http_json(gw.port, "GET", "/v1/models", headers=bearer(KEY_A))
        assert status == 200
        assert [m["id"] for m in doc["data"]] == ["gpt-test"]
        status, doc = http_json(gw.port, "GET", "/v1/models", headers={"x-api-key": KEY_B})
        assert [m["id"] for m in doc["data"]] == ["same-name"]
        assert http(gw.port, "GET", "/v1/models/gpt-test", headers=bearer(KEY_A)).status == 200
        assert http(gw.port, "GET", "/v1/models/same-name", headers=bearer(KEY_A)).status == 404
        assert http(gw.port, "GET", "/v1/models/gpt-test").status == 401


def test_open_gateway_lists_every_model_without_credentials() -> None:
    with running() as gw:
        status, doc = http_json(gw.port, "GET", "/v1/models")
        assert status == 200
        assert {m["id"] for m in doc["data"]} == {"gpt-test", "same-name"}
        assert http(gw.port, "POST", "/v1/chat/completions", chat()).status == 200


def test_openai_sdk_raises_typed_errors() -> None:
    with running(keyed) as gw:
        good = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEY_A, max_retries=0)
        reply = good.chat.completions.create(model="gpt-test",
                                             messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        assert [m.id for m in good.models.list()] == ["gpt-test"]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            good.chat.completions.create(model="same-name",
                                         messages=[{"role": "user", "content": "hi"}])
        assert denied.value.status_code == 403
        bad = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as unauth:
            bad.chat.completions.create(model="gpt-test",
                                        messages=[{"role": "user", "content": "hi"}])
        assert unauth.value.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_key_name_reaches_the_access_log_but_never_the_key(tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    def yaml_for(port: int) -> str:
        return minimal_yaml(port, KEYS).replace("observability: {access_log: off}",
                                                f"observability: {{access_log: {log}}}")

    with running(yaml_for) as gw:
        assert http(gw.port, "POST", "/v1/chat/completions", chat(), bearer(KEY_A)).status == 200
        assert http(gw.port, "POST", "/v1/chat/completions", chat(),
                    bearer("sk-leaked-guess")).status == 401
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(log.read_text().splitlines()) < 2:
        time.sleep(0.02)
    lines = [orjson.loads(x) for x in log.read_text().splitlines()]
    assert lines[0]["key"] == "team-a"
    assert lines[1]["status"] == 401 and lines[1]["key"] is None
    text = log.read_text()
    assert KEY_A not in text and "sk-leaked-guess" not in text


def test_reload_adds_and_removes_keys_and_admin_key_still_guards_admin(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.yaml"
    admin = f"admin: {{key_sha256: {sha(ADMIN)}}}\n"

    def yaml_for(port: int) -> str:
        text = minimal_yaml(port, KEYS + admin)
        cfg.write_text(text)
        return text

    with running(yaml_for) as gw:
        gw.app.config = dataclasses.replace(gw.app.config, source=str(cfg))
        # The admin key is not an API key, and API keys do not open admin endpoints.
        assert http(gw.port, "POST", "/v1/chat/completions", chat(), bearer(ADMIN)).status == 401
        assert http(gw.port, "POST", "/admin/reload", headers=bearer(KEY_A)).status == 401
        assert http(gw.port, "GET", "/metrics", headers=bearer(KEY_A)).status == 401
        new_key = "sk-team-c-0000"
        text = cfg.read_text().replace(
            f'- {{name: team-b, key_sha256: "{sha(KEY_B)}", models: [same-name]}}',
            f'- {{name: team-c, key_sha256: "{sha(new_key)}", models: ["*"]}}')
        cfg.write_text(text)
        r = http(gw.port, "POST", "/admin/reload", headers=bearer(ADMIN))
        assert r.status == 200, r.body
        assert http(gw.port, "POST", "/v1/chat/completions", chat("same-name"),
                    bearer(new_key)).status == 200
        assert http(gw.port, "POST", "/v1/chat/completions", chat("same-name"),
                    bearer(KEY_B)).status == 401
        assert http(gw.port, "POST", "/v1/chat/completions", chat(), bearer(KEY_A)).status == 200
        # A file with a bad key hash is refused; the old keys keep working.
        cfg.write_text(text.replace(sha(new_key), "not-a-hash"))
        r = http(gw.port, "POST", "/admin/reload", headers=bearer(ADMIN))
        assert r.status == 400
        assert b"auth.keys[1].key_sha256" in r.body
        assert http(gw.port, "POST", "/v1/chat/completions", chat("same-name"),
                    bearer(new_key)).status == 200
