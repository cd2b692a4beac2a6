"""
Who may connect, which of two connections to one peer stays, and what a block covers.
No I/O: the node asks, these rules answer; time comes from the caller.

An inbound connection counts from the moment the transport accepts it (TCP accept),
before the WebSocket upgrade, the Noise handshake and the peer's hello: connections
that never finish their handshake take slots too, so they can't pile up beyond the
limits. One deadline, ``handshake_timeout`` from accept, covers the whole handshake;
when every slot is taken, the oldest unfinished handshake makes room for a new one,
one that made no progress first (:meth:`Admission.progressed`: a connection that sent
nothing; found by an attacker, 3,200 bare connects a second dropped 24 of 30 honest
newcomers mid-handshake).
When every slot holds a finished connection, a connection from a network group
(:func:`~trustp2p.protocol.limits.netgroup`: a /16 or an IPv6 /32) holding at least two
fewer slots than the largest group is let in above ``max_inbound`` as a *candidate*
(one a network group, :data:`MAX_CANDIDATES` at once); once its handshake is finished,
the rule is checked again (the peer's real address known by then, behind a proxy: a
connection from an exempt loopback address, a proxy's, may be a candidate) and a
connection still in its handshake, or else the largest group's newest connection, is
dropped for it, or the candidate is. The connections that finished first, a quarter of
the slots (:data:`PROTECTED_SHARE`), are never dropped for one: a group whose newest is
one of them is passed over. A network group that made room makes no more for
:data:`ROOM_HOLD`, and, once that connection closes, for :data:`ROOM_HOLD` after it. So
one network can't hold every slot against the rest; a peer with many networks can't
push out the longest connected; a connection that never finishes its handshake drops
no finished one; a network closes at most one peer each :data:`ROOM_HOLD`, however its
connections come and go; and no swap leaves the groups less even than
it found them (no churn among peers of one network).
A peer that reconnects in a storm (:class:`~trustp2p.protocol.limits.ReconnectStorms`)
is refused new connections for a while: counted by address from accept, and by peer id
once it proved one. A blocked address is refused here, at accept; a blocked peer id, and a
new id from an address that refuses new ids (:mod:`~trustp2p.protocol.known_ids`), only
once the handshake proved the id (the node's connections ask its penalties then).

"""

from __future__ import annotations

__all__ = [
    "MAX_CANDIDATES",
    "PROTECTED_SHARE",
    "ROOM_HOLD",
    "Admission",
    "Admitted",
    "BlockScope",
    "Refusal",
    "block_scope",
    "keep_new_connection",
]

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .close import CloseCode
from .limits import (
    AddressLimiter,
    Cooldown,
    ReconnectStorms,
    address_key,
    is_loopback,
    netgroup,
)
from .peers import peer_key

MAX_CANDIDATES = 4
"""Connections let in above ``max_inbound`` at once, each to take a crowded network
group's slot once its handshake is finished; a fifth makes the oldest give way."""


PROTECTED_SHARE = 4
"""One in this many of ``max_inbound`` slots, those of the connections that finished
their handshake first, are never taken for a candidate."""

_REFUSED = "!"
"""The key of a candidate refused once its address came (behind a proxy), still closing."""

ROOM_HOLD = 600.0
"""Seconds a network group makes no more room after a connection of it made room, and
after that connection closed: connecting, finishing a handshake and leaving, over and
over, closes one peer of a crowded network per this many seconds, not one per handshake
(found in review: barred only once its room-makers left, a network that made room
several times first closed 8 peers each 10 minutes from one IPv4 address)."""

_MAX_BARS = 4096  # network groups barred from making room, remembered at once


@dataclass(frozen=True, slots=True)
class Refusal:
    """
    Why an inbound connection is refused.

    Attributes:
        code: The close code to send.
        reason: The close reason.
        warn: Worth a WARNING (a limit was hit); blocked peers are only DEBUG noise.

    """

    code: int
    reason: str
    warn: bool


_MAXED_OUT = Refusal(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out", warn=True)


@dataclass(frozen=True, slots=True)
class Admitted:
    """
    An inbound connection is admitted.

    Attributes:
        evicted: The connection to drop to make room for it: at :meth:`Admission.admit`,
            the oldest whose handshake isn't finished (dropped at once); at
            :meth:`Admission.finish` (``finished``), the newest of the largest network
            group (closed). It no longer counts.
        finished: Whether ``evicted`` had finished its handshake (it gets a close frame).

    """

    evicted: int | None = None
    finished: bool = False


class Admission:
    """
    The inbound connection rules, applied at accept, before any handshake: the node is
    running, the address is not blocked nor reconnecting in a storm (``storms``), the
    per-address limits of ``limiter``, and at most ``max_inbound`` connections. When
    all ``max_inbound`` are taken, the oldest connection still in its handshake is
    evicted for the new one. When every slot holds a connection that finished its
    handshake, a new connection whose network group holds at least two fewer than the
    largest, and made no room of late (:data:`ROOM_HOLD`), is a candidate above
    ``max_inbound``; else it is refused. When a candidate finishes its handshake, a
    connection still in its handshake in a slot, or else the newest connection of the
    largest network group, is evicted for it if the rule still holds, else it is
    refused then. Connections from
    the addresses the ``limiter`` exempts (loopback) are neither counted in a group nor
    evicted; one from such an address comes in as a candidate (it may be a proxy's,
    which names the peer's address during the upgrade) but takes no slot unless its
    real address, once known, is another.

    A connection is in its handshake from :meth:`admit` until :meth:`finish`; past
    ``handshake_timeout`` it is :meth:`expired`. It counts until :meth:`release`. With
    ``probe_after``, one still in its handshake then is :meth:`due_probes` first: the
    node pings it (plain mode: the original's client may have said nothing, tester44).

    Args:
        max_inbound: Inbound connections at once; ``None`` for no limit.
        limiter: Per-address concurrency and rate.
        is_blocked: Whether an address is blocked (the peer store answers).
        handshake_timeout: Seconds from accept to the end of the handshake; ``None``
            for no deadline.
        probe_after: Seconds from accept after which a connection still in its
            handshake is probed (:meth:`due_probes`); ``None`` for never.
        storms: The reconnect storm rule, shared by address and peer id keys; addresses
            the ``limiter`` exempts (loopback) are counted by peer id only.

    """

    def __init__(
        self,
        *,
        max_inbound: int | None,
        limiter: AddressLimiter,
        is_blocked: Callable[[str], bool],
        handshake_timeout: float | None = None,
        probe_after: float | None = None,
        storms: ReconnectStorms | None = None,
    ) -> None:
        self.max_inbound = max_inbound
        self.handshake_timeout = handshake_timeout
        self.probe_after = probe_after
        self.storms = storms
        self._limiter = limiter
        self._is_blocked = is_blocked
        self._admitted: dict[int, str] = {}  # connection id -> address
        # Connections in their handshake -> when admitted; oldest first (admission
        # times never decrease).
        self._handshaking: dict[int, float] = {}
        self._progressed: set[int] = set()  # of those, the ones that got somewhere
        self._deadlines: deque[tuple[float, int]] = deque()  # (deadline, id), in order
        self._probes: deque[tuple[float, int]] = deque()  # (when, id), in order
        # Finished connections by network group -> the order they finished in, oldest
        # first; and each one's group.
        self._groups: dict[str, dict[int, int]] = {}
        self._group_of: dict[int, str] = {}
        self._finishes = itertools.count()
        # Above max_inbound, oldest first -> the network group each stands for (one a
        # group; an exempt address's, each its own).
        self._candidates: dict[int, str] = {}
        self._room_makers: dict[int, str] = {}  # finished candidates that made room
        self._bars: dict[str, float] = {}  # network group -> making no room until then

    def __len__(self) -> int:
        """Connections admitted and not released (candidates above ``max_inbound``
        included)."""
        return len(self._admitted)

    @property
    def handshaking(self) -> int:
        """Connections admitted whose handshake isn't finished."""
        return len(self._handshaking)

    def open_from(self, host: str) -> int:
        """Connections admitted from ``host`` and not released."""
        return self._limiter.open_from(host)

    def progressed(self, conn_id: int) -> None:
        """Connection ``conn_id``, in its handshake, got somewhere (the node says when:
        its driver's own handshake done); it makes room after those that didn't."""
        if conn_id in self._handshaking:
            self._progressed.add(conn_id)

    def _unfinished(self) -> int | None:
        """The oldest unfinished handshake in a slot that made no progress, else the
        oldest (the candidates, a few, are passed over)."""
        candidates, progressed = self._candidates, self._progressed
        fallback = None
        for conn_id in self._handshaking:
            if conn_id in candidates:
                continue
            if conn_id not in progressed:
                return conn_id
            if fallback is None:
                fallback = conn_id
        return fallback

    def finished(self, conn_id: int) -> bool:
        """Whether connection ``conn_id`` is admitted and finished its handshake."""
        return conn_id in self._admitted and conn_id not in self._handshaking

    def admit(self, conn_id: int, host: str, now: float) -> Admitted | Refusal:
        """
        Admit connection ``conn_id`` from ``host``, accepted at ``now``, or say why not.

        An admitted connection must be :meth:`release`\\ d when it closes, and
        :meth:`finish`\\ ed when its handshake is done. If the answer names a connection
        to evict, the caller drops it: it no longer counts.
        """
        if self._is_blocked(host):
            return Refusal(CloseCode.POLICY_VIOLATION, "blocked", warn=False)
        storm = self._storm(host, now)
        if storm is not None:
            return storm
        candidates = self._candidates
        evicted = key = None
        if self._full():
            evicted = self._unfinished()
            if evicted is None:
                if self._crowded(host, now, proxied=True) is None:
                    return _MAXED_OUT
                key = f"#{conn_id}" if self._limiter.exempts(host) else netgroup(host)
                place = self._candidate_place(key)
                if isinstance(place, Refusal):
                    return place
                evicted = place
        why = self._limiter.admit(host, now)
        if why is not None:
            return Refusal(CloseCode.TRY_AGAIN_LATER, why, warn=True)
        if evicted is not None:
            self.release(evicted)
        if key is not None:
            candidates[conn_id] = key
        self._admitted[conn_id] = host
        self._handshaking[conn_id] = now
        if self.handshake_timeout is not None:
            self._deadlines.append((now + self.handshake_timeout, conn_id))
        if self.probe_after is not None:
            self._probes.append((now + self.probe_after, conn_id))
        return Admitted(evicted)

    def _candidate_place(self, key: str) -> int | Refusal | None:
        """
        The candidate a new one keyed ``key`` takes the place of (None: a free place), or
        its refusal. One a network group: a newer takes its place (bare connects
        from one network can't push out another's); a fifth in all, the oldest's. One
        that came through a proxy (``#``: its address not known yet) pushes out only such
        a one (found in review: one address behind a proxy pushed out an honest one).
        """
        places = [(c, k) for c, k in self._candidates.items() if k != _REFUSED]
        same = next((c for c, k in places if k == key), None)
        if same is not None or len(places) < MAX_CANDIDATES:
            return same
        proxied = key.startswith("#")
        return next((c for c, k in places if k.startswith("#") or not proxied), _MAXED_OUT)

    def _full(self, beyond: int = 0) -> bool:
        """Whether at least ``max_inbound + beyond`` connections hold slots
        (candidates hold none)."""
        taken = len(self._admitted) - len(self._candidates)
        return self.max_inbound is not None and taken >= self.max_inbound + beyond

    def _crowded(self, host: str, now: float, *, proxied: bool = False) -> int | None:
        """
        The finished connection to evict for a new one from ``host``: the newest of the
        largest group with one not protected, if ``host``'s group holds at least two
        fewer and isn't barred (:data:`ROOM_HOLD`); else None. An exempt (loopback) host
        evicts nobody, unless ``proxied``: at accept, it may be a proxy's for a peer
        whose address comes with the upgrade, from a group of its own then (judged again
        by that address at :meth:`finish`).
        """
        exempt = self._limiter.exempts(host)
        if (exempt and not proxied) or not self._groups:
            return None
        if not exempt and self._barred(netgroup(host), now):
            return None
        # The first to finish, a share of the slots, are protected: an attacker with
        # many networks can push out newer peers, never the longest connected.
        protect = (self.max_inbound or 0) // PROTECTED_SHARE
        finishes = (n for group in self._groups.values() for n in group.values())
        oldest = heapq.nsmallest(protect, finishes)
        cutoff = oldest[-1] if oldest and protect else -1  # fewer: all protected
        # Of groups as large, the one whose newest finished last.
        largest = max(
            ((len(group), group[newest], newest) for group in self._groups.values()
             if group[newest := next(reversed(group))] > cutoff),
            default=None,
        )  # fmt: skip
        ours = {} if exempt else self._groups.get(netgroup(host), {})
        if largest is None or len(ours) + 2 > largest[0]:
            return None
        return largest[2]

    def readdress(self, conn_id: int, host: str, now: float) -> Refusal | None:
        """
        Connection ``conn_id`` turned out to come from ``host`` (a proxy on a loopback
        address named the client's in ``X-Real-IP``, during the upgrade): apply the
        block and the per-address limits to that address instead, and to a candidate
        the rules of candidates (one a network group; none from a group that may make
        no room). On a refusal the connection still holds its slot until released.
        """
        old = self._admitted.get(conn_id)
        if old is None or old == host:
            return None
        refusal = self._readdress(conn_id, old, host, now)
        if refusal is not None and conn_id in self._candidates:
            # It holds no candidate's place while it closes (found in review: refused
            # ones behind a proxy, still closing, let a newcomer push out an honest one).
            self._candidates[conn_id] = _REFUSED
        return refusal

    def _readdress(self, conn_id: int, old: str, host: str, now: float) -> Refusal | None:
        if old:
            self._limiter.release(old)
        self._admitted[conn_id] = ""  # counts against no address while refused
        if self._is_blocked(host):
            return Refusal(CloseCode.POLICY_VIOLATION, "blocked", warn=False)
        storm = self._storm(host, now)
        if storm is not None:
            return storm
        why = self._limiter.admit(host, now)
        if why is not None:
            return Refusal(CloseCode.TRY_AGAIN_LATER, why, warn=True)
        self._admitted[conn_id] = host
        if conn_id in self._candidates and not self._limiter.exempts(host):
            # A proxy's candidate is one of its network's now: one a network group, and
            # none from a group barred from making room (found in review: behind a
            # proxy, one address pushed out an honest candidate with four upgrades).
            group = netgroup(host)
            if self._barred(group, now) or group in self._candidates.values():
                return _MAXED_OUT
            self._candidates[conn_id] = group
        return None

    def identified(self, peer_id: str, now: float) -> Refusal | None:
        """
        An inbound connection proved it comes from ``peer_id`` (secure mode, after the
        Noise handshake): count it for that peer's reconnect storms, wherever it comes
        from; a refusal closes it.
        """
        if self.storms is None:
            return None
        return _refusal(self.storms.arrive(peer_key(peer_id, ""), now))

    def _storm(self, host: str, now: float) -> Refusal | None:
        """Count a connection from ``host`` for its reconnect storms, unless exempt."""
        if self.storms is None or self._limiter.exempts(host):
            return None
        key = peer_key(None, address_key(host))
        return _refusal(self.storms.arrive(key, now, by_address=True))

    def finish(self, conn_id: int, now: float) -> Admitted | Refusal | None:
        """
        Connection ``conn_id`` finished its handshake at ``now``: it has no deadline any
        more, and counts in its network group. Nothing happens if it isn't admitted.

        Returns:
            For a candidate while every slot is still taken: the connection evicted for
            it (:class:`Admitted`; the oldest unfinished handshake in a slot if any, else
            a crowded group's newest, ``finished``), or why it is refused now (the
            caller closes it; it no longer counts). Else ``None``.

        """
        if self._handshaking.pop(conn_id, None) is None:
            return None
        self._progressed.discard(conn_id)
        host = self._admitted.get(conn_id, "")
        decision: Admitted | Refusal | None = None
        if self._candidates.pop(conn_id, None) is not None and self._full(beyond=1):
            decision = self._make_room(conn_id, host, now)  # by its real address now
            if isinstance(decision, Refusal):
                return decision
        if host and not self._limiter.exempts(host):
            group = netgroup(host)
            self._groups.setdefault(group, {})[conn_id] = next(self._finishes)
            self._group_of[conn_id] = group
        return decision

    def _make_room(self, conn_id: int, host: str, now: float) -> Admitted | Refusal:
        """Candidate ``conn_id`` from ``host`` finished while every slot is still taken:
        the connection dropped for it, or its refusal."""
        # A slot freed meanwhile and taken by a connection still in its handshake: that
        # one gives way, as at admission, before any finished connection.
        unfinished = self._unfinished()
        if unfinished is not None:
            self.release(unfinished)
            return Admitted(unfinished)
        evicted = self._crowded(host, now) if host else None
        if evicted is None:
            self.release(conn_id)
            return _MAXED_OUT
        self.release(evicted)
        group = self._room_makers[conn_id] = netgroup(host)
        self._bar(group, now)
        return Admitted(evicted, finished=True)

    def _barred(self, group: str, now: float) -> bool:
        """Whether network group ``group`` makes no room at ``now``."""
        until = self._bars.get(group)
        if until is not None and until <= now:
            del self._bars[group]
            return False
        return until is not None

    def _bar(self, group: str, now: float) -> None:
        """Network group ``group`` makes no room for :data:`ROOM_HOLD` from ``now``."""
        bars = self._bars
        bars.pop(group, None)
        bars[group] = now + ROOM_HOLD  # in the order they end
        while bars and (len(bars) > _MAX_BARS or next(iter(bars.values())) <= now):
            del bars[next(iter(bars))]

    def release(self, conn_id: int, now: float | None = None) -> None:
        """
        Connection ``conn_id`` closed at ``now``; nothing happens if it wasn't admitted.
        If it made room for itself, its network group makes no more room for
        :data:`ROOM_HOLD` seconds (``now`` ``None``: dropped by these rules, no bar).
        """
        group = self._room_makers.pop(conn_id, None)
        if group is not None and now is not None:
            self._bar(group, now)
        self._handshaking.pop(conn_id, None)
        self._progressed.discard(conn_id)
        self._candidates.pop(conn_id, None)
        host = self._admitted.pop(conn_id, None)
        if host:
            self._limiter.release(host)
        group = self._group_of.pop(conn_id, None)
        if group is not None:
            members = self._groups[group]
            del members[conn_id]
            if not members:
                del self._groups[group]

    def expired(self, now: float) -> list[int]:
        """
        The connections whose handshake deadline passed by ``now``, oldest first; each
        is returned once. They still count (and may still be evicted) until released:
        the caller closes them.
        """
        return self._due(self._deadlines, now)

    def due_probes(self, now: float) -> list[int]:
        """The connections still in their handshake ``probe_after`` seconds after they
        were admitted, by ``now``, oldest first; each is returned once."""
        return self._due(self._probes, now)

    def _due(self, times: deque[tuple[float, int]], now: float) -> list[int]:
        due = []
        while times and times[0][0] <= now:
            _, conn_id = times.popleft()
            if conn_id in self._handshaking:
                due.append(conn_id)
        return due

    def next_deadline(self) -> float | None:
        """When :meth:`expired` or :meth:`due_probes` may next return something, or
        ``None`` if never."""
        heads = []
        for times in (self._deadlines, self._probes):
            while times and times[0][1] not in self._handshaking:
                times.popleft()
            if times:
                heads.append(times[0][0])
        return min(heads, default=None)


def _refusal(cooldown: Cooldown | None) -> Refusal | None:
    if cooldown is None:
        return None
    # A WARNING when a storm starts; its refusals during the cooldown are DEBUG noise.
    return Refusal(CloseCode.TRY_AGAIN_LATER, cooldown.reason, warn=cooldown.started)


def keep_new_connection(
    our_id: str, peer_id: str, *, new_inbound: bool, existing_inbound: bool
) -> bool:
    """
    Of two connections to the peer ``peer_id``, whether to keep the new one.

    Both sides decide alike without talking: keep the connection dialled by the node
    with the smaller id; of two dialled by the same node, keep the older (the existing).
    """

    def dialler(inbound: bool) -> str:
        return peer_id if inbound else our_id

    return dialler(new_inbound) < dialler(existing_inbound)


@dataclass(frozen=True, slots=True)
class BlockScope:
    """What a block covers: the peer id, the address, or both (never neither)."""

    peer_id: str | None
    address: str | None


def block_scope(
    peer_id: str | None, address: str | None, *, limit_loopback: bool
) -> BlockScope | None:
    """
    What to block for a peer that crossed the policy.

    Loopback addresses are never blocked unless ``limit_loopback``: every local peer
    shares them. ``None`` means there is nothing to block (a local peer without a peer
    id, in plain mode): the offending connection is only closed.
    """
    if address is not None and is_loopback(address) and not limit_loopback:
        address = None
    if peer_id is None and address is None:
        return None
    return BlockScope(peer_id, address)
