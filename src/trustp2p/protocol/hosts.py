"""
Which hosts a peer may point us at, free of I/O (nothing here resolves a name).

- A URL a peer announces for **itself** (hello ``listen_urls``, ``my_url``) is stored as
  a dial candidate only if it names the host the peer connects from
  (:func:`may_announce`): otherwise any peer could make us dial a third party, or our
  own network (found by an attacker: 10 throwaway ids made a node dial 65 hosts of
  their choosing, each sent an HTTP upgrade request).
- A URL of a **list** (a ``get_peers`` answer, in or out) may go between us and a peer
  only if its host is no more local than the peer's (:func:`may_pass_on`): a public peer
  can't make us dial our LAN or loopback, and we don't hand our LAN's addresses, where
  they mean other hosts, to peers elsewhere.

"""

from __future__ import annotations

__all__ = [
    "address_key",
    "crowded_group",
    "host_of",
    "is_loopback",
    "is_public",
    "listen_families",
    "may_announce",
    "may_pass_on",
    "name_group",
    "netgroup",
    "share_group",
    "site_key",
]

import functools
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from .urls import split_peer_url

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOOPBACK_NAMES = frozenset({"127.0.0.1", "::1", "localhost"})
"""The spellings of "this machine" a loopback peer may announce whatever its own
loopback address: a node listening on ``localhost`` or ``::1`` may dial from 127.0.0.1."""


def host_of(url: str) -> str:
    """The host of ``url``, lowercase, without brackets; ``""`` if it has none. Never raises."""
    try:
        return (urlsplit(split_peer_url(url)[0]).hostname or "").lower().rstrip(".")
    except ValueError:
        return ""


def _address(host: str) -> _Address | None:
    """``host`` as an address (an IPv4-mapped IPv6 one as IPv4), or ``None`` for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _same_address(a: _Address, b: _Address) -> bool:
    """One host: the same IPv4 address, or the same IPv6 /64 (a host's temporary and
    stable addresses share it), link-local ones exactly."""
    if a.version != b.version or a.version == 4 or a.is_link_local:
        return a == b
    return int(a) >> 64 == int(b) >> 64


def may_announce(url: str, host: str) -> bool:
    """
    Whether a peer connected from ``host`` (the socket's address) may announce ``url``
    as its own, to be stored and dialled: the URL names that address (an IPv6 one: its
    /64). A peer on loopback may also name ``127.0.0.1``, ``::1`` or ``localhost``.

    A DNS name is refused (but ``localhost`` from loopback): it can't be checked without
    resolving it, and a name can point anywhere. A node known by a name is found through
    the operator's lists (``peers``, ``--connect``) and the servers' ``get_peers``
    answers. ``memory://`` URLs, which reach only this process, are always allowed.
    """
    if url.lower().startswith("memory:"):
        return True
    url_host = host_of(url)
    peer = _address(host)
    if peer is None:  # not an address (an in-memory socket's host): only itself
        return url_host != "" and url_host == host.lower()
    if peer.is_loopback and url_host in _LOOPBACK_NAMES:
        return True
    address = _address(url_host)
    return address is not None and _same_address(address, peer)


def _locality(address: _Address) -> int:
    """How far an address reaches: 0 this machine, 1 the link, 2 a private network
    (RFC 1918, CGNAT, unique local, documentation...), 3 the internet; -1 nowhere a
    peer may be (multicast, reserved, unspecified)."""
    if address.is_loopback:  # (before is_reserved: ::1 is in ::/8)
        return 0
    if address.is_multicast or address.is_reserved or address.is_unspecified:
        return -1
    if address.is_link_local:
        return 1
    return 3 if address.is_global else 2


def may_pass_on(url: str, host: str) -> bool:
    """
    Whether ``url`` may go, in a ``get_peers`` answer, between us and a peer at ``host``
    (either way): its host reaches at least as far as the peer's. A peer on the
    internet gives and gets public addresses only; one on our LAN, LAN addresses too;
    one on loopback, anything. A DNS name passes (it can't be checked without
    resolving it); ``localhost`` counts as loopback.
    """
    url_host = host_of(url)
    address = _address(url_host)
    if address is None:  # (review33: "localhost." and "x.localhost" resolve to loopback)
        local = url_host == "localhost" or url_host.endswith(".localhost")
        return not local or _reach(host) == 0
    return _locality(address) >= _reach(host) and _locality(address) >= 0


def is_public(host: str) -> bool:
    """Whether a peer at ``host`` is on the internet: an address that reaches it, or a
    name (not resolved)."""
    return _reach(host) == 3


def _reach(host: str) -> int:
    """The locality of a peer's address; a host that isn't one counts as the internet."""
    peer = _address(host)
    return 3 if peer is None else _locality(peer)


def name_group(name: str) -> str:
    """
    The network group of a DNS name, for the per-group outbound cap: its last two
    labels (``a1.attacker.example`` -> ``attacker.example``). A name costs nothing under
    a domain one holds (a wildcard record), so names count by domain, not one by one.
    It over-groups under two-label public suffixes (``co.uk``): fewer dials there, never
    more. A name's address is unknown without resolving it, so a name and an address of
    one host count apart.
    """
    labels = name.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


@functools.lru_cache(maxsize=4096)
def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``). This and the keys
    below are cached (4,096 hosts): asked several times per accepted connection, they
    were a fifth of a node's time under a flood of connections (an attacker's test)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # before 3.13, ::ffff:127.0.0.1 isn't "loopback"
    return address.is_loopback


@functools.lru_cache(maxsize=4096)
def address_key(host: str) -> str:
    """
    What the per-address limits count ``host`` as: an IPv4 address as itself, an IPv6
    address as its /64 (one subscriber's network: anyone with one has 2**64 addresses
    to rotate through), except a link-local one (``fe80::/10``: every link has the same
    /64), which is itself, scope included. Names that aren't addresses are themselves.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv4Address) or address.is_link_local:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.ip_network(f"{address}/64", strict=False))


@functools.lru_cache(maxsize=4096)
def site_key(host: str) -> str | None:
    """
    The site an IPv6 address belongs to, its /48 (what a tunnel broker or a VPS host
    hands out: an attacker's test drove 500 /64s of one, each with its own budget);
    None for others (an IPv4 address is its own site, a link-local one too).
    """
    key = address_key(host)
    if not key.endswith("/64"):
        return None
    return str(ipaddress.ip_network(key).supernet(new_prefix=48))


@functools.lru_cache(maxsize=4096)
def share_group(host: str) -> str:
    """
    Whose share of a node-wide budget a peer at ``host`` spends with others: its
    /48 for IPv6 (:func:`site_key`), else its address (an attacker's test: 90 /64s of
    one /48, each a group of its own, starved an honest newcomer's catch-up). Cached:
    asked per message.
    """
    return site_key(host) or address_key(host)


@functools.lru_cache(maxsize=4096)
def netgroup(host: str) -> str:
    """
    The network group of an address: its /16 for IPv4, its /32 for IPv6, as Bitcoin
    Core groups outbound peers. A DNS name counts by its last two labels
    (:func:`~trustp2p.protocol.hosts.name_group`): names are free under one's domain.
    Built without ``ip_network`` (13 us an address): the full peer store groups its
    10,000 peers' hosts (:mod:`trustp2p.storage._peer_eviction`).
    """
    address = _address(host)
    if address is None:
        return name_group(host)
    if address.version == 4:
        first, second = address.packed[:2]
        return f"{first}.{second}.0.0/16"
    return f"{ipaddress.IPv6Address(int(address) >> 96 << 96)}/32"


def crowded_group(host: str, others: Iterable[str], limit: int) -> str | None:
    """
    The network group of ``host``, the address an outbound connection reached, if
    ``limit`` other outbound connections (``others``: their addresses) are in it
    already; else ``None``. A dial is chosen by its URL, where a name counts by its
    domain (:func:`name_group`): names under several domains that lead to one network
    are caught here, once connected. Loopback, and a host that isn't an address (an
    in-memory socket's), are in no group.
    """

    def group_of(address: str) -> str | None:
        if _address(address) is None or is_loopback(address):
            return None
        return netgroup(address)

    group = group_of(host)
    if group is None:
        return None
    held = sum(1 for other in others if group_of(other) == group)
    return group if held >= limit else None


def listen_families(host: str) -> str:
    """
    What listening on ``host`` takes, when the host alone doesn't say: for the line
    "= listening on ..." (tester39 F5: ``--host ::`` refused IPv4 peers, and nothing said
    why). The ``ws`` and ``tcp`` drivers listen on an IPv6 socket for IPv6 only, on every
    platform (as asyncio); ``""`` takes every interface of both families.
    """
    if host == "":
        return "every interface, IPv4 and IPv6"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return ""
    if address.is_unspecified and address.version == 6:
        return "IPv6 only: --host '' for both"
    return ""
