"""
What :class:`~trustp2p.protocol.connection.ConnectionProtocol` asks the node to do: the
actions it returns, which the node carries out in the order given.

"""

from __future__ import annotations

__all__ = [
    "Action",
    "Block",
    "Close",
    "DeliverGossip",
    "DeliverResponse",
    "Dispatch",
    "Ignore",
    "Introduced",
    "Lost",
    "Penalty",
    "PingAnswered",
    "SelfDial",
    "Send",
    "Throttle",
    "Unhandled",
]

from dataclasses import dataclass

from .package import Body, Package

# Plain slotted dataclasses (not frozen: one or two are made per package, and a frozen
# dataclass's __init__ costs three times as much); treat them as values. _PackageAction's
# __init__ is written out so that the compiled build (setup.py) compiles it: the
# generated one would run as Python.


@dataclass(slots=True, init=False)
class _PackageAction:
    package: Package

    def __init__(self, package: Package) -> None:
        self.package = package


@dataclass(slots=True)
class _Reason:
    reason: str


@dataclass(slots=True)
class _CodeReason:
    code: int
    reason: str


class Send(_PackageAction):
    """Send ``package`` to the peer."""

    __slots__ = ()


class Dispatch(_PackageAction):
    """Hand ``package`` to its thread handlers, in this connection's order."""

    __slots__ = ()


class DeliverResponse(_PackageAction):
    """Give a RESPONSE or HEARTBEAT_PONG to the request table."""

    __slots__ = ()


class DeliverGossip(_PackageAction):
    """Give a GOSSIP package to the gossip service."""

    __slots__ = ()


@dataclass(slots=True)
class Introduced:
    """The peer introduced itself: ``body`` is its version or hello, ``listen_urls``
    the valid URLs it says it listens on (hello only)."""

    body: Body
    listen_urls: list[str]


@dataclass(slots=True)
class Penalty:
    """Count one invalid package against the peer (the block policy may then block it):
    ``reason`` says what was wrong, for the log, which is at WARNING if ``warn`` (the
    connection's first :data:`~trustp2p.protocol.connection.WARN_INVALID`), else DEBUG;
    ``last_warning`` marks the last one at WARNING."""

    reason: str
    warn: bool = True
    last_warning: bool = False


@dataclass(slots=True)
class Throttle:
    """Stop reading from the peer for ``delay`` seconds: it is over its request or
    gossip budget."""

    delay: float


class Close(_CodeReason):
    """Close the connection with ``code`` and ``reason`` (already fit to 123 bytes)."""

    __slots__ = ()


class SelfDial(_CodeReason):
    """The peer is this node (its introduction carries our nonce): close; nobody is at
    fault, but a dialler shouldn't dial that URL again soon."""

    __slots__ = ()


class Block(_Reason):
    """Block the peer (by id and address, as the policy allows) and close: it broke the
    protocol in a way no honest peer does."""

    __slots__ = ()


class Lost(_Reason):
    """The peer left our ping unanswered (:mod:`~trustp2p.protocol.liveness`): drop the
    connection at once (a dead link can't complete a closing handshake)."""

    __slots__ = ()


@dataclass(slots=True)
class PingAnswered:
    """The peer answered our ping after ``rtt`` seconds."""

    rtt: float


class Ignore(_Reason):
    """Nothing to do; ``reason`` is worth a DEBUG line."""

    __slots__ = ()


class Unhandled(_PackageAction):
    """No thread handles ``package`` (a talk): it is dropped; the node counts it and
    says so in its log."""

    __slots__ = ()


Action = (
    Send | Dispatch | DeliverResponse | DeliverGossip | Introduced | Penalty | Throttle | Close
) | (SelfDial | Block | Lost | PingAnswered | Ignore | Unhandled)
"""What :class:`ConnectionProtocol` asks the node to do."""
