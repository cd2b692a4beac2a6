"""
Relay attribution, free of I/O: the unsigned ``via`` field of a gossip message.

A node's message log shares a full topic among the *sources* that delivered its
messages (the address groups of the peers they came from), then among the origins of
each: origins are free keys, addresses are not. Behind a hub, though, every message
comes from the hub's address, and one attacker's many origins, injected at the hub,
divide the topic with an honest origin by their number again (attacker36 F2: 49 of 450
kept at the next node). So a node that sends a message on says which source it counted
it for: ``via`` is a token for its own top source (an HMAC with a secret of the node's,
so that it names no address and is the same for one source during the node's run),
then the sub-sources the message came with, ``.``-separated. The next node counts the
message under the connection's source first, then under these: a peer can only divide
its own share with what it says (``docs/reliability.md``, ``docs/protocol.md``).

"""

from __future__ import annotations

__all__ = ["MAX_VIA_TOKENS", "VIA_TOKEN_LENGTH", "check_via", "relay_token", "sub_sources"]

import base64
import hashlib
import hmac
import re

from ...exceptions import GossipError

VIA_TOKEN_LENGTH = 8
"""Characters of the token a node makes for a source (6 bytes of HMAC-SHA256, base64url)."""

MAX_VIA_TOKENS = 8
"""Most tokens a ``via`` may carry; each is 1 to 16 base64url characters."""

_VIA = re.compile(r"[A-Za-z0-9_-]{1,16}(?:\.[A-Za-z0-9_-]{1,16}){0,7}")  # MAX_VIA_TOKENS
_MAX_VIA_LENGTH = 17 * MAX_VIA_TOKENS - 1


def check_via(value: object) -> str:
    """
    Return ``value`` if it is a ``via`` a peer may send: ``""`` (none), or 1 to
    :data:`MAX_VIA_TOKENS` tokens of 1 to 16 base64url characters, ``.``-separated.

    Raises:
        GossipError: ``"invalid via"`` if it isn't.

    """
    if not isinstance(value, str) or len(value) > _MAX_VIA_LENGTH:
        raise GossipError("invalid via")
    if value and _VIA.fullmatch(value) is None:
        raise GossipError("invalid via")
    return value


def relay_token(secret: bytes, source: str) -> str:
    """The token a node with ``secret`` gives ``source`` in the ``via`` it sends:
    :data:`VIA_TOKEN_LENGTH` base64url characters of HMAC-SHA256."""
    digest = hmac.new(secret, source.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:6]).decode("ascii")


def sub_sources(via: str, levels: int) -> list[str]:
    """The first ``levels`` tokens of ``via`` (a checked one): the sub-sources a node
    counts a message for, under the source of the connection that delivered it."""
    return via.split(".", levels)[:levels] if via else []
