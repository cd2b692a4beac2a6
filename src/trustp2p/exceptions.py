"""
Every error trustp2p raises derives from :exc:`TrustP2PError`::

    TrustP2PError
    ├── ProtocolError           # what a PEER did wrong; .peer names it when known
    │   ├── PackageError        # bytes that are not a valid package; decode() raises only this
    │   ├── HandshakeError      # incompatible version/hello, or a failed secure handshake
    │   │   ├── SelfDialError   # the peer we dialled is ourselves (nobody is at fault)
    │   │   ├── PeerIdMismatch  # the peer we dialled isn't the one its URL names
    │   │   └── HandshakeClosed # the peer closed during the handshake (no offence)
    │   ├── ChannelError        # a secure transport message doesn't decrypt or parse
    │   │   └── OversizedPackage  # over max_package_size: closed (1009), not blocked
    │   └── GossipError         # an invalid gossip message or control talk
    ├── RemoteError             # the peer answered a request with an error; .body is raw
    ├── ConnectionClosed        # using a closed socket, or a request's connection was lost
    ├── RequestTimeout          # no response in time; also a TimeoutError
    ├── DriverError             # unknown scheme, dial or listen failure, a broken frame
    │   ├── ConnectionDropped   # the connection ended without a close frame (no offence)
    │   └── InvalidURL          # a URL given to dial can't work; also a ValueError
    ├── ThreadLoadError         # a file in threads-enabled/ can't be loaded
    ├── IdentityError           # the node's key file is unsafe, corrupt or unreadable
    │   └── IdentityStopping    # (trustp2p.identity) held by a node that is stopping
    ├── WorkerError             # a worker process of `simulate --workers` died or failed
    └── UsageError              # what the CALLER did wrong; also a RuntimeError
        ├── NodeStateError      # the node (or a part of it) isn't in a state for that call
        ├── ConfigError         # options that can't work together; also a ValueError
        └── PackageTooLarge     # a package to send over max_package_size; also a ValueError

Errors caused by a peer (:exc:`ProtocolError`) are counted against the peer and logged;
the node carries on. Errors caused by misusing the API are raised at once: a
:exc:`UsageError`, or the built-in :exc:`TypeError` or :exc:`ValueError` for bad
arguments. No code branches on an error's message: branch on its class or attributes.

"""

from __future__ import annotations

__all__ = [
    "ChannelError",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionDropped",
    "DriverError",
    "GossipError",
    "HandshakeClosed",
    "HandshakeError",
    "IdentityError",
    "InvalidURL",
    "NodeStateError",
    "OversizedPackage",
    "PackageError",
    "PackageTooLarge",
    "PeerIdMismatch",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "SelfDialError",
    "ThreadLoadError",
    "TrustP2PError",
    "UsageError",
    "WorkerError",
]

from pathlib import Path
from typing import Any, ClassVar


class TrustP2PError(Exception):
    """Base class of every trustp2p exception."""


class ProtocolError(TrustP2PError):
    """
    Base class of the errors a peer caused: what it sent breaks the protocol.

    Attributes:
        peer: The peer (URL or ``host:port``), when the error is tied to a connection.

    """

    peer: str | None = None


class PackageError(ProtocolError):
    """
    Raised when bytes received from a peer are not a valid package.

    When the frame was readable far enough, ``package_type``, ``event`` and ``tag`` hold
    what it claimed to be, so that a broken REQUEST can still be answered with an error
    response.

    """

    def __init__(
        self,
        reason: str,
        *,
        package_type: int | None = None,
        event: str | None = None,
        tag: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.package_type = package_type
        self.event = event
        self.tag = tag


class HandshakeError(ProtocolError):
    """Raised when a peer's version or hello is incompatible with ours, or the secure
    handshake fails; the message says why (it is also the close reason)."""

    offence: ClassVar[bool] = True
    """Whether it counts against the peer's address (False: nobody's fault)."""


class SelfDialError(HandshakeError):
    """The peer at the URL we dialled is this node: nobody is penalised for it."""

    offence = False


class PeerIdMismatch(HandshakeError):
    """The peer at the URL we dialled proved another peer id than the URL names
    (``/p2p/<id>``): the URL is wrong, not the address, which may serve a URL naming
    the right id."""


class HandshakeClosed(HandshakeError):
    """
    The peer closed the connection before the secure handshake completed, having sent
    nothing invalid: not held against it (a dial it gave up, e.g. while this node was
    paused, or a server that had no room for us).

    Attributes:
        code: The close code (1013: the peer is busy, try again later), if known.
        reason: The close reason, if any.

    """

    offence = False

    def __init__(self, message: str, *, code: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason


class ChannelError(ProtocolError):
    """A transport message on an established secure channel doesn't decrypt or parse:
    tampering, or a broken peer."""

    tampering: bool = True
    """Whether no honest peer does this: the node then blocks the peer (the default)."""


class OversizedPackage(ChannelError):
    """A package over ``max_package_size`` arrived on a secure channel. Not tampering:
    the peer may be honest with a larger ``max_package_size``. The connection closes
    with code 1009, as a driver closes a message too big; the peer is not blocked."""

    tampering = False


class GossipError(ProtocolError):
    """A gossip message or control talk from a peer is invalid."""


class RemoteError(TrustP2PError):
    """
    Raised by a request when the peer answered it with an error: a RESPONSE whose body
    is ``{"error": "<text>"}`` (the shape the original and trustp2p use for error
    answers).

    Attributes:
        event: The request's event name.
        tag: The request's tag.
        error: The peer's error text.
        body: The response body as received, for callers that want the raw answer.

    """

    def __init__(self, event: str, tag: str, body: dict[str, Any]) -> None:
        self.event = event
        self.tag = tag
        self.body = body
        error = body.get("error")
        self.error = error if isinstance(error, str) else repr(error)
        super().__init__(f"peer answered request {event!r} with an error: {self.error}")


class ConnectionClosed(TrustP2PError):
    """
    Raised when using a closed socket, or when a request's connection is lost.

    ``code`` and ``reason`` are the close code and reason, when known.

    """

    def __init__(self, code: int | None = None, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.code is None:
            return "connection closed"
        if self.reason:
            return f"connection closed with code {self.code}: {self.reason}"
        return f"connection closed with code {self.code}"


class RequestTimeout(TrustP2PError, TimeoutError):
    """Raised when no response to a request arrived within its timeout."""

    def __init__(self, event: str, tag: str, timeout: float) -> None:
        self.event = event
        self.tag = tag
        self.timeout = timeout
        super().__init__(f"no response to request {event!r} (tag {tag}) within {timeout:g} s")


class DriverError(TrustP2PError):
    """Raised for an unknown driver or URL scheme, or when dialling or listening fails;
    reported (``on_error``) when a connection breaks the transport's rules (a frame too
    big, stalled or malformed), which counts as an invalid package of the peer's."""


class ConnectionDropped(DriverError):
    """
    Reported (``on_error``) when a connection ended without a close frame: the peer's
    process or machine died, the network went away, or it reset the connection. The
    message says so (:data:`trustp2p.drivers.DROPPED`), then the system's reason if any.
    Not an offence: it isn't counted as an invalid package.
    """


class InvalidURL(DriverError, ValueError):
    """
    Raised when a URL given to dial (``NodeOptions.peers``, ``--connect``,
    :meth:`~trustp2p.ClientRole.connect`) can't work: no scheme, a scheme no driver
    has, no host, no port or one out of range, credentials, a path, or a ``/p2p/``
    part that is not a peer id. Both a :exc:`DriverError` and a :exc:`ValueError`, so
    that either ``except`` catches it.
    """


class ThreadLoadError(TrustP2PError):
    """Raised when a thread file can't be loaded; the node does not start."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class IdentityError(TrustP2PError):
    """The node's key file is unsafe, corrupt or unreadable; the node doesn't start."""


class WorkerError(TrustP2PError):
    """A worker process of ``simulate --workers N`` died or failed; the message says
    which one (its nodes and process id) and how. The simulation stops."""


class UsageError(TrustP2PError, RuntimeError):
    """The caller misused the API (as h11's ``LocalProtocolError``): nothing a peer did."""


class NodeStateError(UsageError):
    """The node, or one of its parts, is not in a state for that call: not started,
    stopping, or running without the feature asked for."""


class PackageTooLarge(UsageError, ValueError):
    """A package to send is larger than this node's ``max_package_size``, or the peer's
    (its introduction says it: the peer would refuse it, and count it against us), so
    it is not sent. Nothing was sent."""


class ConfigError(UsageError, ValueError):
    """Options that are each valid but can't be used as given, e.g. an admin listener
    on a non-loopback address without a token."""
