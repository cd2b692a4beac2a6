"""Which hosts a peer may point us at (attacker31 F2) and the netgroup of a name (F5)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from trustp2p.protocol.hosts import (
    crowded_group,
    host_of,
    listen_families,
    may_announce,
    may_pass_on,
    name_group,
    site_key,
)
from trustp2p.protocol.limits import netgroup
from trustp2p.protocol.outbound import OutboundPolicy, PeerView, netgroup_of


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("ws://203.0.113.7:1107", "203.0.113.7"),
        ("tcp://203.0.113.7:22", "203.0.113.7"),  # any port of its own host
        ("ws://203.0.113.7:1107", "::ffff:203.0.113.7"),  # IPv4-mapped
        ("ws://[::ffff:203.0.113.7]:1107", "203.0.113.7"),
        ("ws://[2001:db8:1:2::10]:1107", "2001:db8:1:2::99"),  # one /64: one host
        ("ws://[fe80::1]:1107", "fe80::1"),
        ("ws://192.168.1.7:1107", "192.168.1.7"),
        # Loopback: its own address, or the machine's usual spellings.
        ("ws://127.0.0.1:1107", "127.0.0.1"),
        ("ws://[::1]:1107", "127.0.0.1"),
        ("ws://localhost:1107", "127.0.0.1"),
        ("ws://127.0.0.1:1107", "::1"),
        ("ws://127.0.0.2:1107", "127.0.0.2"),
        ("ws://127.0.0.1:1107", "127.0.0.2"),
        ("memory://node3:1", "node3"),
        ("memory://node3:1", "node4"),  # reaches only this process
    ],
)
def test_a_peer_may_announce_its_own_host(url: str, host: str) -> None:
    assert may_announce(url, host)


@pytest.mark.parametrize(
    ("url", "host"),
    [
        # attacker31 F2: the URLs its hello announced, none on its own host.
        ("ws://10.0.0.5:6379", "203.0.113.7"),
        ("ws://169.254.169.254:80", "203.0.113.7"),
        ("ws://192.168.1.1:80", "203.0.113.7"),
        ("tcp://172.16.0.10:22", "203.0.113.7"),
        ("ws://a1.attacker.example:1107", "203.0.113.7"),  # a name: can't be checked
        ("ws://203.0.113.8:1107", "203.0.113.7"),
        ("ws://127.0.0.1:1107", "203.0.113.7"),
        ("ws://localhost:1107", "203.0.113.7"),
        ("ws://[2001:db8:1:3::10]:1107", "2001:db8:1:2::99"),
        ("ws://[fe80::2]:1107", "fe80::1"),
        ("ws://192.168.1.8:1107", "192.168.1.7"),
        # Loopback: another loopback address stands for another host in tests.
        ("ws://127.0.1.5:4000", "127.0.0.1"),
        ("ws://127.0.0.2:1107", "127.0.0.1"),
        ("ws://10.0.0.5:1107", "127.0.0.1"),
        ("ws://node.example.org:1107", "127.0.0.1"),
        ("ws://node3:1", "node4"),
        ("ws://node3:1", ""),
    ],
)
def test_a_peer_may_not_announce_another_host(url: str, host: str) -> None:
    assert not may_announce(url, host)


@pytest.mark.parametrize(
    ("url", "host", "allowed"),
    [
        ("ws://203.0.113.7:1107", "198.51.100.1", True),  # documentation ranges: private
        ("ws://8.8.8.8:1107", "1.1.1.1", True),
        ("ws://node.example.org:1107", "1.1.1.1", True),  # a name: can't be checked
        ("ws://10.0.0.5:1107", "1.1.1.1", False),
        ("ws://169.254.169.254:80", "1.1.1.1", False),
        ("ws://100.64.0.1:1107", "1.1.1.1", False),  # CGNAT
        ("ws://[fd00::1]:1107", "1.1.1.1", False),  # unique local
        ("ws://127.0.0.1:1107", "1.1.1.1", False),
        ("ws://localhost:1107", "1.1.1.1", False),
        ("ws://224.0.0.1:1107", "1.1.1.1", False),  # multicast: nowhere
        ("ws://10.0.0.5:1107", "192.168.1.7", True),  # LAN to LAN
        ("ws://169.254.1.1:1107", "192.168.1.7", False),
        ("ws://127.0.0.1:1107", "192.168.1.7", False),
        ("ws://10.0.0.5:1107", "127.0.0.1", True),  # loopback: anything
        ("ws://127.0.0.2:1107", "::1", True),
        ("ws://localhost:1107", "127.0.0.1", True),
        ("ws://8.8.8.8:1107", "::ffff:127.0.0.1", True),
        ("ws://[::ffff:10.0.0.5]:1107", "1.1.1.1", False),
        ("memory://n1:1", "n2", True),
    ],
)
def test_what_a_list_may_carry(url: str, host: str, allowed: bool) -> None:
    assert may_pass_on(url, host) is allowed


def test_host_of() -> None:
    assert host_of("ws://[::1]:1") == "::1"
    assert host_of("WS://Node.Example.ORG:1") == "node.example.org"
    assert host_of("ws://[::1") == ""


def test_names_count_by_their_last_two_labels() -> None:
    assert name_group("a1.Attacker.example.") == "attacker.example"
    assert netgroup("a2.attacker.example") == netgroup("attacker.example") == "attacker.example"
    assert netgroup("hub") == "hub"
    assert netgroup_of("ws://a1.attacker.example:1107") == "attacker.example"
    assert netgroup_of("ws://localhost:1107") is None  # loopback: no limit


@given(st.ip_addresses())
def test_the_netgroup_of_an_address_is_its_16_or_32(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """Built by hand, without ``ip_network`` (the full peer store groups its 10,000
    peers' hosts: attacker38 A2): the network ``ip_network`` gives."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        expected = ipaddress.ip_network(f"{address.ipv4_mapped}/16", strict=False)
    else:
        prefix = 16 if address.version == 4 else 32
        expected = ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    assert netgroup(str(address)) == str(expected)


class _ProvenView:
    def is_blocked(self, *, peer_id: str | None = None, address: str | None = None) -> bool:
        return False

    def peer_id_of(self, url: str) -> str | None:
        return None

    def is_anchor(self, peer_id: str) -> bool:
        return False

    def proven(self, url: str) -> bool:
        return True


def test_names_of_one_domain_get_two_dials() -> None:
    # attacker31 F5: 16 names under one wildcard domain got 8 of 8 dials.
    policy = OutboundPolicy(clock=lambda: 1000.0, shuffle=lambda urls: None)
    view: PeerView = _ProvenView()
    selection = policy.selection([], [], view)
    assert selection is not None
    dials = selection.offer([f"ws://a{i}.attacker.example:1107" for i in range(1, 17)])
    assert len(dials) == 2
    dials = selection.offer([f"ws://n{i}.example{i}.org:1107" for i in range(1, 17)])
    assert len(dials) == 6  # other domains fill the rest


def test_a_connection_into_a_full_network_group_is_crowded() -> None:
    # Names of two domains chosen apart, both leading into 198.51.0.0/16.
    assert crowded_group("198.51.100.9", ["198.51.100.1", "198.51.7.7"], 2) == "198.51.0.0/16"
    assert crowded_group("::ffff:198.51.100.9", ["198.51.100.1", "198.51.7.7"], 2) is not None
    assert crowded_group("198.51.100.9", ["198.51.100.1", "198.52.0.1"], 2) is None
    assert crowded_group("2001:db8:1::1", ["2001:db8:2::1", "2001:db8:3::1"], 2) == "2001:db8::/32"
    # Loopback and in-memory hosts are in no group.
    assert crowded_group("127.0.0.1", ["127.0.0.1", "127.0.0.2"], 2) is None
    assert crowded_group("node3", ["node3", "node3"], 2) is None


@pytest.mark.parametrize(
    "url",
    [
        "ws://2130706433:8000",
        "ws://127.1:8000",
        "ws://0x7f000001:8000",
        "ws://0177.0.0.1:8000",
        "ws://3232235786:8000",
        "ws://node.0x10:8000",
    ],
)
def test_an_address_spelt_as_a_number_is_no_host(url: str) -> None:
    """review33 R4: IPv4 spellings that ipaddress doesn't parse but the resolver does
    (127.0.0.1, 192.168.1.10) passed as names: a public peer's list had us dial our
    own loopback. No top-level domain is numeric: they are refused as hosts."""
    from trustp2p.protocol.urls import validate_url

    assert validate_url(url) == f"URL {url!r} has an invalid host"


@pytest.mark.parametrize("url", ["ws://localhost.:8000", "ws://app.localhost:8000"])
def test_localhost_spellings_count_as_loopback(url: str) -> None:
    assert not may_pass_on(url, "8.8.4.4")
    assert may_pass_on(url, "127.0.0.1")


@pytest.mark.parametrize(
    ("host", "site"),
    [
        ("2001:db8:0:1::1", "2001:db8::/48"),
        ("2001:db8:0:ffff:1::2", "2001:db8::/48"),
        ("2001:db8:1::1", "2001:db8:1::/48"),
        ("192.0.2.1", None),
        ("::ffff:192.0.2.1", None),
        ("fe80::1%eth0", None),
        ("node.example", None),
    ],
)
def test_an_ipv6_address_belongs_to_the_site_of_its_slash_48(host: str, site: str | None) -> None:
    assert site_key(host) == site


@pytest.mark.parametrize(
    ("host", "note"),
    [
        ("", "every interface, IPv4 and IPv6"),
        ("::", "IPv6 only: --host '' for both"),
        ("0:0::0", "IPv6 only: --host '' for both"),
        ("0.0.0.0", ""),
        ("127.0.0.1", ""),
        ("::1", ""),
        ("localhost", ""),
    ],
)
def test_the_listening_line_says_which_families_every_interface_takes(host: str, note: str) -> None:
    """tester39 F5: ``--host ::`` refused IPv4 peers and nothing said why."""
    assert listen_families(host) == note
