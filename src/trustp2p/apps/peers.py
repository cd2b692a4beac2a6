"""The peers a node remembers (its peer store), listed for ``trustp2p peers``."""

from __future__ import annotations

__all__ = [
    "edit_blocks",
    "forget_urls",
    "peers_json",
    "peers_table",
    "pick_blocks",
    "read_peers",
    "utc",
]

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ..admin.client import add_plain_row
from ..identity import short_id
from ..protocol.hosts import address_key
from ..protocol.peers import address_of_key
from ..protocol.scoring import Block
from ..protocol.urls import address_of
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


async def forget_urls(cwd: Path, name: str, urls: Sequence[str]) -> list[str]:
    """
    Forget ``urls`` (each exactly as ``trustp2p peers`` lists it) in the store of the
    node called ``name`` in ``cwd``: a URL that never worked, stored by an earlier
    version (tester37 F1: a typo given with ``--connect`` was dialled by every later
    run), or one without the ``/p2p/<id>`` pin it should have had. The node must be
    stopped (a running node keeps its peers in memory): the caller checks.

    Returns:
        An error for each URL the store doesn't hold.

    """
    path = data_dir(cwd, name) / STORE_FILE
    if not path.exists():
        return [f"{url} is not in the peer store (no peer store yet)" for url in urls]
    store = await PeerStore.open(path)
    try:
        missed = [url for url in urls if not await store.forget(url)]
        stored = [url for record in await store.peers() for url in record.urls] if missed else []
    finally:
        await store.close()
    errors = []
    for url in missed:
        # (review50 R6: the bare spelling of a pinned entry, or a trailing /, was "not
        # in the peer store" with no word of the spelling stored)
        like = [other for other in stored if address_of(other) == address_of(url)]
        hint = f" (as {', '.join(like)}? give it as listed)" if like else ""
        errors.append(f"{url} is not in the peer store{hint}")
    return errors


BlockRow = tuple[str, str, Block]


async def edit_blocks(
    cwd: Path, name: str, keys: Sequence[str], *, everything: bool = False
) -> tuple[list[BlockRow], list[BlockRow], list[str]]:
    """
    Lift the blocks that ``keys`` name (:func:`pick_blocks`), or every block, in the
    store of the node called ``name`` in ``cwd``. The node must be stopped (a running
    node keeps its blocks in memory): the caller checks.

    Returns:
        The blocks in force before, those lifted, and an error for each key that names
        none.

    """
    path = data_dir(cwd, name) / STORE_FILE
    if not path.exists():
        return [], [], [f"{key} is not blocked (no peer store yet)" for key in keys]
    store = await PeerStore.open(path)
    try:
        blocks = store.blocks()
        lifted, errors = (blocks, []) if everything else pick_blocks(blocks, keys)
        for kind, key, _ in lifted:
            await store.unblock(**{"address" if kind == "address" else "peer_id": key})
    finally:
        await store.close()
    return blocks, lifted, errors


def pick_blocks(
    blocks: Sequence[BlockRow], keys: Sequence[str]
) -> tuple[list[BlockRow], list[str]]:
    """
    The blocks that ``keys`` name, and an error for each key that names none (or more
    than one). A key is a peer id, or its first characters if no other blocked id
    starts with them (``trustp2p peers`` shows ``tp`` and 8 more); or an IP address
    (an IPv6 address names its /64's block), or an address block as listed.
    """
    chosen: list[BlockRow] = []
    errors = []
    for text in keys:
        found = [row for row in blocks if row[1] in (text, address_key(text))]
        if not found and text:
            found = [row for row in blocks if row[0] == "peer" and row[1].startswith(text)]
        if len(found) > 1 and found[0][1] != text:
            errors.append(f"{text!r} starts {len(found)} blocked peer ids: give more of it")
            continue
        if not found:
            errors.append(f"{text!r} is not blocked")
        chosen += [row for row in found if row not in chosen]
    return chosen, errors


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
