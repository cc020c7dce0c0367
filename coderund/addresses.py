"""Network addresses: which a callback may reach (one policy, used at submit and at every delivery),
and which network a client is counted by (login limits).

Pure rules, no I/O. An address is allowed when it is global unicast; an IPv6 address that carries an
IPv4 address (mapped, compatible, translated, NAT64, 6to4) is judged by that IPv4 address too, since
a network that routes those forms reaches the IPv4 host. Forms whose embedded address cannot be
judged (Teredo, local-use NAT64) and deprecated site-local addresses are refused.
"""
from __future__ import annotations

import ipaddress

NAT64 = ipaddress.ip_network("64:ff9b::/96")
LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")
TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")  # RFC 2765's IPv4-translated
COMPATIBLE = ipaddress.ip_network("::/96")  # the deprecated IPv4-compatible form (:: and ::1 among them)
# Global by some Python versions' tables, but never a destination of ours: IETF protocol assignments,
# which hold a cloud's metadata service (Oracle's 192.0.0.192). The others' (169.254.169.254,
# 100.100.100.200, fd00:ec2::254) are link-local, shared or unique-local: refused as such.
REFUSED = (ipaddress.ip_network("192.0.0.0/24"),)


def _embedded(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in (NAT64, TRANSLATED, COMPATIBLE)):
        return ipaddress.IPv4Address(ip.packed[-4:])
    return None


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def parse_networks(text: str) -> Networks:
    """An operator's comma-separated CIDR list ("10.0.0.0/8,fd00::/8"); ValueError naming a bad one."""
    return tuple(ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip())


def is_allowed(address: str, also: Networks = ()) -> bool:
    """True for a global unicast address that embeds nothing but global unicast, or for an address
    in one of the networks an operator allowed (also), or an IPv6 form that embeds one."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if any(candidate in net for net in also for candidate in (ip, _embedded_any(ip)) if candidate is not None):
        return True
    if ip.version == 6:
        if ip.teredo is not None or ip in LOCAL_NAT64 or ip.is_site_local:
            return False
        embedded = _embedded(ip)
        if embedded is not None and not is_allowed(str(embedded)):
            return False
        if embedded is not None:
            return True  # the embedded IPv4 address decides (Python calls some of these forms reserved)
    return ip.is_global and not ip.is_multicast and not any(ip in net for net in REFUSED)


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _embedded_any(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    return _embedded(ip) if isinstance(ip, ipaddress.IPv6Address) else None


def client_network(address: str) -> str:
    """What a client is counted by: its IPv4 address, or its IPv6 address's /64, the least a host is
    given (counted one address at a time, one IPv6 host would count as 2^64 clients). An IPv4 client of
    a dual-stack socket (::ffff:a.b.c.d) counts as its IPv4 address; anything else (a unix socket's
    empty name) as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def ascii_host(host: str) -> str | None:
    """The host as DNS names it (IDNA), or None when it cannot be one: empty labels, a label over
    63 characters, characters IDNA refuses."""
    if not host:
        return None
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    try:
        encoded = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    labels = encoded.rstrip(".").split(".")
    return encoded if all(0 < len(label) <= 63 for label in labels) and len(encoded) <= 253 else None
