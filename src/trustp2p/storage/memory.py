"""
A shelf in memory, in place of the stores' SQLite files: :class:`MemoryShelf`.

A node given a shelf (the ``store_shelf`` option) keeps its peer store and message log
in memory only, with no file and no worker thread, and puts what they hold on the shelf
when it stops; a node started again with the same shelf takes it back, as a node started
again in the same directory reads its files. The in-process
:class:`~trustp2p.testing.Network` gives each of its nodes one, so that a thousand
simulated nodes don't run two thousand SQLite threads, and a restarted node still
delivers each message once and continues its sequence numbers.

What goes on the shelf is what the store's database would hand back at open (its
``Loaded``): the stores take it in through the same path, so a shelf behaves like a file
that was written at every close, and never fails.

"""

from __future__ import annotations

__all__ = ["MemoryShelf"]

from typing import Any


class MemoryShelf:
    """What one node's stores keep between a stop and the next start, in this process."""

    def __init__(self) -> None:
        self._kept: dict[str, Any] = {}

    def put(self, name: str, contents: Any) -> None:
        """Keep what the store ``name`` (e.g. ``"peer store"``) holds as it closes."""
        self._kept[name] = contents

    def take(self, name: str) -> Any | None:
        """What the store ``name`` left at its last close, or None; it is taken off."""
        return self._kept.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._kept
