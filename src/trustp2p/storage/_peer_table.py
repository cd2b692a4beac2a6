"""
The peer store's memory: every peer, URL and block it knows, indexed by key, peer id
and URL, with what changed since the last write. It merges records that turn out to be
one peer, forgets the least useful peers past a limit, and takes in what the database
holds. No I/O: :class:`~trustp2p.storage.peerstore.PeerStore` writes its batches.

Private to :mod:`trustp2p.storage`.

"""

from __future__ import annotations

__all__ = ["MAX_BLOCKS", "PeerTable"]

import heapq
import secrets
from collections.abc import Iterable

from ..protocol.limits import address_key
from ..protocol.peers import is_address_key
from ..protocol.scoring import SUCCESS_SPACING, Block
from ..protocol.shared_text import share
from ..protocol.urls import MAX_URL_LENGTH, MAX_URLS_PER_PEER, split_peer_url
from ._peer_eviction import forgettable, teller_group
from ._peer_records import (
    ADDRESS,
    PEER,
    Batch,
    Loaded,
    Peer,
    PeerSource,
    Url,
    logger,
    peer_from_row,
    peer_row,
    url_age,
    url_row,
)

_KEY_BYTES = 8
"""Random bytes in a record's key (16 hex digits): unique among 10 000s of peers."""


def _keep_longer(table: dict[str, Block], key: str, block: Block) -> bool:
    """Put ``block`` in ``table`` unless the block there lasts as long; True if it did."""
    current = table.get(key)
    if current is not None and current.until >= block.until:
        return False
    table[key] = block
    return True


def _claimed(entry: Url) -> bool:
    """Whether ``entry`` is only claimed: a peer announced it as its own (hello,
    ``my_url``), and no dial of ours ever proved who answers there."""
    return entry.last_connected is None and entry.peer.peer_id is not None


MAX_BLOCKS = 10_000
"""Blocks kept of each kind (peer ids, addresses)."""


class PeerTable:
    """
    The store's records in memory, and the keys changed since the last batch (a key no
    longer in memory is deleted from the database).

    Args:
        max_peers: Peers kept, a tenth more at most between two passes (see
            :meth:`evict`); None: no limit.

    """

    def __init__(self, max_peers: int | None) -> None:
        self.max_peers = max_peers
        self.peers: dict[str, Peer] = {}
        self.by_id: dict[str, Peer] = {}
        self.by_url: dict[str, Url] = {}
        # Peers we had connected to successfully before this run (keys): the only ones,
        # with bootstrap peers, that anchor a client (see PeerStore.anchor_candidates).
        self.known_before: set[str] = set()
        self.blocked_ids: dict[str, Block] = {}
        self.blocked_addresses: dict[str, Block] = {}
        self.blocks = {PEER: self.blocked_ids, ADDRESS: self.blocked_addresses}
        self.dirty_peers: set[str] = set()
        self.dirty_urls: set[str] = set()
        self.dirty_blocks: set[tuple[str, str]] = set()

    # Records.

    def new_peer(self, peer_id: str | None, source: PeerSource, now: float) -> Peer:
        peer = Peer(secrets.token_hex(_KEY_BYTES), peer_id, source, now, now)
        self.peers[peer.key] = peer
        if peer_id is not None:
            self.by_id[peer_id] = peer
        self.dirty_peers.add(peer.key)
        return peer

    def attach(self, url: str, peer: Peer, now: float) -> Url:
        """Record ``url`` as one of ``peer``'s; past MAX_URLS_PER_PEER its oldest goes."""
        if len(peer.urls) >= MAX_URLS_PER_PEER:
            # A peer announcing ever new URLs must not grow the store: forget its oldest.
            oldest = min(peer.urls.values(), key=url_age)
            del peer.urls[oldest.url]
            del self.by_url[oldest.url]
            self.dirty_urls.add(oldest.url)
        entry = Url(url, peer, now)
        peer.urls[url] = entry
        self.by_url[url] = entry
        self.dirty_urls.add(url)
        return entry

    def add_urls(
        self,
        urls: Iterable[str],
        source: PeerSource,
        peer_id: str | None,
        now: float,
        teller: str | None = None,
    ) -> None:
        """:meth:`~trustp2p.storage.peerstore.PeerStore.add_urls`' rules, in memory."""
        teller = None if teller is None else teller_group(teller)
        owner = None
        if peer_id is not None:
            owner = self.by_id.get(peer_id) or self.new_peer(peer_id, source, now)
        pin = f"/p2p/{peer_id}" if owner is not None and self._is_pinned(owner) else ""
        for url in urls:
            if pin and "/p2p/" not in url and len(url) + len(pin) <= MAX_URL_LENGTH:
                url += pin  # (its own, and the operator pinned it: review51 R7)
            self._dispute(url, peer_id, source, now)
            entry = self.by_url.get(url)
            if entry is None and source is not PeerSource.BOOTSTRAP and self._pinned(url):
                continue  # only the operator's pin renames an entry (review50 R2)
            entry = entry or self._pin_known(url) or self._pinned_twin(url, owner)
            if entry is None:
                peer = owner if owner is not None else self.new_peer(None, source, now)
                entry = self.attach(url, peer, now)
            if teller is not None:
                self._told(entry, teller)
            peer = entry.peer
            if source is PeerSource.BOOTSTRAP and peer.source is not PeerSource.BOOTSTRAP:
                peer.source = PeerSource.BOOTSTRAP
                self.dirty_peers.add(peer.key)

    def _told(self, entry: Url, teller: str) -> None:
        """A server of network group ``teller`` named ``entry`` (see ``Url.teller``)."""
        if entry.teller is None:
            entry.teller = teller
        elif entry.teller != teller and not entry.teller.startswith("+"):
            entry.teller = share("+" + entry.teller)
        else:
            return
        self.dirty_urls.add(entry.url)

    def _dispute(self, url: str, peer_id: str | None, source: PeerSource, now: float) -> None:
        """
        ``url`` is reported as ``peer_id``'s (None: owner unknown; ``<dial URL>/p2p/<id>``
        names ``<id>`` as its dial URL's): a URL that another peer only claimed (see
        :func:`_claimed`) is no longer that peer's (:meth:`disown`). Found by an
        attacker (attacker36 F3): a peer announced other ports of its host as its own,
        and a server that later ran there, passed on by an honest peer, was never
        dialled: its URL stayed the claimant's, a peer connected already.
        """
        entry = self.by_url.get(url)
        if entry is not None and _claimed(entry) and entry.peer.peer_id != peer_id:
            self.disown(entry, source, now)
        try:
            dial_url, named = split_peer_url(url)
        except ValueError:
            return
        entry = self.by_url.get(dial_url) if named is not None else None
        if entry is not None and _claimed(entry) and entry.peer.peer_id != named:
            self.disown(entry, source, now)

    def disown(self, entry: Url, source: PeerSource, now: float) -> None:
        """Take a claimed URL from its claimant: a peer of its own, id unknown (heard of
        from ``source``), until a dial proves who answers there (:meth:`claim`)."""
        claimant = entry.peer
        del claimant.urls[entry.url]
        entry.peer = self.new_peer(None, source, now)
        entry.peer.urls[entry.url] = entry
        self.dirty_urls.add(entry.url)
        logger.debug("= %s: no longer counted as %s's, its claim only", entry.url, claimant.peer_id)

    def met_at(self, url: str) -> str | None:
        """The peer key that answered when we last connected at ``url``, if any: not one
        that only announced the URL."""
        entry = self.by_url.get(url)
        if entry is None or entry.last_connected is None:
            return None
        return entry.peer.peer_id

    def _pin_known(self, url: str) -> Url | None:
        """
        If ``url`` is ``<known URL>/p2p/<id>`` and that URL is ``<id>``'s already: that
        entry, renamed ``url`` (with its history). The pinned form wins, being strictly
        stronger: the one stored is dialled expecting ``<id>``, and the unpinned one
        would be dialled accepting any key (tester37 F2: a pin given with ``--connect``
        was dropped for the unpinned entry, and a later run took another key there).
        """
        try:
            dial_url, expected = split_peer_url(url)
        except ValueError:
            return None
        entry = self.by_url.get(dial_url) if expected is not None else None
        if entry is None or entry.peer.peer_id != expected:
            return None
        del self.by_url[dial_url], entry.peer.urls[dial_url]
        self.dirty_urls.update((dial_url, url))
        entry.url = url
        self.by_url[url] = entry.peer.urls[url] = entry
        logger.debug("= %s: stored with the peer id it names", url)
        return entry

    @staticmethod
    def _is_pinned(peer: Peer) -> bool:
        """Whether the store dials ``peer`` by a URL that names its id: its other URLs,
        which it announces, are its with that pin too (review51 R7: a pin given on
        another spelling of its address, a name, left the address it announced to any
        key)."""
        pin = f"/p2p/{peer.peer_id}"
        return peer.peer_id is not None and any(url.endswith(pin) for url in peer.urls)

    def _pinned(self, url: str) -> bool:
        """Whether ``url`` is ``<known URL>/p2p/<id>`` and that URL is ``<id>``'s: from
        hearsay, the same entry (stored once, unpinned)."""
        try:
            dial_url, expected = split_peer_url(url)
        except ValueError:
            return False
        entry = self.by_url.get(dial_url) if expected is not None else None
        return entry is not None and entry.peer.peer_id == expected

    def _pinned_twin(self, url: str, peer: Peer | None) -> Url | None:
        """The entry ``<url>/p2p/<id>`` of ``peer`` (``<id>``), if it holds one: then
        the unpinned ``url`` is not stored beside it (see :meth:`_pin_known`)."""
        if peer is None or peer.peer_id is None or "/p2p/" in url or is_address_key(peer.peer_id):
            return None
        return peer.urls.get(f"{url}/p2p/{peer.peer_id}")

    def forget_url(self, url: str) -> None:
        """Forget ``url`` (its peer stays, with its history)."""
        entry = self.by_url.pop(url, None)
        if entry is not None:
            entry.peer.urls.pop(url, None)
            self.dirty_urls.add(url)

    def forget(self, url: str) -> bool:
        """Forget ``url`` by hand, and its peer if that URL was all we knew of it."""
        entry = self.by_url.get(url)
        if entry is None:
            return False
        self.forget_url(url)
        peer = entry.peer
        if peer.peer_id is None and not peer.urls and self.peers.get(peer.key) is peer:
            del self.peers[peer.key]
            self.dirty_peers.add(peer.key)
        return True

    def restart_window(self, key: str) -> bool:
        """Start the package window of the peer ``key`` afresh (``PeerStore``'s);
        False if the store doesn't know it."""
        peer = self.by_id.get(key)
        if peer is None:
            return False
        logger.debug(
            "= restarted the package window of %s after %d invalid of %d packages",
            key,
            peer.window_invalid,
            peer.window_good + peer.window_invalid,
        )
        peer.window_good = peer.window_invalid = 0
        self.dirty_peers.add(peer.key)
        return True

    def claim(self, url: str, peer_id: str, now: float, source: PeerSource) -> Url:
        """Link ``url`` to ``peer_id``, which answered there; a URL the store doesn't
        hold is stored, a new peer's as heard of from ``source``."""
        owner = self.by_id.get(peer_id)
        entry = self.by_url.get(url)
        if entry is None:
            # The application's URLs are stored once they worked (tester37 F1); any
            # other may have left the store while we dialled it. The pinned form wins
            # (its unpinned one renamed; the pinned one, if stored, is what this dial
            # proved).
            entry = self._pin_known(url) or self._pinned_twin(url, owner)
            if entry is None:
                owner = owner or self.new_peer(peer_id, source, now)
                entry = self.attach(url, owner, now)
            return entry
        current = entry.peer
        if current.peer_id == peer_id:
            return entry
        if current.peer_id is None:
            if owner is None:
                current.peer_id = peer_id
                self.by_id[peer_id] = current
                self.dirty_peers.add(current.key)
            else:
                self.merge(owner, current)
            if (twin := self._pinned_twin(url, entry.peer)) is not None:
                self.forget_url(url)  # the same endpoint as the pinned entry
                return twin
            return entry
        # Another key answers at this URL now (the host changed hands, or its key): not
        # a bootstrap peer for it (review50 R8: whoever answered at a bootstrap peer's
        # announced URL became an anchor; the operator's own URL is marked again at the
        # next start, as its other URLs).
        if owner is None:
            source = current.source
            if source is PeerSource.BOOTSTRAP:
                source = PeerSource.EXCHANGE
            owner = self.new_peer(peer_id, source, now)
        del current.urls[url]
        entry.peer = owner
        owner.urls[url] = entry
        self.dirty_urls.add(url)
        return entry

    def connected(self, peer_id: str, url: str | None, now: float, bootstrap: bool) -> Peer:
        """
        We connected to ``peer_id`` (at ``url`` if we dialled it): link the URL to the
        id (an address key, in plain mode, proves no id: the URL keeps a record of its
        own), reset its failures, and count a success (:meth:`worked`). A URL the
        application gave (``bootstrap``) makes its peer a bootstrap peer; no other
        does (review50 R1, review51 R6: a URL that left the store while we dialled it
        made any peer an anchor).
        """
        if url is None:
            peer = self.by_id.get(peer_id) or self.new_peer(peer_id, PeerSource.INBOUND, now)
        else:
            source = PeerSource.BOOTSTRAP if bootstrap else PeerSource.EXCHANGE
            if is_address_key(peer_id):
                entry = self.by_url.get(url) or self.attach(
                    url, self.new_peer(None, source, now), now
                )
            else:
                entry = self.claim(url, peer_id, now, source)
            entry.last_connected = now
            entry.failures = 0
            self.dirty_urls.add(url)
            peer = entry.peer
            if bootstrap and peer.source is not PeerSource.BOOTSTRAP:
                peer.source = PeerSource.BOOTSTRAP  # (review51 R1: a pin's, kept)
                self.dirty_peers.add(peer.key)
        self.worked(peer, now)
        return peer

    def held(self, peer_id: str, url: str, now: float) -> bool:
        """
        A connection we dialled to ``peer_id`` at ``url`` is still open: the URL and
        the peer worked now, and a link held :data:`SUCCESS_SPACING` counts a success
        as a new connection would (review38: a link held for months earned one point,
        a peer that closed it each hour to be redialled one an hour). Nothing for a URL
        the store no longer links to that peer. True if a success was counted.
        """
        entry = self.by_url.get(url)
        if entry is None or (entry.peer.peer_id or peer_id) != peer_id:
            return False
        if entry.peer.peer_id is None and not is_address_key(peer_id):
            entry = self.claim(url, peer_id, now, PeerSource.EXCHANGE)  # (review39)
        entry.last_connected = now  # (the URL worked: see is_dead)
        self.dirty_urls.add(url)
        return self.worked(entry.peer, now, opened=False)

    def worked(self, peer: Peer, now: float, *, opened: bool = True) -> bool:
        """
        ``peer`` worked now: a connection ``opened`` (its ``last_connected``), or one
        still open; a success is counted if the last one counted is
        :data:`SUCCESS_SPACING` old (one an hour at most). True if one was counted.
        """
        peer.last_seen = now
        if opened:
            peer.last_connected = now
        self.dirty_peers.add(peer.key)
        if peer.counted_at is not None and now - peer.counted_at < SUCCESS_SPACING:
            return False
        peer.successes += 1
        peer.counted_at = now
        return True

    def merge(self, keeper: Peer, other: Peer) -> None:
        """
        Fold ``other`` into ``keeper``: a record of the same peer, either one without
        id that turned out to be it, or the stored copy of it (see :meth:`absorb`).
        """
        keeper.successes += other.successes
        keeper.failures += other.failures
        keeper.good_packages += other.good_packages
        keeper.invalid_packages += other.invalid_packages
        keeper.window_good += other.window_good
        keeper.window_invalid += other.window_invalid
        keeper.first_seen = min(keeper.first_seen, other.first_seen)
        keeper.last_seen = max(keeper.last_seen, other.last_seen)
        if other.last_connected is not None:
            keeper.last_connected = max(keeper.last_connected or 0.0, other.last_connected)
        if other.counted_at is not None:
            keeper.counted_at = max(keeper.counted_at or 0.0, other.counted_at)
        if keeper.address is None:
            keeper.address = other.address
        if other.source is PeerSource.BOOTSTRAP:
            keeper.source = PeerSource.BOOTSTRAP
        for url, entry in other.urls.items():
            self.dirty_urls.add(url)
            known = self.by_url.get(url)
            if known is not None and known is not entry:
                continue  # what memory knows of this URL wins
            entry.peer = keeper
            keeper.urls[url] = entry
            self.by_url[url] = entry
        other.urls = {}
        for url in [url for url in keeper.urls if self._pinned_twin(url, keeper)]:
            self.forget_url(url)  # (its hello came before our dial's record: see claim)
        if self.peers.get(other.key) is other:
            del self.peers[other.key]
        if other.peer_id is not None and self.by_id.get(other.peer_id) is other:
            del self.by_id[other.peer_id]
        self.dirty_peers.add(other.key)  # no longer in memory: deleted at the next flush
        self.dirty_peers.add(keeper.key)

    def evict(self) -> int:
        """Once a tenth more than ``max_peers`` are kept, forget the least useful down
        to ``max_peers`` (:func:`forgettable`): ranking every peer each time one is added
        to a full store made each new peer cost ten times as much (found by an
        attacker's test of 12,000 identities). Past ``max_peers``, not below it
        (review59 R3: a store full before a flood of one teller's URLs forgot a tenth
        of itself, the oldest untried URLs, for its first answer; a tenth later, the
        flood is past its teller's share, and goes first)."""
        if self.max_peers is None or len(self.peers) <= self.max_peers + self.max_peers // 10:
            return 0
        excess = len(self.peers) - self.max_peers
        for peer in forgettable(self.peers.values(), excess):
            del self.peers[peer.key]
            if peer.peer_id is not None:
                del self.by_id[peer.peer_id]
            for url in peer.urls:
                del self.by_url[url]
                self.dirty_urls.add(url)
            self.dirty_peers.add(peer.key)
        logger.debug("= peer store full: forgot %d peers", excess)
        return excess

    # Blocks.

    def add_block(self, kind: str, key: str, block: Block) -> None:
        """Keep ``block`` of ``key``, unless a block of it already lasts longer. Past
        :data:`MAX_BLOCKS` of its kind, the tenth that end soonest are forgotten (found
        by an attacker: a block per throwaway identity, 33,524 in 140 s, kept an hour)."""
        table = self.blocks[kind]
        if _keep_longer(table, key, block):
            self.dirty_blocks.add((kind, key))
        if len(table) > MAX_BLOCKS:
            for old in heapq.nsmallest(MAX_BLOCKS // 10, table, key=lambda k: table[k].until):
                del table[old]
                self.dirty_blocks.add((kind, old))
            logger.debug("= %d blocks of %ss: forgot those ending soonest", MAX_BLOCKS, kind)

    def remove_block(self, kind: str, key: str) -> Block | None:
        """Forget the block of ``key`` (lifted by hand); the block it was, if any."""
        block = self.blocks[kind].pop(key, None)
        if block is not None:
            self.dirty_blocks.add((kind, key))
        return block

    def active_blocks(self, now: float) -> list[tuple[str, str, Block]]:
        """The blocks in force at ``now``: (kind, key, block), by kind then key."""
        return [
            (kind, key, block)
            for kind, table in self.blocks.items()
            for key, block in sorted(table.items())
            if block.active(now)
        ]

    def prune(self, now: float) -> None:
        """Forget the blocks over at ``now``."""
        for kind, table in self.blocks.items():
            expired = [key for key, block in table.items() if not block.active(now)]
            for key in expired:
                del table[key]
                self.dirty_blocks.add((kind, key))

    # What the database holds, and what goes to it.

    def absorb(self, loaded: Loaded, now: float) -> None:
        """
        Take in the rows read from the database. At open, memory is empty; when the
        database could only be opened later, rows of peers met meanwhile are merged.
        """
        peer_rows, url_rows, block_rows = loaded
        stored: dict[str, Peer] = {}
        for row in peer_rows:
            try:
                peer = peer_from_row(row)
            except (TypeError, ValueError):
                logger.warning("! dropped a malformed peer store row: %r", row)
                self.dirty_peers.add(str(row[0]))
                continue
            stored[peer.key] = peer
        for url, key, first_seen, last_connected, failures, teller in url_rows:
            owner = stored.get(key)
            if owner is None:
                self.dirty_urls.add(url)  # an orphan: deleted at the next flush
                continue
            entry = Url(url, owner, first_seen, last_connected, failures)
            entry.teller = None if teller is None else share(str(teller))
            owner.urls[url] = entry
        for peer in stored.values():
            met_before = peer.successes > 0
            survivor = self._adopt(peer)
            if met_before:
                self.known_before.add(survivor.key)
        for kind, key, until, reason in block_rows:
            if kind not in self.blocks or until <= now:
                self.dirty_blocks.add((kind, key))
                continue
            if kind == ADDRESS and (wider := address_key(key)) != key:
                # An IPv6 address blocked before blocks covered its /64: its /64 now.
                self.dirty_blocks |= {(kind, key), (kind, wider)}
                key = wider
            _keep_longer(self.blocks[kind], key, Block(until, reason))
        self.evict()

    def _adopt(self, peer: Peer) -> Peer:
        """Take in one stored peer (with its URLs), merging it with what memory knows;
        return the record that holds it now."""
        target = self.by_id.get(peer.peer_id) if peer.peer_id is not None else None
        if target is None:
            for url in peer.urls:
                known = self.by_url.get(url)
                if known is not None and known.peer.peer_id in (None, peer.peer_id):
                    target = known.peer
                    break
        if target is None:
            self.peers[peer.key] = peer
            if peer.peer_id is not None:
                self.by_id[peer.peer_id] = peer
            for url, entry in list(peer.urls.items()):
                if url in self.by_url:
                    # Memory knows it as another peer's: memory wins.
                    del peer.urls[url]
                    self.dirty_urls.add(url)
                else:
                    self.by_url[url] = entry
            return peer
        if target.peer_id is None and peer.peer_id is not None:
            target.peer_id = peer.peer_id
            self.by_id[peer.peer_id] = target
        self.merge(target, peer)
        return target

    def take_batch(self) -> Batch | None:
        """The rows changed since the last batch (None: nothing), and start afresh."""
        if not (self.dirty_peers or self.dirty_urls or self.dirty_blocks):
            return None
        batch = Batch(self.dirty_peers, self.dirty_urls, self.dirty_blocks)
        self.dirty_peers, self.dirty_urls, self.dirty_blocks = set(), set(), set()
        for key in batch.peer_keys:
            peer = self.peers.get(key)
            if peer is None:
                batch.peer_deletes.append((key,))
            else:
                batch.peers.append(peer_row(peer))
        for url in batch.url_keys:
            entry = self.by_url.get(url)
            if entry is None:
                batch.url_deletes.append((url,))
            else:
                batch.urls.append(url_row(entry))
        for kind, key in batch.block_keys:
            block = self.blocks.get(kind, {}).get(key)
            if block is None:
                batch.block_deletes.append((kind, key))
            else:
                batch.blocks.append((kind, key, block.until, block.reason))
        return batch

    def snapshot(self) -> Loaded:
        """Every row, as the database would hand them back at open (for a shelf)."""
        urls = [url_row(entry) for entry in self.by_url.values()]
        blocks = [
            (kind, key, block.until, block.reason)
            for kind, kept in self.blocks.items()
            for key, block in kept.items()
        ]
        return [peer_row(peer) for peer in self.peers.values()], urls, blocks

    def discard_changes(self) -> None:
        self.dirty_peers.clear()
        self.dirty_urls.clear()
        self.dirty_blocks.clear()

    def restore(self, batch: Batch) -> None:
        """Take back a batch that may not be written, to write it again."""
        self.dirty_peers |= batch.peer_keys
        self.dirty_urls |= batch.url_keys
        self.dirty_blocks |= batch.block_keys

    def unsaved(self) -> int:
        return len(self.dirty_peers) + len(self.dirty_urls) + len(self.dirty_blocks)
