"""
Peer URLs: ``ws://host:port``, ``tcp://host:port``, optionally ending in
``/p2p/<peer-id>`` to name the peer expected there. Validation of URLs received from
peers (peer exchange, hello) lives here too. No I/O.

"""

from __future__ import annotations

__all__ = [
    "MAX_URLS_PER_PEER",
    "MAX_URL_LENGTH",
    "PEER_SCHEMES",
    "address_of",
    "canonical_url",
    "check_dial_url",
    "check_listen_address",
    "is_unspecified",
    "split_peer_url",
    "validate_url",
    "validate_urls",
]

import ipaddress
import re
from urllib.parse import urlsplit

from ..identity import PeerId, is_peer_id

PEER_SCHEMES = frozenset({"ws", "wss", "tcp", "memory"})
MAX_URL_LENGTH = 256
"""Characters; longer URLs from peers are invalid."""

MAX_URLS_PER_PEER = 8
"""URLs a peer may announce for itself (hello, ``my_url``); the peer store keeps at most
this many per peer."""
_P2P = "/p2p/"


def split_peer_url(url: str) -> tuple[str, PeerId | None]:
    """
    Split ``ws://host:port/p2p/<peer-id>`` into the URL to dial and the expected id.

    Raises:
        ValueError: If the ``/p2p/`` part doesn't hold a valid peer id.

    """
    index = url.find(_P2P)
    if index == -1:
        return url, None
    peer_id = url[index + len(_P2P) :].rstrip("/")
    if not is_peer_id(peer_id):
        raise ValueError(f"{url!r} ends in {peer_id!r}, which is not a peer id")
    return url[:index], PeerId(peer_id)


def validate_url(url: object) -> str | None:
    """Why a URL received from a peer is not acceptable, or ``None`` if it is."""
    if not isinstance(url, str):
        return f"URL is a {type(url).__name__}, not a string"
    if len(url) > MAX_URL_LENGTH:
        return f"URL of {len(url)} characters exceeds {MAX_URL_LENGTH}"
    try:
        dial_url, _ = split_peer_url(url)
        parts = urlsplit(dial_url)
        port = parts.port
    except ValueError as exc:
        return f"invalid URL {url!r}: {exc}"
    if parts.scheme not in PEER_SCHEMES:
        if "://" not in dial_url:  # ("127.0.0.1:1107", "host:1107": tester48 F10)
            return f"URL {url!r} lacks a scheme such as ws://"
        return f"URL {url!r} has scheme {parts.scheme!r}; expected one of ws, wss, tcp"
    if parts.username is not None or parts.password is not None:
        return f"URL {url!r} holds credentials"
    if not parts.hostname:
        return f"URL {url!r} has no host"
    if not _valid_host(parts.hostname):
        return f"URL {url!r} has an invalid host"
    if _unspecified(parts.hostname):
        return f"URL {url!r} names the unspecified address, which nobody can dial"
    if port is None or not 0 < port < 65536:
        return f"URL {url!r} has no valid port"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return f"URL {url!r} has a path, query or fragment"
    return None


def check_dial_url(url: object) -> str | None:
    """
    Why a URL given to dial (``NodeOptions.peers``, ``--connect``) is not usable, or
    ``None``. The rules of :func:`validate_url`, with a port required: WebSocket's
    default, 80, is rarely what was meant.
    """
    reason = validate_url(url)
    if reason is None:
        return None
    if isinstance(url, str) and reason.endswith("has no valid port"):
        try:
            dial, peer_id = split_peer_url(url)
            port = urlsplit(dial).port
        except ValueError:
            return f"URL {url!r} has a port out of range (1..65535)"
        if port is None:
            # The port goes after the host, before a /p2p/<id> (tester47 F2).
            example = dial.rstrip("/") + ":1107" + (f"{_P2P}{peer_id}" if peer_id else "")
            scheme = url.split(":", 1)[0].lower()
            why = (
                "tcp:// has no default port"
                if scheme == "tcp"
                else f"WebSocket's default, {443 if scheme == 'wss' else 80}, is rarely what"
                " was meant"
            )
            return f"URL {url!r} names no port: write it, e.g. {example} ({why})"
        return f"URL {url!r} has port {port}, out of range (1..65535)"
    return reason


# Underscores too: DNS carries them, and container names (Docker Compose's services,
# e.g. my_service) are often written with one.
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)\Z")


_NUMERIC = re.compile(r"(?i)^(0x[0-9a-f]*|[0-9]+)$")
"""A last label that makes a host an IPv4 address to the resolver, not a name (review33:
``ws://2130706433:P`` passed the rules for names and reached 127.0.0.1)."""


def _valid_host(host: str) -> bool:
    """An IP address or a DNS name (letters, digits, hyphens and underscores,
    dot-separated)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    labels = host.rstrip(".").split(".")
    if _NUMERIC.match(labels[-1]):  # 2130706433, 127.1, 0x7f000001, 0177.0.0.1: not
        return False  # a name (no top-level domain is numeric), an address in disguise
    return len(host) <= 253 and all(_LABEL.match(label) for label in labels)


def check_listen_address(host: object, port: object) -> None:
    """
    Check a node's ``host`` and ``port`` before it starts (tester37 F10: ``--host
    127.0.0.1:P`` made the node's key and data, then failed to resolve).

    Raises:
        ValueError: If ``host`` is not a host name or IP address (``""``: every
            interface), or ``port`` not an integer in 0..65535.

    """
    if type(port) is not int or not 0 <= port <= 65535:
        raise ValueError(f"port must be an integer in 0..65535, not {port!r}")
    # Only the shapes that are certainly mistakes: what the resolver takes (a name in
    # capitals, an international one, 127.1) is its call (review53 M1, L1).
    if not isinstance(host, str) or any(c.isspace() or c in "/@" for c in host):
        hint = ", not a URL" if isinstance(host, str) and "://" in host else ""
    elif host.startswith("[") or (":" in host and not _is_ip(host)):
        hint = ", without a port or brackets (the port is the option port, --port)"
    else:
        return
    raise ValueError(f"host must be a host name or IP address{hint}: {host!r}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)  # (a scoped IPv6 address too: fe80::1%eth0)
    except ValueError:
        return False
    return True


def _unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def is_unspecified(url: str) -> bool:
    """Whether ``url``'s host is the unspecified address (``0.0.0.0``, ``::``): a node
    listening there is reached at its other addresses, never at that one."""
    try:
        host = urlsplit(split_peer_url(url)[0]).hostname
    except ValueError:
        return False
    return host is not None and _unspecified(host)


def canonical_url(url: str) -> str:
    """One spelling per endpoint: lowercase scheme and host, no trailing ``/`` or ``?``.
    The URL must be valid (:func:`validate_url`)."""
    dial_url, peer_id = split_peer_url(url)
    parts = urlsplit(dial_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    canonical = f"{parts.scheme.lower()}://{host}:{parts.port}"
    return f"{canonical}/p2p/{peer_id}" if peer_id else canonical


def address_of(url: str) -> str:
    """
    The endpoint a URL dials, in one spelling, to compare URLs: without ``/p2p/<id>``,
    canonical (:func:`canonical_url`) when it names a port, else as given. Never raises.
    """
    try:
        dial_url = split_peer_url(url)[0]
        if urlsplit(dial_url).port is not None:
            return canonical_url(dial_url)
    except ValueError:
        return url
    return dial_url


def validate_urls(value: object, *, limit: int) -> tuple[list[str], str | None]:
    """
    Validate a list of URLs received from a peer.

    Returns:
        The acceptable URLs in canonical form (:func:`canonical_url`; none when the
        list itself is invalid, e.g. too long), and the first problem found, or ``None``.
        A URL naming the unspecified address is dropped without being a problem:
        earlier builds announced their ``0.0.0.0`` listener, and peers mustn't be
        penalised for it while a network upgrades.

    """
    if not isinstance(value, list):
        return [], f"expected a list of URLs, not {type(value).__name__}"
    if len(value) > limit:
        return [], f"list of {len(value)} URLs exceeds the limit of {limit}"
    urls: list[str] = []
    problem: str | None = None
    for url in value:
        if isinstance(url, str) and is_unspecified(url):
            continue  # what a node listening on every interface announced before
        why = validate_url(url)
        if why is None:
            url = canonical_url(url)
            if url in urls:
                why = f"URL {url!r} appears twice"
        if why is not None:
            problem = problem or why
            continue
        urls.append(url)
    return urls, problem
