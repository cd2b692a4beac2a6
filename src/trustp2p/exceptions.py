"""
Every error trustp2p raises derives from :exc:`TrustP2PError`::

    TrustP2PError
    ├── PackageError        # a peer's bytes are not a valid package; decode() raises only this
    ├── ConnectionClosed    # using a closed socket, or a request's connection was lost
    ├── RequestTimeout      # no response in time; also a TimeoutError
    ├── ThreadLoadError     # a file in threads-enabled/ can't be loaded
    ├── DriverError         # unknown scheme, dial or listen failure
    └── HandshakeError      # the peer's version talk is incompatible with ours

Errors caused by a peer (:exc:`PackageError`, :exc:`HandshakeError`) are counted against
the peer and logged; the node carries on. Errors caused by misusing the API are raised at
once, as the built-in :exc:`TypeError` or :exc:`ValueError`.

"""

from __future__ import annotations

__all__ = [
    "ConnectionClosed",
    "DriverError",
    "HandshakeError",
    "PackageError",
    "RequestTimeout",
    "ThreadLoadError",
    "TrustP2PError",
]

from pathlib import Path


class TrustP2PError(Exception):
    """Base class of every trustp2p exception."""


class PackageError(TrustP2PError):
    """
    Raised when bytes received from a peer are not a valid package.

    When the frame was readable far enough, ``type``, ``event`` and ``tag`` hold what it
    claimed to be, so that a broken REQUEST can still be answered with an error response.

    """

    def __init__(
        self,
        reason: str,
        *,
        type: int | None = None,
        event: str | None = None,
        tag: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.type = type
        self.event = event
        self.tag = tag


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


class ThreadLoadError(TrustP2PError):
    """Raised when a thread file can't be loaded; the node does not start."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DriverError(TrustP2PError):
    """Raised for an unknown driver or URL scheme, or when dialling or listening fails."""


class HandshakeError(TrustP2PError):
    """Raised when a peer's version talk is incompatible with ours."""
