"""IP rules: allow/deny CIDR lists for IPv4 and IPv6, and when X-Forwarded-For is
believed (only from trusted proxies, walked from the right)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from auth_helpers import sha
from gwtest import chat, http, http_json, minimal_yaml, running

from fastgw.auth.ip import IpRules, parse_ip
from fastgw.config import parse_config
from fastgw.errors import ConfigError


def test_allow_and_deny_lists_for_both_families() -> None:
    rules = IpRules(allow=["10.0.0.0/8", "2001:db8::/32"],
                    deny=["10.9.0.0/16", "2001:db8:bad::/48"])
    assert rules.refusal("10.1.2.3") is None
    assert rules.refusal("2001:db8:1::7") is None
    assert "ip_deny" in (rules.refusal("10.9.1.1") or "")
    assert "ip_deny" in (rules.refusal("2001:db8:bad::1") or "")
    assert "ip_allow" in (rules.refusal("192.168.1.1") or "")
    assert "ip_allow" in (rules.refusal("2001:db9::1") or "")
    assert rules.refusal("not-an-address") is not None  # an allow list fails closed
    assert rules.refusal("::ffff:10.1.2.3") is None  # IPv4-mapped IPv6 is the IPv4 address
    assert IpRules(deny=["10.0.0.0/8"]).refusal("not-an-address") is None


def test_deny_wins_over_allow() -> None:
    rules = IpRules(allow=["0.0.0.0/0", "::/0"], deny=["203.0.113.7/32"])
    assert rules.refusal("203.0.113.7") is not None
    assert rules.refusal("203.0.113.8") is None


def test_forwarded_for_is_walked_from_the_right_skipping_trusted_hops() -> None:
    rules = IpRules(trusted_proxies=["127.0.0.1/32", "10.0.0.0/8", "fd00::/8"])
    # client -> proxy 10.0.0.5 -> proxy 127.0.0.1 (the peer)
    assert rules.client_ip("127.0.0.1", b"198.51.100.4, 10.0.0.5") == "198.51.100.4"
    # The client wrote its own XFF entry to the left: never believed.
    assert rules.client_ip("127.0.0.1", b"6.6.6.6, 198.51.100.4, 10.0.0.5") == "198.51.100.4"
    assert rules.client_ip("127.0.0.1", b"2001:db8::9, fd00::1") == "2001:db8::9"
    # An untrusted peer's XFF is ignored.
    assert rules.client_ip("198.51.100.99", b"10.0.0.1") == "198.51.100.99"
    # Only trusted hops: the leftmost is as far as we can see.
    assert rules.client_ip("127.0.0.1", b"10.0.0.1, 10.0.0.2") == "10.0.0.1"
    assert rules.client_ip("127.0.0.1", None) == "127.0.0.1"
    assert IpRules().client_ip("127.0.0.1", b"1.2.3.4") == "127.0.0.1"


def test_addresses_with_ports_and_brackets_parse() -> None:
    assert str(parse_ip("[2001:db8::1]:443")) == "2001:db8::1"
    assert str(parse_ip("192.0.2.1:8080")) == "192.0.2.1"
    assert parse_ip("unknown") is None


def test_bad_cidrs_are_config_errors_with_paths() -> None:
    text = minimal_yaml(1, "auth: {ip_allow: [10.0.0.0/8, 300.1.1.1/8], ip_deny: [fe80::/200]}")
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    errors = dict(info.value.errors)
    assert "auth.ip_allow[1]" in errors and "auth.ip_deny[0]" in errors


def test_denied_peer_gets_403_on_every_endpoint_but_health() -> None:
    with running(lambda p: minimal_yaml(p, "auth: {ip_deny: [127.0.0.0/8]}")) as gw:
        status, doc = http_json(gw.port, "POST", "/v1/chat/completions", chat())
        assert status == 403
        assert doc["error"]["type"] == "permission_error"
        assert doc["error"]["code"] == "ip_not_allowed"
        assert http(gw.port, "GET", "/v1/models").status == 403
        assert http(gw.port, "GET", "/healthz").status == 200
        assert gw.mock_stats()["requests"] == 0


def test_ipv6_allow_list_through_a_trusted_proxy() -> None:
    def yaml_for(port: int) -> str:
        return minimal_yaml(port, "auth: {ip_allow: [2001:db8::/32, 192.0.2.0/24]}",
                            server=", trusted_proxies: [127.0.0.1/32]")

    with running(yaml_for) as gw:
        def status(xff: str | None) -> int:
            headers = {"x-forwarded-for": xff} if xff is not None else {}
            return http(gw.port, "POST", "/v1/chat/completions", chat(), headers).status

        assert status("2001:db8::5") == 200
        assert status("192.0.2.44") == 200
        assert status("2001:db9::5") == 403
        assert status("192.0.2.44, 2001:db9::5") == 403  # the rightmost untrusted hop counts
        assert status("2001:db8::5, 203.0.113.1") == 403  # a spoofed left entry does not help
        assert status(None) == 403  # the proxy itself (127.0.0.1) is not allowed


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    def yaml_for(port: int) -> str:
        return minimal_yaml(port, "auth: {ip_allow: [2001:db8::/32]}",
                            server=", trusted_proxies: [10.0.0.0/8]")

    with running(yaml_for) as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", chat(),
                 {"x-forwarded-for": "2001:db8::5"})
        assert r.status == 403
        assert b"127.0.0.1" in r.body


def test_ip_rules_apply_before_the_key_check() -> None:
    key = "sk-ip-test"

    def yaml_for(port: int) -> str:
        return minimal_yaml(port, f'auth: {{ip_allow: [192.0.2.0/24], keys: '
                                  f'[{{name: k, key_sha256: "{sha(key)}"}}]}}')

    with running(yaml_for) as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", chat(),
                 {"authorization": f"Bearer {key}"})
        assert r.status == 403
        r = http(gw.port, "POST", "/v1/chat/completions", chat())
        assert r.status == 403


@pytest.mark.parametrize(("trusted", "logged"), [("127.0.0.1/32", "192.0.2.44"),
                                                 ("10.0.0.0/8", "127.0.0.1")])
def test_access_log_names_the_client_forwarded_by_a_trusted_proxy_only(
        tmp_path: Path, trusted: str, logged: str) -> None:
    log = tmp_path / "access.log"

    def yaml_for(port: int) -> str:
        return minimal_yaml(port, "auth: {ip_allow: [0.0.0.0/0]}",
                            server=f", trusted_proxies: [{trusted}]").replace(
            "access_log: off", f"access_log: {log}")

    with running(yaml_for) as gw:
        r = http(gw.port, "POST", "/v1/chat/completions", chat(),
                 {"x-forwarded-for": "192.0.2.44"})
        assert r.status == 200
    lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
    assert [line["client_ip"] for line in lines] == [logged]
