"""trustp2p: a peer-to-peer network framework on asyncio."""

from __future__ import annotations

__version__ = "0.1.0"

from .drivers.base import CloseCode, Driver, DriverOptions, Socket, SocketStats
from .exceptions import (
    ConnectionClosed,
    DriverError,
    HandshakeError,
    PackageError,
    RequestTimeout,
    ThreadLoadError,
    TrustP2PError,
)
from .node import (
    BroadcastResult,
    ClientRole,
    Node,
    NodeState,
    Role,
    ServerRole,
    create_client,
    create_node,
    create_server,
)
from .options import NodeOptions
from .protocol.package import Body, Package, PackageType, Tag
from .threads.base import EventMap, Handler, Thread

__all__ = [
    "Body",
    "BroadcastResult",
    "ClientRole",
    "CloseCode",
    "ConnectionClosed",
    "Driver",
    "DriverError",
    "DriverOptions",
    "EventMap",
    "Handler",
    "HandshakeError",
    "Node",
    "NodeOptions",
    "NodeState",
    "Package",
    "PackageError",
    "PackageType",
    "RequestTimeout",
    "Role",
    "ServerRole",
    "Socket",
    "SocketStats",
    "Tag",
    "Thread",
    "ThreadLoadError",
    "TrustP2PError",
    "__version__",
    "create_client",
    "create_node",
    "create_server",
]
