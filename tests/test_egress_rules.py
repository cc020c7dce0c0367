"""The pure rules of egress: network policies, their clamping to the operator's widest, the address
policy with the operator's allowed networks, and the proxy's reading of a request."""
from __future__ import annotations

import pytest

from coderund.addresses import is_allowed, parse_networks
from coderund.admission import Ceiling, admit_network
from coderund.config import ConfigError, load
from coderund.errors import ValidationFailed
from coderund.network import NetworkPolicy, clamp, normal_name, parse_policy
from coderund.sandbox.egress import Refused, parse_request

CEILING = Ceiling(pids_limit=128, disk_mb=64, max_case_ms=320_000, network=NetworkPolicy(("*",)))


def test_policies_parse_and_match() -> None:
    policy = parse_policy({"allow": ["PyPI.org.", "*.githubusercontent.com", "pypi.org"]})
    assert policy.allow == ("pypi.org", "*.githubusercontent.com")
    assert policy.allows("pypi.org") and policy.allows("PYPI.ORG.")
    assert policy.allows("raw.githubusercontent.com") and policy.allows("a.b.githubusercontent.com")
    assert not policy.allows("githubusercontent.com")  # a wildcard is for names under the domain
    assert not policy.allows("files.pythonhosted.org") and not policy.allows("evilpypi.org")
    assert not policy.allows("pypi.org.evil.com")
    assert parse_policy({"allow": ["*"]}).allows("anything.example")


@pytest.mark.parametrize("value", [
    None, [], {"allow": "pypi.org"}, {"allow": ["pypi.org"], "deny": []}, {"allow": [1]}, {"allow": ["10.0.0.1"]},
    {"allow": ["[::1]"]}, {"allow": ["a..b"]}, {"allow": ["*.*.com"]}, {"allow": ["pypi.org:443"]},
    {"allow": ["http://pypi.org"]}, {"allow": ["x" * 64 + ".com"]}, {"allow": [f"h{i}.com" for i in range(65)]},
    {"allow": ["-a.com"]}, {"allow": ["*"  + "a.com"]}, {"allow": ["127.1"]},
])
def test_a_malformed_policy_is_refused_naming_network(value) -> None:
    with pytest.raises(ValidationFailed, match="'network"):
        parse_policy(value)


def test_a_policy_is_clamped_to_the_operators_widest() -> None:
    widest = NetworkPolicy(("pypi.org", "*.pythonhosted.org"))
    assert clamp(NetworkPolicy(("*",)), widest).allow == widest.allow  # the widest request gets the widest
    assert clamp(NetworkPolicy(("files.pythonhosted.org", "pypi.org")), widest).allow == ("files.pythonhosted.org", "pypi.org")
    assert clamp(NetworkPolicy(("*.org",)), widest).allow == widest.allow
    with pytest.raises(ValidationFailed, match=r"'network.allow\[1\]' 'github.com' is outside"):
        clamp(NetworkPolicy(("pypi.org", "github.com")), widest)
    with pytest.raises(ValidationFailed, match="egress is off"):
        admit_network(NetworkPolicy(("pypi.org",)), Ceiling(pids_limit=1, disk_mb=1, max_case_ms=1))
    assert admit_network(None, Ceiling(pids_limit=1, disk_mb=1, max_case_ms=1)) is None
    assert admit_network(NetworkPolicy(("pypi.org",)), CEILING) == NetworkPolicy(("pypi.org",))


@pytest.mark.parametrize("address", [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "100.100.100.200",
    "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fd00:ec2::254", "fc00::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1",
    "2001::1", "64:ff9b:1::1", "fec0::1", "198.18.0.1", "192.0.0.192",
])
def test_non_global_addresses_are_refused(address) -> None:
    assert not is_allowed(address)


def test_an_operators_allowed_network_is_reachable_in_every_form() -> None:
    mirror = parse_networks("127.0.0.2/32, fd12::/16")
    for address in ("127.0.0.2", "::ffff:127.0.0.2", "64:ff9b::7f00:2", "fd12::5"):
        assert is_allowed(address, mirror), address
    for address in ("127.0.0.1", "10.0.0.1", "::1", "fd13::1"):
        assert not is_allowed(address, mirror), address
    assert is_allowed("8.8.8.8", mirror) and is_allowed("2606:4700:4700::1111")


def test_the_egress_settings_are_checked() -> None:
    ok = load({"egress": "on", "egress_hosts": "pypi.test=127.0.0.1,Mirror.Test.=::1", "egress_allow_private": "127.0.0.0/8",
               "egress_max": "pypi.org,*.test"}, environ={})
    assert ok.egress_host_table == {"pypi.test": "127.0.0.1", "mirror.test": "::1"}
    assert ok.egress_widest == NetworkPolicy(("pypi.org", "*.test"))
    assert load({}, environ={}).egress_widest is None
    for flags in ({"egress": "on", "cache_dir": "/" + "c" * 80}, {"egress_hosts": "pypi.test"}, {"egress_hosts": "pypi.test=nowhere"}, {"egress_allow_private": "10.0.0.0/40"},
                  {"egress_max": "10.0.0.1"}, {"egress_max_mb": 0}):
        with pytest.raises(ConfigError):
            load(flags, environ={})


def test_only_names_are_names() -> None:
    for literal in ("127.0.0.1", "[::1]", "::1", "0x7f.1", "2130706433", "1.2.3.4.", "a b", ""):
        assert normal_name(literal) is None, literal
    assert normal_name("Files.PythonHosted.org.") == "files.pythonhosted.org"


def test_a_tunnel_and_a_plain_request_are_read() -> None:
    ask = parse_request(b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n")
    assert (ask.host, ask.port, ask.tunnel) == ("pypi.org", 443, True)
    ask = parse_request(b"POST http://Example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\n"
                        b"Proxy-Authorization: secret\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\nContent-Length: 5\r\n"
                        b"Accept: */*\r\n\r\n")
    assert (ask.host, ask.port, ask.tunnel, ask.body) == ("Example.com", 8080, False, 5)
    assert ask.head == (b"POST /a/b?c=d HTTP/1.1\r\nHost: Example.com:8080\r\nContent-Length: 5\r\nAccept: */*\r\n"
                        b"Connection: close\r\n\r\n")
    assert parse_request(b"GET http://example.com HTTP/1.0\r\n\r\n").head.startswith(b"GET / HTTP/1.0\r\nHost: example.com\r\n")


@pytest.mark.parametrize("head, status", [
    (b"GET http://user:pw@example.com/ HTTP/1.1\r\n\r\n", 400),  # userinfo
    (b"CONNECT user@example.com:443 HTTP/1.1\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nHost: internal.example\r\n\r\n", 400),  # a Host header of another host
    (b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nHost: other\r\n\r\n", 400),
    (b"GET /relative HTTP/1.1\r\nHost: example.com\r\n\r\n", 400),  # not a proxy request
    (b"GET https://example.com/ HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT example.com HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT example.com:99999 HTTP/1.1\r\n\r\n", 400),
    (b"POST http://example.com/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\n folded\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/2\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nX: a\nHost: internal\r\n\r\n", 400),  # a bare LF, read as a line end upstream
    (b"GET http://example.com/ HTTP/1.1\r\nX: a\rTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET http://example.com/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400),
    (b"CONNECT example.com:\xb2 HTTP/1.1\r\n\r\n", 400),  # a digit to str.isdigit, not to int()
    (b"GET http://example.com:\xb3/ HTTP/1.1\r\n\r\n", 400),
    (b"POST http://example.com/ HTTP/1.1\r\nContent-Length: \xb9\r\n\r\n", 400),
])
def test_hostile_requests_are_refused(head, status) -> None:
    with pytest.raises(Refused) as refused:
        parse_request(head)
    assert refused.value.status == status
