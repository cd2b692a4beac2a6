"""
Drivers: transports behind one interface (:mod:`trustp2p.drivers.base`).

Pick one by name or from a URL's scheme with :func:`driver_class`. Drivers are imported
only when used.

"""

from __future__ import annotations

__all__ = [
    "CONTROL_BURST",
    "CONTROL_RATE",
    "DROPPED",
    "FRAME_PROGRESS",
    "CloseCode",
    "Driver",
    "DriverEvent",
    "DriverOptions",
    "DriverSet",
    "Listener",
    "Listening",
    "Socket",
    "SocketStats",
    "check_peer_url",
    "driver_class",
    "scheme_of",
    "serve_streams",
]

import asyncio
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ..exceptions import DriverError, InvalidURL
from ..protocol.urls import check_dial_url
from .base import (
    CONTROL_BURST,
    CONTROL_RATE,
    DROPPED,
    FRAME_PROGRESS,
    CloseCode,
    Driver,
    DriverEvent,
    DriverOptions,
    Listener,
    Listening,
    Socket,
    SocketStats,
)

if TYPE_CHECKING:
    from ._accept import StreamServer as StreamServer  # serve_streams' result


async def serve_streams(
    factory: Callable[[], asyncio.BaseProtocol], host: str, port: int
) -> tuple[StreamServer, str]:
    """
    Accept stream connections on ``host`` and ``port`` as the tcp and ws drivers do,
    surviving a lack of file descriptors (one warning, accepting paused and tried again;
    asyncio's own accept loop logs a traceback per attempt, ever more of them): for a
    listener beside the drivers, the admin listener's.

    Returns:
        The server (``close()`` it), and the address it listens on, as ``host:port``.

    Raises:
        DriverError: If listening fails (its cause the ``OSError``).

    """
    from ._stream import serve

    return await serve(factory, host, port)


# name or URL scheme -> (module, class)
_DRIVERS: dict[str, tuple[str, str]] = {
    "ws": ("trustp2p.drivers.ws", "WsDriver"),
    "wss": ("trustp2p.drivers.ws", "WsDriver"),
    "memory": ("trustp2p.drivers.memory", "MemoryDriver"),
    "tcp": ("trustp2p.drivers.tcp", "TcpDriver"),
    # Optional, with trustp2p[fast]: WebSocket on picows, for ws:// and wss:// URLs.
    "picows": ("trustp2p.drivers.ws_picows", "PicowsDriver"),
}

# Drivers that need an optional package: name -> (package, extra that installs it)
_OPTIONAL: dict[str, tuple[str, str]] = {"picows": ("picows", "fast")}


def driver_class(name: str) -> type[Driver]:
    """
    Return the driver class for a name or URL scheme, e.g. ``"ws"``.

    Raises:
        DriverError: If no driver has that name, or it needs a package that isn't
            installed (``picows``: the ``fast`` extra, or ``pip install picows``).

    """
    try:
        module_name, class_name = _DRIVERS[name]
    except KeyError:
        known = ", ".join(sorted(_DRIVERS))
        raise DriverError(f"unknown driver {name!r}; known drivers: {known}") from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        package, extra = _OPTIONAL.get(name, ("", ""))
        if not package or exc.name != package:
            raise
        raise DriverError(
            f"the {name!r} driver needs the {package} package (trustp2p's {extra} extra): "
            f"pip install {package}"
        ) from exc
    cls: type[Driver] = getattr(module, class_name)
    return cls


def scheme_of(url: str) -> str:
    """
    Return the scheme of a peer URL, which names its driver.

    Raises:
        InvalidURL: If the URL has no scheme, or can't be read (``ws://[::1``).

    """
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:  # it named neither the URL nor where it came from
        raise InvalidURL(f"peer URL {url!r} is invalid: {exc}") from exc
    if not scheme:
        raise InvalidURL(f"peer URL {url!r} lacks a scheme such as ws://")
    return scheme


def check_peer_url(url: str) -> None:
    """
    Check a URL given to dial (``NodeOptions.peers``, ``--connect``,
    :meth:`~trustp2p.ClientRole.connect`): one check, one error type for all three.

    Raises:
        InvalidURL: If it has no scheme, or :func:`~trustp2p.protocol.urls.check_dial_url`
            refuses it (a scheme we don't dial, no host or port, credentials, a path...).

    """
    scheme_of(url)  # a URL without a scheme, or one that can't be read
    reason = check_dial_url(url)
    if reason is not None:
        raise InvalidURL(reason)


class DriverSet:
    """
    The drivers of one node, each made on first use with ``options``: by name, or the
    one a URL's scheme needs. ``configured`` is the node's ``driver`` option: a name or
    a driver object, which dials the URLs of its scheme (a named driver, such as
    ``picows``, dials ``ws://`` too); ``None`` picks by scheme.
    """

    def __init__(self, configured: str | Driver | None, options: DriverOptions) -> None:
        self._configured = configured
        self._options = options
        self._drivers: dict[str, Driver] = {}

    def get(self, name_or_driver: str | Driver) -> Driver:
        """The driver of that name (made now if it is the first use), or the driver."""
        if isinstance(name_or_driver, Driver):
            return name_or_driver
        driver = self._drivers.get(name_or_driver)
        if driver is None:
            cls = driver_class(name_or_driver)
            driver = self._drivers[name_or_driver] = cls(self._options)
        return driver

    def for_url(self, url: str) -> Driver:
        """
        The driver that dials ``url`` (without its ``/p2p/`` part).

        Raises:
            DriverError: If no driver serves its scheme, or the URL has none.

        """
        scheme = scheme_of(url)
        configured = self._configured
        if isinstance(configured, str) and configured != scheme:
            configured = self.get(configured)  # a named driver (picows) dials ws:// too
        if isinstance(configured, Driver) and scheme in {
            configured.scheme,
            f"{configured.scheme}s",
        }:
            return configured
        return self.get(scheme)
