"""IP rules: ``auth.ip_allow`` / ``auth.ip_deny`` CIDR lists (IPv4 and IPv6),
and which address is the client's when the gateway sits behind proxies.

``X-Forwarded-For`` is believed only when the connection comes from one of
``server.trusted_proxies``; then the list is walked from the right (the hop
nearest the gateway) and every trusted hop is skipped: the first untrusted
address is the client. Entries left of it were written by the client and are
never believed. Verdicts are cached per address, so a request costs a dict
lookup, not an address parse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_CACHE_MAX = 8192


def parse_ip(text: str) -> Address | None:
    """An address from a peer name or an XFF entry (``[v6]:port``, ``v4:port`` accepted);
    IPv4-mapped IPv6 addresses become IPv4. None when it is not an address."""
    text = text.strip()
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        if text.startswith("["):
            host = text[1:].partition("]")[0]
        elif text.count(":") == 1:
            host = text.partition(":")[0]
        else:
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def _within(ip: Address, nets: tuple[Network, ...]) -> bool:
    return any(ip.version == n.version and ip in n for n in nets)


class IpRules:
    """Decides the client address and whether it may call."""

    __slots__ = ("_allow", "_deny", "_trusted", "_trusted_cache", "_verdicts", "trusts_proxies")

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = (),
                 trusted_proxies: Iterable[str] = ()) -> None:
        self._allow = networks(allow)
        self._deny = networks(deny)
        self._trusted = networks(trusted_proxies)
        self.trusts_proxies = bool(self._trusted)
        self._verdicts: dict[str, str | None] = {}
        self._trusted_cache: dict[str, bool] = {}

    def is_trusted(self, addr: str) -> bool:
        t = self._trusted_cache.get(addr)
        if t is None:
            ip = parse_ip(addr)
            t = ip is not None and _within(ip, self._trusted)
            if len(self._trusted_cache) >= _CACHE_MAX:
                self._trusted_cache.clear()
            self._trusted_cache[addr] = t
        return t

    def client_ip(self, peer: str, xff: bytes | None) -> str:
        """The client's address: ``peer``, or from XFF when ``peer`` is a trusted proxy."""
        if xff is None or not self._trusted or not self.is_trusted(peer):
            return peer
        hops = xff.decode("latin-1").split(",")
        for hop in reversed(hops):
            hop = hop.strip()
            if not hop:
                continue
            if not self.is_trusted(hop):
                return hop
        # Every hop is a trusted proxy: the leftmost one is as far as we can see.
        first = hops[0].strip()
        return first or peer

    def refusal(self, addr: str) -> str | None:
        """None when ``addr`` may call, else why not (for the 403 message)."""
        try:
            return self._verdicts[addr]
        except KeyError:
            pass
        verdict = self._judge(addr)
        if len(self._verdicts) >= _CACHE_MAX:
            self._verdicts.clear()
        self._verdicts[addr] = verdict
        return verdict

    def _judge(self, addr: str) -> str | None:
        ip = parse_ip(addr)
        if ip is None:
            return (f"the client address {addr!r} could not be read, and this gateway "
                    "only admits listed networks") if self._allow else None
        if _within(ip, self._deny):
            return f"requests from {ip} are not allowed (auth.ip_deny)"
        if self._allow and not _within(ip, self._allow):
            return f"requests from {ip} are not allowed (not in auth.ip_allow)"
        return None
