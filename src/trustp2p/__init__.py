"""trustp2p: a peer-to-peer network framework on asyncio."""

from __future__ import annotations

from ._build import build_name, compiled_modules
from ._version import __version__
from .drivers.base import CloseCode, Driver, DriverOptions, Socket, SocketStats
from .exceptions import (
    ChannelError,
    ConfigError,
    ConnectionClosed,
    ConnectionDropped,
    DriverError,
    GossipError,
    HandshakeClosed,
    HandshakeError,
    IdentityError,
    NodeStateError,
    PackageError,
    PackageTooLarge,
    PeerIdMismatch,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    SelfDialError,
    ThreadLoadError,
    TrustP2PError,
    UsageError,
    WorkerError,
)
from .loop import run
from .node import (
    BroadcastResult,
    ClientRole,
    Node,
    NodeState,
    PeerConnection,
    Role,
    ServerRole,
    create_client,
    create_node,
    create_server,
)
from .node.gossip import Validation, Validator
from .options import NodeOptions
from .protocol.gossip import GossipMessage
from .protocol.package import Body, Package, PackageType, Tag
from .threads.base import EventMap, Handler, Reply, Thread

__all__ = [
    "Body",
    "BroadcastResult",
    "ChannelError",
    "ClientRole",
    "CloseCode",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionDropped",
    "Driver",
    "DriverError",
    "DriverOptions",
    "EventMap",
    "GossipError",
    "GossipMessage",
    "Handler",
    "HandshakeClosed",
    "HandshakeError",
    "IdentityError",
    "Node",
    "NodeOptions",
    "NodeState",
    "NodeStateError",
    "Package",
    "PackageError",
    "PackageTooLarge",
    "PackageType",
    "PeerConnection",
    "PeerIdMismatch",
    "ProtocolError",
    "RemoteError",
    "Reply",
    "RequestTimeout",
    "Role",
    "SelfDialError",
    "ServerRole",
    "Socket",
    "SocketStats",
    "Tag",
    "Thread",
    "ThreadLoadError",
    "TrustP2PError",
    "UsageError",
    "Validation",
    "Validator",
    "WorkerError",
    "__version__",
    "build_name",
    "compiled_modules",
    "create_client",
    "create_node",
    "create_server",
    "run",
]
