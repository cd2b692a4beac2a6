"""The node: the asyncio shell that carries out the protocol's decisions."""

from __future__ import annotations

from .create import create_client, create_node, create_server
from .node import Node, NodeState, PeerConnection
from .roles import BroadcastResult, ClientRole, Role, ServerRole

__all__ = [
    "BroadcastResult",
    "ClientRole",
    "Node",
    "NodeState",
    "PeerConnection",
    "Role",
    "ServerRole",
    "create_client",
    "create_node",
    "create_server",
]
