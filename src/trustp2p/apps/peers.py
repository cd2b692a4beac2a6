"""The peers a node remembers (its peer store), listed for ``trustp2p peers``."""

from __future__ import annotations

__all__ = ["peers_json", "peers_table", "read_peers", "utc"]

import dataclasses
import datetime
from pathlib import Path
from typing import Any

from rich.table import Table

from ..admin.client import add_plain_row
from ..identity import short_id
from ..protocol.peers import address_of_key
from ..storage import data_dir
from ..storage.peerstore import STORE_FILE, PeerRecord, PeerStore


async def read_peers(cwd: Path, name: str = "node") -> list[PeerRecord]:
    """Every peer in the store of the node called ``name`` in the application directory
    ``cwd``; none if it has no store yet (listing doesn't create one)."""
    path = data_dir(cwd, name) / STORE_FILE
    if not path.exists():
        return []
    store = await PeerStore.open(path)
    try:
        return await store.peers()
    finally:
        await store.close()


def peers_json(records: list[PeerRecord]) -> list[dict[str, Any]]:
    """Every field of every record, and its score."""
    return [{**dataclasses.asdict(record), "score": record.score} for record in records]


def peers_table(records: list[PeerRecord]) -> Table:
    """Each peer's URLs, short peer id, score, when it was last seen and until when it
    is blocked (UTC)."""
    table = Table("url", "peer id", "score", "last seen", "blocked until")
    for record in records:
        add_plain_row(
            table,
            "\n".join(record.urls) or "-",
            _who(record.peer_id),
            f"{record.score:.2f}",
            utc(record.last_seen),
            utc(record.blocked_until),
        )
    return table


def _who(key: str | None) -> str:
    """A short peer id; for a peer known by its address alone (it proved no id, but its
    packages were counted or it was blocked), that address."""
    if key is None:
        return "-"
    address = address_of_key(key)
    return short_id(key) if address is None else f"address {address}"


def utc(timestamp: float | None) -> str:
    """A Unix time (s) as ``YYYY-MM-DDTHH:MM:SSZ``; ``-`` for ``None``."""
    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
