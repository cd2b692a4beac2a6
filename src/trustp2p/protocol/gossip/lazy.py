"""
The router's bookkeeping for lazy gossip (``ihave`` and ``iwant``), no I/O:

- :class:`Holders`: the peers known to have each recent message, not told of it again,
  and those it was served to on ``iwant``, once each;
- :class:`Asks`: the ids asked for in ``iwant`` and not received yet: of whom, since
  when, and which other peers announced each meanwhile, whom to ask next. Bounded per
  peer (``max_asks``), so that a peer announcing ids it never serves can't grow our
  memory or have us echo them; and the peers that let an ask time out lately (broken
  promises, as GossipSub v1.1 calls them), asked after the others for
  :data:`BROKEN_FOR`; and, for :data:`LATE_FOR` timeouts, the ids given up on, each
  still taken as asked of the peer it was asked of (its late answer is a pull).

"""

from __future__ import annotations

__all__ = ["BROKEN_FOR", "LATE_FOR", "SET_FROM", "Asks", "Holders"]

import math
from collections.abc import Container

from .control import PeerKey

SET_FROM = 16
"""Peers noted for a message (:class:`Holders`) kept in a list up to this many, then in
a set: a server announces each id to every peer refused a mesh seat, hundreds, and
checking a list of hundreds for each of them and each id took a heartbeat's time."""

_Peers = list[PeerKey] | set[PeerKey]

BROKEN_FOR = 60.0
"""Seconds a peer that announced an id and let our ask for it time out is asked after
the others: an id asked of it is asked at once of the next peer that announces it and
broke no promise lately, and that peer's word goes before it among whom to ask next.
Found by an attacker: one identity announcing each new message first and serving none
made a node ask it alone; the retry, 3 s later, reached the honest relay past its
serving window, and every message of the topic came 12-30 s late, by catch-up."""

LATE_FOR = 3.0
"""Timeouts (``iwant_timeout``) after an ask is given up on (the id asked of another, or
of nobody) that the id is still taken as asked of the peer it was asked of, its last
``max_asks`` such ids at most, so that its late answer is a pull (its check spent as
asked), not a push: found in review (review90 F3), an honest peer's answer past the 1 s
timeout was charged to its share of the messages pushed unasked, and could have the node
stop reading it. Expired at the heartbeat (:meth:`Asks.again`), or as the peer goes; kept
after the message came (another copy is a duplicate, dropped before any check)."""


class Asks:
    """The ids asked for in an ``iwant``, neither received nor given up yet."""

    __slots__ = ("_asked", "_asking", "_broken", "_late", "_offers", "_retried", "broken")

    def __init__(self) -> None:
        # Ids in an iwant -> when, and whom (None: it left, ask another at the heartbeat).
        self._asked: dict[str, tuple[float, PeerKey | None]] = {}
        self._asking: dict[PeerKey, set[str]] = {}  # peer -> those of the ids it was asked
        # Other peers that announced an id while it was asked for: whom to ask next.
        self._offers: dict[str, list[PeerKey]] = {}
        self._broken: dict[PeerKey, float] = {}  # peer -> when its last ask timed out
        self._retried: set[str] = set()  # ids asked again of a peer that announced earlier
        # peer -> ids given up on that were asked of it -> when, oldest first (LATE_FOR)
        self._late: dict[PeerKey, dict[str, float]] = {}
        self.broken = 0  # asks timed out (promises broken), counted

    def add_peer(self, peer: PeerKey) -> None:
        self._asking.setdefault(peer, set())

    def remove_peer(self, peer: PeerKey) -> None:
        for message_id in self._asking.pop(peer, ()):  # asked of another at the heartbeat
            self._asked[message_id] = (-math.inf, None)
        self._broken.pop(peer, None)
        self._late.pop(peer, None)

    def _is_broken(self, peer: PeerKey | None, now: float) -> bool:
        """Whether ``peer`` let an ask time out within :data:`BROKEN_FOR`."""
        return peer is not None and now - self._broken.get(peer, -math.inf) < BROKEN_FOR

    def asked_of(self, peer: PeerKey, message_id: str) -> bool:
        """Whether ``message_id`` is asked of ``peer`` (in an ``iwant``), not received,
        or was given up on within :data:`LATE_FOR` timeouts (a late answer)."""
        return message_id in self._asking.get(peer, ()) or message_id in self._late.get(peer, ())

    def _give_up(self, peer: PeerKey, message_id: str, now: float, max_late: int) -> None:
        """``message_id`` is no longer asked of ``peer``: its answer is late from now on
        (:data:`LATE_FOR`), among the last ``max_late`` of its ids given up on."""
        self._asking[peer].discard(message_id)
        late = self._late.setdefault(peer, {})
        late.pop(message_id, None)  # (its place: the newest)
        late[message_id] = now
        while len(late) > max_late:
            del late[next(iter(late))]

    def _expire_late(self, now: float, late_for: float) -> None:
        """Forget the ids given up on more than ``late_for`` seconds ago."""
        for peer, late in list(self._late.items()):
            while late and now - next(iter(late.values())) > late_for:
                del late[next(iter(late))]
            if not late:
                del self._late[peer]

    def answered_badly(self, peer: PeerKey, message_id: str) -> None:
        """``peer`` answered ``message_id`` with a message that doesn't check out: its
        ask is used (one check a peer and ask); another peer is asked at the heartbeat."""
        late = self._late.get(peer)
        if late is not None:
            late.pop(message_id, None)
        asking = self._asking.get(peer)
        if asking is not None and message_id in asking:
            asking.discard(message_id)
            self._asked[message_id] = (-math.inf, None)

    def forget(self, message_id: str) -> None:
        """The message arrived: the ask is over."""
        asked = self._asked.pop(message_id, None)
        if asked is not None and asked[1] is not None:
            self._asking[asked[1]].discard(message_id)
        self._offers.pop(message_id, None)
        self._retried.discard(message_id)

    def announced(
        self,
        peer: PeerKey,
        ids: list[str],
        seen: Container[str],
        now: float,
        *,
        max_asks: int,
        max_offers: int,
    ) -> tuple[list[str], int]:
        """
        ``peer`` announced ``ids`` (``ihave``): ask it for those not ``seen`` nor asked
        of another, as many as it has room for (``max_asks``), and those asked of a
        peer that broke a promise lately if it broke none (the other is kept as whom
        to ask next); keep it, among ``max_offers``, as whom to ask next for those
        asked of another (in the place of one that broke a promise, if they are full).

        Returns:
            The ids to ask of ``peer`` (they are recorded as asked), and how many were
            ignored for want of room.

        """
        wanted: list[str] = []
        ignored = 0
        asking = self._asking[peer]
        room = max_asks - len(asking)
        trusted = not self._is_broken(peer, now)
        for i in ids:
            if i in seen:
                continue
            if (asked := self._asked.get(i)) is not None:
                whom = asked[1]
                if trusted and whom != peer and self._is_broken(whom, now) and len(wanted) < room:
                    if whom is not None:  # (asked of this one now: the other next)
                        self._give_up(whom, i, now, max_asks)
                        self._offer(i, whom, max_offers, now)
                    wanted.append(i)
                    continue
                self._offer(i, peer, max_offers, now)  # someone else to ask next
            elif len(wanted) < room:
                wanted.append(i)
            else:
                ignored += 1
        for i in wanted:
            self._asked[i] = (now, peer)
            self._retried.discard(i)  # (asked as it announced it: a promise)
            if (offers := self._offers.get(i)) is not None and peer in offers:
                offers.remove(peer)
        asking.update(wanted)
        return wanted, ignored

    def _offer(self, message_id: str, peer: PeerKey, max_offers: int, now: float) -> None:
        """Keep ``peer`` as whom to ask for ``message_id`` next: among the first
        ``max_offers``, or in the place of the first that broke a promise lately."""
        offers = self._offers.setdefault(message_id, [])
        if peer in offers:
            return
        if len(offers) < max_offers:
            offers.append(peer)
        elif not self._is_broken(peer, now):
            for index, other in enumerate(offers):
                if self._is_broken(other, now):
                    del offers[index]
                    offers.append(peer)
                    return

    def again(self, now: float, timeout: float, max_asks: int) -> dict[PeerKey, list[str]]:
        """Ids asked for ``timeout`` ago and not received: the peer asked broke its
        promise (:data:`BROKEN_FOR`), unless it was asked again, after another (it may
        hold the id no more: found in review, an attacker announcing each id just after
        the honest relay had the relay marked); ask the last other peer that announced
        each (it is the likeliest to serve it still), of those that broke none lately
        if any, and has room for the ask, or forget the ask, so that the next
        announcement is answered.

        Returns:
            The ids to ask of each peer (they are recorded as asked).

        """
        self._expire_late(now, LATE_FOR * timeout)
        again: dict[PeerKey, list[str]] = {}
        for message_id, (asked, whom) in list(self._asked.items()):
            if now - asked <= timeout:
                continue
            if whom is not None:
                self._give_up(whom, message_id, now, max_asks)
                if message_id not in self._retried:
                    self._broken[whom] = now
                self.broken += 1
            offers = [
                p
                for p in self._offers.pop(message_id, ())
                if p in self._asking and len(self._asking[p]) < max_asks  # has room
            ]
            if not offers:
                del self._asked[message_id]
                self._retried.discard(message_id)
                continue
            kept = [p for p in offers if not self._is_broken(p, now)]
            peer = (kept or offers)[-1]
            offers.remove(peer)
            if offers:
                self._offers[message_id] = offers
            self._asked[message_id] = (now, peer)
            self._asking[peer].add(message_id)
            self._retried.add(message_id)
            again.setdefault(peer, []).append(message_id)
        return again


class Holders:
    """
    Peers known to have each recent message (sent it to us, or got it from us): no use
    announcing it to them; and the peers sent each on ``iwant``.

    Lists, not sets, up to :data:`SET_FROM` peers: a message mostly has a handful of
    holders, and a set of more than four takes 700 bytes, a list of twelve 180 (a
    simulation holds one per node and recent message, thousands while it runs late).

    """

    __slots__ = ("_groups", "_holders", "_served")

    def __init__(self) -> None:
        self._holders: dict[str, _Peers] = {}
        self._served: dict[str, _Peers] = {}  # recent ids -> peers sent them on iwant
        self._groups: dict[str, PeerKey] = {}  # pending ids -> their sender's group

    def __len__(self) -> int:
        """How many messages are tracked."""
        return len(self._holders)

    def __contains__(self, message_id: str) -> bool:
        return message_id in self._holders

    def __getitem__(self, message_id: str) -> _Peers:
        """The peers known to have the message (raises ``KeyError`` if not tracked)."""
        return self._holders[message_id]

    def start(self, message_id: str, peer: PeerKey | None, group: PeerKey = None) -> None:
        """A new message, from ``peer`` (None: ours, or obtained otherwise), of the
        address ``group`` given if it awaits validation (see :meth:`group`)."""
        self._holders[message_id] = [peer] if peer is not None else []
        if group is not None:
            self._groups[message_id] = group

    def group(self, message_id: str, peer: PeerKey | None) -> PeerKey:
        """The group :meth:`start` was given for a message that passed validation (its
        sender's, even if that peer went meanwhile), else ``peer``."""
        return self._groups.pop(message_id, peer)

    def copy_from(self, message_id: str, peer: PeerKey | None) -> None:
        """Another copy of a message arrived from ``peer``: it has it, if we track it."""
        if message_id in self._holders:
            _hold(self._holders, message_id, peer)

    def add(self, message_id: str, peer: PeerKey | None) -> None:
        """Track the message (if not yet) and note that ``peer`` has it, unless None."""
        _hold(self._holders, message_id, peer)

    def refuse(self, message_id: str) -> None:
        """A message received pending validation was refused: it goes no further."""
        self._holders.pop(message_id, None)
        self._groups.pop(message_id, None)

    def expire(self, message_id: str) -> None:
        """The message is no longer recent: neither announced nor served."""
        self._holders.pop(message_id, None)
        self._served.pop(message_id, None)
        self._groups.pop(message_id, None)

    def serve(self, message_id: str, peer: PeerKey) -> bool:
        """Whether to send the message to ``peer``, which asked for it: once only."""
        if peer in self._served.get(message_id, ()):
            return False
        _hold(self._served, message_id, peer)
        return True

    def untold(self, peer: PeerKey, ids: list[str]) -> list[str]:
        """Those of ``ids`` ``peer`` isn't known to have (noting nothing)."""
        holders = self._holders
        return [i for i in ids if peer not in holders.get(i, ())]

    def told(self, peer: PeerKey, ids: list[str]) -> None:
        """``peer`` was told ``ids`` (``ihave``): told once is enough (it asks if it
        wants), so it holds them from now on."""
        holders = self._holders
        for message_id in ids:
            _hold(holders, message_id, peer)


def _hold(peers: dict[str, _Peers], message_id: str, peer: PeerKey | None) -> None:
    """Note ``peer`` for the message, once: in a list, a set past :data:`SET_FROM`."""
    noted = peers.setdefault(message_id, [])
    if peer is None or peer in noted:
        return
    if isinstance(noted, list):
        if len(noted) < SET_FROM:
            noted.append(peer)
            return
        noted = peers[message_id] = set(noted)
    noted.add(peer)
