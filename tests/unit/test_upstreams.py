"""The --upstream-allow decision (sans-IO): which addresses the supernode may read from."""

from __future__ import annotations

import ipaddress

import pytest

from swarmpull.core.upstreams import PatternError, UpstreamAllow, is_public, parse_pattern

NOT_PUBLIC = [
    "127.0.0.1", "127.3.2.1", "::1",  # loopback
    "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "fd00::1", "fc00::5",  # private, ULA
    "169.254.169.254", "fe80::1",  # link-local (a cloud's metadata service)
    "100.64.0.1", "100.127.255.254",  # shared (CGNAT)
    "0.0.0.0", "::",  # unspecified
    "224.0.0.1", "239.1.2.3", "ff02::1",  # multicast
    "::ffff:127.0.0.1", "::ffff:10.0.0.1",  # v4 in v6 clothing
    "192.0.2.1", "240.0.0.1",  # documentation, reserved
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "100.128.0.1", "172.32.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses_are_refused_by_default_naming_host_and_flag(address):
    reason = UpstreamAllow().decide("registry.example", 443, address)
    assert reason is not None
    assert "registry.example" in reason and "--upstream-allow" in reason
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed_by_default(address):
    assert UpstreamAllow().decide("registry.example", 443, address) is None


def test_a_pattern_allows_what_it_names_and_replaces_the_default():
    allow = UpstreamAllow(
        ("127.0.0.1", "registry.internal:5000", "*.corp.example", "10.8.0.0/16", "[::1]:80")
    )
    assert allow.decide("127.0.0.1", 8080, "127.0.0.1") is None
    assert allow.decide("localhost", 8080, "127.0.0.1") is None  # an address pattern: the resolved one
    assert allow.decide("registry.internal", 5000, "10.0.0.7") is None
    assert allow.decide("registry.internal", 5001, "10.0.0.7") is not None  # another port
    assert allow.decide("Mirror.Corp.Example.", 443, "192.168.0.9") is None
    assert allow.decide("corp.example", 443, "192.168.0.9") is not None  # *. is below the domain
    assert allow.decide("anything", 443, "10.8.200.1") is None
    assert allow.decide("::1", 80, "::1") is None
    assert allow.decide("::1", 81, "::1") is not None
    reason = allow.decide("8.8.8.8", 443, "8.8.8.8")  # public, but the patterns replaced the default
    assert reason is not None and "--upstream-allow" in reason
    both = UpstreamAllow(("public", "127.0.0.1"))
    assert both.decide("8.8.8.8", 443, "8.8.8.8") is None
    assert both.decide("127.0.0.1", 1, "127.0.0.1") is None
    assert both.decide("10.0.0.1", 1, "10.0.0.1") is not None


def test_a_name_that_resolves_to_loopback_is_judged_by_the_address():
    allow = UpstreamAllow(("public", "registry.example"))
    assert allow.decide("registry.example", 443, "127.0.0.1") is None  # the operator named it
    reason = UpstreamAllow().decide("rebind.example", 443, "127.0.0.1")
    assert reason is not None and "rebind.example (127.0.0.1)" in reason and "loopback" in reason


@pytest.mark.parametrize(
    "bad", ["", "*", "*.", "a*.example", "host:0", "host:99999", "host:x", "10.0.0.0/33", "[::1"]
)
def test_bad_patterns_are_refused(bad):
    with pytest.raises(PatternError):
        parse_pattern(bad)
