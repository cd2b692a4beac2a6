"""
What a node keeps on disk, in ``<cwd>/data/`` (:data:`DATA_DIR`):

- :mod:`trustp2p.storage.peerstore`: the peers it knows, how they behaved, whom it blocks;
- :mod:`trustp2p.storage.msglog`: the recent gossip messages, for catch-up;
- :mod:`trustp2p.storage.writebehind`: what both share: state kept in memory, written
  behind to SQLite by one worker thread, never failing because of the disk.

"""

from __future__ import annotations

__all__ = ["DATA_DIR", "data_dir"]

from pathlib import Path

DATA_DIR = "data"
"""The directory of the node's data, relative to its cwd."""


def data_dir(cwd: Path, name: str = "node") -> Path:
    """The data directory of the node called ``name`` in the application directory
    ``cwd`` (see :meth:`trustp2p.identity.Identity.claim`): ``data/`` for ``node``, the
    first, else ``data/<name>/`` (``data/node-2/``...)."""
    return cwd / DATA_DIR if name == "node" else cwd / DATA_DIR / name
