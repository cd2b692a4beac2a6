"""
The applications built on the node, behind the ``trustp2p`` command: the application
directory (:mod:`.appdir`), running a node until a signal (:mod:`.serve`), the peer
store listing (:mod:`.peers`), the local demo network (:mod:`.demo`) and the network
simulator (:mod:`.simulate`).

They use the node's public API only; the command line (``trustp2p.cli``) parses
options and calls them.

"""

from __future__ import annotations

__all__: list[str] = []
