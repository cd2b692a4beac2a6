"""
The version talk peers exchange when a connection opens, and its compatibility check.

On connection the server sends a TALK ``version``; the client sends its own on open
(``docs/original-wire-format.md``). Peers whose protocol major versions differ, or that are
on another network (``alt``), can't talk: the node closes the connection with the reason
this module gives. No I/O here.

"""

from __future__ import annotations

__all__ = [
    "HANDSHAKE_MAGIC",
    "HELLO_EVENT",
    "LEAST_PACKAGE_LIMIT",
    "LIBRARY_NAME",
    "MAX_PACKAGE_SIZE_KEY",
    "NONCE_KEY",
    "PLAIN_PEER",
    "SECURE_PEER",
    "SELF_DIAL",
    "VERSION_EVENT",
    "check_version",
    "is_id_mismatch",
    "is_mode_mismatch",
    "is_secure_mismatch",
    "kept_introduction",
    "major_version",
    "peer_package_limit",
    "version_body",
]

from ..exceptions import HandshakeError
from .package import DEFAULT_ALT, PROTOCOL_VERSION, Body

LIBRARY_NAME = "trustp2p"
VERSION_EVENT = "version"
HELLO_EVENT = "hello"
"""Secure mode's version talk: the version body plus ``peer_id`` and ``listen_urls``."""

NONCE_KEY = "nonce"
"""The version body's key for the node's random nonce (self-dial detection)."""

MAX_PACKAGE_SIZE_KEY = "max_package_size"
"""The version body's key for the largest package the node takes, in bytes: its peers
send it nothing larger (a larger package would close the connection)."""

LEAST_PACKAGE_LIMIT = 1024
"""The least limit a peer's word is taken for (``options.MIN_PACKAGE_SIZE``: its
introduction and heartbeats fit in it)."""

SELF_DIAL = "dialled ourselves"
"""The close reason of a connection whose two ends are the same node."""

HANDSHAKE_MAGIC = b"\x00tp-noise/1\n"
"""Prefix of the first secure handshake message. A node running without the secure
channel recognises it and refuses with a clear reason, rather than reading it as a package."""

PLAIN_PEER = (
    "secure channel required: the closing node runs with secure=True; "
    "the other speaks plain trustp2p (secure=False)"
)
"""The close reason for a plain peer dialling a secure node. Both ends log it, so it
names the sides by what they did, not as "this node" and "peer" (the peer read them as
its own)."""

SECURE_PEER = (
    "no secure channel: the closing node runs with secure=False; "
    "the other speaks the secure channel"
)
"""The close reason for a secure peer dialling a plain node."""

_MODE_MISMATCHES = (
    PLAIN_PEER,
    SECURE_PEER,
    # Sent by 0.1.0:
    "peer speaks plain trustp2p (secure=False); this node requires the secure channel",
    "peer speaks the secure channel; this node runs with secure=False",
)


def version_body(
    *,
    library_version: str,
    alt: str = DEFAULT_ALT,
    protocol_version: str = PROTOCOL_VERSION,
    program: str | None = None,
    program_version: str | None = None,
    nonce: str | None = None,
    max_package_size: int | None = None,
) -> Body:
    """
    The body of our version talk, with the original's keys, and ``nonce`` if given.

    ``nonce`` is trustp2p's addition: a random string drawn once per node, by which a
    node that meets its own nonce knows it dialled itself (as Bitcoin's ``version``
    message does). So is ``max_package_size`` (see :func:`peer_package_limit`), left
    out for a node without a limit. The original ignores keys it doesn't know.
    """
    body: Body = {
        "protocol_version": protocol_version,
        "alt": alt,
        "library": LIBRARY_NAME,
        "library_version": library_version,
        "program": program,
        "program_version": program_version,
    }
    if nonce is not None:
        body[NONCE_KEY] = nonce
    if max_package_size is not None:
        body[MAX_PACKAGE_SIZE_KEY] = max_package_size
    return body


_KEPT_KEYS = (
    "protocol_version",
    "alt",
    "library",
    "library_version",
    "program",
    "program_version",
    NONCE_KEY,
    MAX_PACKAGE_SIZE_KEY,
    "peer_id",
)
_KEPT_CHARS = 100


def kept_introduction(body: Body) -> Body:
    """
    What a node keeps of a peer's version or hello body while the connection lasts:
    the keys above whose values are strings (their first 100 characters), whole
    numbers or null. Found by an attacker: 90 connections whose hello held 1 MB of
    empty objects each took a node from 54 MB to 2.1 GB, and the status page copied
    their 1 MB ``program`` strings into every answer (119 MB, 5 s of the event loop).
    """
    kept: Body = {}
    for key in _KEPT_KEYS:
        value = body.get(key)
        if isinstance(value, str):
            kept[key] = value[:_KEPT_CHARS]
        elif value is None or (type(value) is int and -(2**63) <= value < 2**63):
            if key in body:
                kept[key] = value
    return kept


def peer_package_limit(body: Body) -> int | None:
    """
    The largest package a peer takes, by its version or hello body: ``None`` when it
    doesn't say (the original, an older trustp2p, a node without a limit) or says
    something that isn't a whole number; at least :data:`LEAST_PACKAGE_LIMIT`.

    A peer's word only bounds what is sent to it, so a lie harms no one else.
    """
    limit = body.get(MAX_PACKAGE_SIZE_KEY)
    if type(limit) is not int:  # (a bool is an int: not taken)
        return None
    return max(limit, LEAST_PACKAGE_LIMIT)


def major_version(version: str) -> str:
    """``"1.0"`` -> ``"1"``."""
    return version.split(".", 1)[0]


def check_version(
    body: Body, *, alt: str = DEFAULT_ALT, protocol_version: str = PROTOCOL_VERSION
) -> None:
    """
    Check a peer's version talk against ours.

    Raises:
        HandshakeError: If the peer's protocol major version or network differs from
            ours, or the body lacks them. The message is fit to send as a close reason.

    """
    theirs = body.get("protocol_version")
    if not isinstance(theirs, str) or not theirs:
        raise HandshakeError("version talk lacks protocol_version")
    if major_version(theirs) != major_version(protocol_version):
        # Said from no side (the peer logs it as its close reason: "ours" contradicted
        # its own log, found by a tester), as PLAIN_PEER and SECURE_PEER are.
        raise HandshakeError(
            f"protocol version {theirs[:40]} is incompatible: the closing node speaks major "
            f"version {major_version(protocol_version)}, the other {major_version(theirs)[:40]}"
        )
    their_alt = body.get("alt")
    if their_alt != alt:
        raise HandshakeError(
            f"network alt {_short(their_alt)} is another network: the closing node runs on {alt!r}"
        )


_NETWORK_MISMATCHES = (
    " is another network: the closing node runs on ",  # check_version's
    " is incompatible: the closing node speaks major version ",
)


_ID_MISMATCH = ", not the expected "  # the secure channel's PeerIdMismatch


def is_mode_mismatch(reason: str | None) -> bool:
    """Whether a close reason says the two ends disagree on ``secure``, run another
    network (``alt``) or protocol major version, or the peer isn't the one the dialled
    URL names (``/p2p/<id>``): a dial that can never work until one side's configuration
    changes (found by testers: a wrong ``alt``, and a wrong pinned id, were warned at
    every redial)."""
    return reason is not None and (
        any(known in reason for known in (*_MODE_MISMATCHES, *_NETWORK_MISMATCHES))
        or is_id_mismatch(reason)
    )


def is_id_mismatch(reason: str | None) -> bool:
    """Whether a close reason says the peer proved another id than the URL dialled
    names (``/p2p/<id>``)."""
    return reason is not None and reason.startswith("peer is ") and _ID_MISMATCH in reason


def is_secure_mismatch(reason: str | None) -> bool:
    """Whether a close reason says the two ends disagree on ``secure``."""
    return reason is not None and any(known in reason for known in _MODE_MISMATCHES)


def _short(value: object) -> str:
    """``repr(value)``, its first 40 characters: a peer's words in a log line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
