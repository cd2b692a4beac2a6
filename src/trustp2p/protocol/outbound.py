"""
Whom a client dials, free of I/O: the outbound policy.

A client dials two kinds of URLs:

- **Persistent** ones (the node's ``peers`` and :meth:`~trustp2p.ClientRole.connect`),
  for as long as the node runs. :meth:`OutboundPolicy.gate` says whether to dial one
  now, and :class:`Reconnect` how long to wait before the next try.
- **Managed** ones, drawn from the peer store to keep ``target`` outbound connections.
  A :class:`Selection` (one round) says what to ask the store for (:class:`Query`) and,
  from its answers, which URLs to dial (:class:`Dial`): at most ``max_per_netgroup`` per
  /16 (IPv4) or /32 (IPv6) network (dials under way count; loopback is exempt), one dial
  per address whatever its spelling, not before a failed URL's retry time, and never a
  peer that is connected or blocked. When no outbound connection goes to a bootstrap
  peer, a peer known before this run or a long-lived one, an anchor round dials one
  such peer, even past the target (eclipse resistance). Dials to addresses nobody has
  proven (learned from peers, never connected to) are bounded in number and rate
  (:class:`~trustp2p.protocol.limits.UnprovenDials`).

The asyncio shell (:mod:`trustp2p.node.dialer`) reports what happens (dials started and
ended, failures, connections opened and closed) and carries the decisions out. Time
comes from the injected ``clock``; what the peer store knows comes through a
:class:`PeerView`.

"""

from __future__ import annotations

__all__ = [
    "RETRY_MEMORY",
    "Dial",
    "Gate",
    "OutboundPolicy",
    "PeerView",
    "Query",
    "Reconnect",
    "netgroup_of",
    "retry_delay",
]

import enum
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from ..identity import PeerId
from .backoff import Reconnect, retry_delay
from .deliver import ConnId
from .limits import UnprovenDials, is_loopback, netgroup
from .peers import is_address_key
from .urls import address_of, split_peer_url

if TYPE_CHECKING:
    from .selection import Selection

RETRY_MEMORY = 3600.0
"""Seconds after its retry came that a URL which failed no more since is forgotten by
the policy (its failures in a row, its retry)."""


class PeerView(Protocol):
    """What the policy asks the peer store (:class:`~trustp2p.peerstore.PeerStore` is
    one): synchronous lookups, each a dict lookup or two."""

    def is_blocked(self, *, peer_id: str | None = None, address: str | None = None) -> bool:
        """Whether ``peer_id`` or ``address`` is blocked now."""
        ...

    def peer_id_of(self, url: str) -> str | None:
        """The peer id last met at ``url`` when we connected there, if known: not one
        a peer only announced (``address:...`` ids are not)."""
        ...

    def is_anchor(self, peer_id: str) -> bool:
        """Whether a connected peer anchors us: bootstrap, or known before this run."""
        ...

    def proven(self, url: str) -> bool:
        """Whether the store's ``url`` is a bootstrap peer's, or one where we connected
        (a peer proved its id there; in plain mode, answered)."""
        ...


def netgroup_of(url: str) -> str | None:
    """The network group of a URL's host (:func:`~trustp2p.protocol.limits.netgroup`);
    ``None``, no limit, for loopback and in-memory hosts."""
    try:
        host = urlsplit(split_peer_url(url)[0]).hostname or ""
    except ValueError:
        host = ""
    if is_loopback(host) or host in ("", "memory"):
        return None
    return netgroup(host)


@dataclass(frozen=True, slots=True)
class Dial:
    """
    A managed dial to carry out.

    Attributes:
        url: The store's URL, maybe ending in ``/p2p/<id>``: report the dial's end
            with :meth:`OutboundPolicy.dial_ended` under this URL.
        dial_url: The URL to dial (without ``/p2p/<id>``).
        expected: The peer id that must answer there, if the store's URL names one.
        anchor: Whether this dial is an anchor (see :meth:`OutboundPolicy.anchor_selection`).

    """

    url: str
    dial_url: str
    expected: PeerId | None
    anchor: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """
    What to ask the peer store for next: ``store.anchor_candidates`` when ``anchors``,
    else ``store.candidates``, with these arguments; give the answer to
    :meth:`Selection.offer`.
    """

    limit: int
    exclude_urls: frozenset[str]
    exclude_ids: frozenset[str]
    anchors: bool


class Gate(enum.Enum):
    """Whether to dial a persistent URL now (:meth:`OutboundPolicy.gate`)."""

    DIAL = "dial"
    WAIT_FOR_PEER = "wait for peer"  # connected already: dial again when that one closes
    BACK_OFF = "back off"  # blocked: wait the next reconnection delay


@dataclass(slots=True)
class _Outbound:
    url: str  # as dialled
    peer_id: str | None
    opened_at: float


class OutboundPolicy:
    """
    Whom to dial, and when. Does no I/O: the shell reports events and asks.

    Args:
        clock: Current time in seconds (the event loop's, in the node).
        target: Outbound connections to keep (``target_outbound``); 0 dials nothing
            from the store.
        max_per_netgroup: Managed outbound connections per network group.
        anchor_age: Seconds after which an outbound connection is a long-lived one.
        retry_initial, retry_max, retry_factor: Delay before a failed managed URL is
            tried again (:func:`retry_delay`).
        bootstrap: The bootstrap URLs (the node's ``peers``).
        shuffle: Shuffles a list in place; managed candidates are picked at random among
            the best the store offers (tests pass one that keeps the order).
        unproven: The bound on dials to unproven addresses (default:
            :class:`~trustp2p.protocol.limits.UnprovenDials` with its defaults).

    Attributes:
        unproven: Dials to addresses nobody has proven: neither a bootstrap or
            persistent URL, nor one where a peer proved itself (in this run, or
            :meth:`PeerView.proven`). Managed rounds start them only as it allows;
            anchor rounds dial proven peers only.

    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        target: int = 8,
        max_per_netgroup: int = 2,
        anchor_age: float = 600.0,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        retry_factor: float = 2.0,
        bootstrap: Iterable[str] = (),
        shuffle: Callable[[list[str]], None] = random.shuffle,
        unproven: UnprovenDials | None = None,
    ) -> None:
        self.clock = clock
        self.unproven = unproven if unproven is not None else UnprovenDials()
        self._deferred = False  # a round left out unproven URLs for the bound
        self.target = target
        self.max_per_netgroup = max_per_netgroup
        self.anchor_age = anchor_age
        self._retry = (retry_initial, retry_max, retry_factor)
        self.bootstrap = frozenset(address_of(url) for url in bootstrap)
        self.shuffle = shuffle
        self._persistent: dict[str, str] = {}  # address -> URL as given
        self._dropped: set[str] = set()  # addresses the application disconnected from
        self._dials: dict[str, Dial] = {}  # store URL -> managed dial under way
        self._store_url: dict[str, str] = {}  # dial URL -> store URL dialled there
        self._conns: dict[ConnId, _Outbound] = {}
        self._peer_of_url: dict[str, str] = {}  # dial URL -> peer id met there
        self._failures: dict[str, int] = {}  # store URL -> failures in a row
        self._retry_at: dict[str, float] = {}  # store URL -> earliest next managed try
        self._address_retry_at: dict[str, float] = {}  # the same by address, any spelling
        self._early_closes: dict[str, int] = {}  # store URL -> closed soon, in a row
        self._anchoring: str | None = None  # the store URL last dialled as an anchor

    # What the shell reports.

    def add_persistent(self, url: str) -> bool:
        """Dial ``url`` for good; False (nothing to do) if its address already is,
        whatever the spelling."""
        address = address_of(url)
        self._dropped.discard(address)
        if address in self._persistent:
            return False
        self._persistent[address] = url
        return True

    def persistent_url(self, url: str) -> str | None:
        """The persistent URL of ``url``'s address, as added (or pinned since)."""
        return self._persistent.get(address_of(url))

    def pin_persistent(self, url: str) -> None:
        """Dial ``url``'s address, persistent already, as ``url`` (with the
        ``/p2p/<id>`` it names) from now on."""
        address = address_of(url)
        if address in self._persistent:
            self._persistent[address] = url

    def remove_persistent(self, url: str) -> str | None:
        """Stop dialling ``url`` for good, the manager too, until :meth:`add_persistent`
        adds it again; returns the URL as it was added, if it was."""
        address = address_of(url)
        self._dropped.add(address)
        return self._persistent.pop(address, None)

    def dial_done(self, url: str) -> bool:
        """
        The dial of the store's ``url`` (:attr:`Dial.url`) connected or failed: if it
        was unproven, it no longer counts as under way. Returns whether a round left
        unproven URLs out since (run one: one may start now).
        """
        self.unproven.ended(url)
        return self._deferred

    def dial_ended(self, url: str) -> None:
        """A managed dial (its task) ended, however: ``url`` is :attr:`Dial.url`."""
        self.unproven.ended(url)
        dial = self._dials.pop(url, None)
        if dial is not None and self._store_url.get(dial.dial_url) == url:
            del self._store_url[dial.dial_url]

    def dial_failed(self, url: str, *, lasting: bool = False, address: bool = True) -> float:
        """
        A dial of ``url`` (or its handshake) failed: count it against the store's URL
        being dialled there, and return the seconds before it may be tried again: the
        longest retry delay at once if the failure is ``lasting`` (the peer there runs
        the other mode: it can't work until a configuration changes). The wait holds
        for every spelling of the address, unless the failure was the URL's own
        (``address=False``: the peer there isn't the one its ``/p2p/`` id names).
        """
        url = self.store_url(url)
        failures = self._failures[url] = self._failures.get(url, 0) + 1
        delay = self._retry[1] if lasting else retry_delay(failures, *self._retry)
        self._retry_at[url] = self.clock() + delay
        if address:
            self._address_retry_at[address_of(url)] = self._retry_at[url]
        return delay

    def connection_opened(self, conn: ConnId, url: str, peer_id: str | None) -> None:
        """An outbound connection opened to ``url`` (as dialled); ``peer_id`` proved
        itself there (secure mode)."""
        self._conns[conn] = _Outbound(url, peer_id, self.clock())
        if peer_id is not None:
            self._peer_of_url[url] = peer_id
        store_url = self.store_url(url)
        self._failures.pop(store_url, None)
        self._retry_at.pop(store_url, None)
        self._address_retry_at.pop(address_of(store_url), None)

    def connection_closed(self, conn: ConnId) -> None:
        """
        An outbound connection closed. A managed one that closed sooner than the next
        retry delay (:func:`retry_delay`, counting such closes in a row) waits that
        delay before it is dialled again, as a failed dial would: a server that
        refuses us after the handshake (full, or we reconnect too often) isn't
        redialled at once, again and again. One that lived as long starts over.
        """
        out = self._conns.pop(conn, None)
        if out is None:
            return
        url = self._store_url.get(out.url)
        if url is None or url not in self._dials:
            return  # not a managed dial: Reconnect paces persistent URLs
        now = self.clock()
        closes = self._early_closes.get(url, 0) + 1
        delay = retry_delay(closes, *self._retry)
        if now - out.opened_at >= delay:
            self._early_closes.pop(url, None)
            return
        self._early_closes[url] = closes
        self._retry_at[url] = max(self._retry_at.get(url, 0.0), now + delay)
        address = address_of(url)
        self._address_retry_at[address] = max(self._address_retry_at.get(address, 0.0), now + delay)

    def remember_peer(self, url: str, peer_id: str) -> None:
        """``peer_id`` answers at ``url`` (a duplicate connection, refused): don't dial
        that URL while the peer is connected."""
        self._peer_of_url[url] = peer_id

    # What the shell asks.

    @property
    def persistent_urls(self) -> list[str]:
        """The persistent URLs, as added."""
        return list(self._persistent.values())

    @property
    def dials(self) -> list[Dial]:
        """The managed dials under way (connected ones included), oldest first."""
        return list(self._dials.values())

    def store_url(self, url: str) -> str:
        """The store's URL for a connection dialled at ``url``: with its ``/p2p/<id>``
        while a managed dial of a store entry that has one is under way, or when
        ``url`` is a persistent URL's dial URL (a pinned one's success recorded the
        unpinned URL, which later runs dialled without the pin: tester37 F2)."""
        stored = self._store_url.get(url)
        if stored is not None:
            return stored
        given = self._persistent.get(address_of(url))
        if given is not None and given != url and given.startswith(url + "/p2p/"):
            return given
        return url

    def failures(self, url: str) -> int:
        """Failed dials of the store URL ``url`` in a row."""
        return self._failures.get(url, 0)

    @property
    def failing_urls(self) -> set[str]:
        """The URLs whose last dial failed."""
        return set(self._failures)

    def known_peer(self, url: str, view: PeerView | None) -> str | None:
        """The peer id met at ``url`` (as dialled), in this run or, from the store, before."""
        known = self._peer_of_url.get(url)
        if known is None and view is not None:
            known = view.peer_id_of(url)
            if known is not None and is_address_key(known):
                known = None
        return known

    def gate(
        self, url: str, connected_ids: Collection[str], view: PeerView | None
    ) -> tuple[Gate, str | None]:
        """
        Whether to dial the persistent ``url`` now.

        Returns:
            :attr:`Gate.BACK_OFF` when its host (not loopback) or the peer known there
            is blocked; :attr:`Gate.WAIT_FOR_PEER` when that peer is connected already
            (maybe it dialled us), with its id; else :attr:`Gate.DIAL`. Second: the
            peer id expected or met there, if any.

        """
        dial_url, expected = split_peer_url(url)
        host = urlsplit(dial_url).hostname or ""
        if view is not None and not is_loopback(host) and view.is_blocked(address=host):
            return Gate.BACK_OFF, None
        known = expected or self.known_peer(dial_url, view)
        if known is None:
            return Gate.DIAL, None
        if known in connected_ids:
            return Gate.WAIT_FOR_PEER, known
        if view is not None and view.is_blocked(peer_id=known):
            return Gate.BACK_OFF, known
        return Gate.DIAL, known

    def missing(self) -> int:
        """Outbound connections short of the target, dials under way counted."""
        connected = {address_of(c.url) for c in self._conns.values()}
        dialling = sum(1 for d in self._dials.values() if address_of(d.url) not in connected)
        return self.target - len(self._conns) - dialling

    def busy(self, own_urls: Iterable[str]) -> set[str]:
        """Addresses (:func:`~trustp2p.protocol.urls.address_of`) not to dial from the
        store: dialled for good, dialled by the manager, connected, our own, or ones
        the application disconnected from."""
        urls = (
            *self._persistent,
            *self._dropped,
            *self._dials,
            *(c.url for c in self._conns.values()),
            *own_urls,
        )
        return {address_of(url) for url in urls}

    def netgroups(self) -> Counter[str]:
        """Outbound connections and managed dials under way per network group."""
        urls = {address_of(c.url) for c in self._conns.values()}
        urls.update(address_of(d.url) for d in self._dials.values())
        return Counter(g for g in map(netgroup_of, urls) if g is not None)

    def dialable(
        self, url: str, busy: Collection[str], connected_ids: Collection[str], view: PeerView | None
    ) -> bool:
        """
        Whether the store's ``url`` may be dialled now: its address is not busy, it is
        not waiting for a retry (of any spelling of its address: the store may hold one
        with the peer's ``/p2p/`` id and one without), its host is not a blocked
        address, and neither the peer met there nor the one its ``/p2p/`` part names is
        connected or blocked.
        """
        address, now = address_of(url), self.clock()
        if address in busy or self._address_retry_at.get(address, 0.0) > now:
            return False
        if self._retry_at.get(url, 0.0) > now:  # (a hold: the wait its peer named)
            return False
        try:
            dial_url, claimed = split_peer_url(url)
        except ValueError:
            return False
        if view is not None:
            host = urlsplit(dial_url).hostname or ""
            if not is_loopback(host) and view.is_blocked(address=host):
                return False
        for peer_id in (self.known_peer(dial_url, view), claimed):
            if peer_id is not None and (
                peer_id in connected_ids or (view is not None and view.is_blocked(peer_id=peer_id))
            ):
                return False
        return True

    def is_proven(self, url: str, view: PeerView | None) -> bool:
        """Whether the store's ``url`` is proven: a bootstrap or persistent URL's
        address, a URL where a peer proved its id in this run, or one the store says
        is proven."""
        address = address_of(url)
        if address in self.bootstrap or address in self._persistent:
            return True
        if split_peer_url(url)[0] in self._peer_of_url:
            return True
        return view is not None and view.proven(url)

    def may_dial(self, url: str, view: PeerView | None) -> bool:
        """
        Whether the store's ``url`` may be dialled now as far as
        :attr:`unproven` is concerned: a proven one always; an unproven one if the
        bound allows it (it then counts as under way until :meth:`dial_done`).
        """
        if self.is_proven(url, view):
            return True
        if self.unproven.start(url, self.clock()):
            return True
        self._deferred = True
        return False

    def hold(self, url: str, seconds: float) -> None:
        """Dial the store URL ``url`` no sooner than ``seconds`` from now: its peer said
        it blocks us for that long (a refused handshake at every redial before)."""
        self._retry_at[url] = max(self._retry_at.get(url, 0.0), self.clock() + seconds)

    def wake_in(self, view: PeerView | None = None) -> float | None:
        """
        Seconds before a round should run again: to dial the unproven URLs the last
        rounds left out (unless dials under way must end first: :meth:`dial_done` says
        when), or, short of the target, when the first proven URL waiting for its retry
        may be dialled (a tester: a server known from the store that restarted in 2 s
        failed one dial and was dialled again only at the next ``exchange_interval``,
        a minute later). ``None``: nothing to wait for.
        """
        now = self.clock()
        wait = self.unproven.wait(now) if self._deferred else None
        if self.missing() > 0:
            retries = self._retry_at.items()
            due = [at - now for url, at in retries if at > now and self.is_proven(url, view)]
            if due and (wait is None or min(due) < wait):
                wait = min(due)
        return wait

    def excluded(self, connected_ids: Collection[str]) -> set[str]:
        """Store URLs known to fail :meth:`dialable` now, whatever the store says:
        waiting for a retry, or where a connected peer answers."""
        now = self.clock()
        self._forget_retries(now)
        urls = {url for url, at in self._retry_at.items() if at > now}
        urls.update(url for url, peer in self._peer_of_url.items() if peer in connected_ids)
        return urls

    def _forget_retries(self, now: float) -> None:
        """Forget the URLs (and addresses) whose retry came :data:`RETRY_MEMORY` ago
        and that failed no more since: their next failure starts the delays (and its
        INFO line) afresh (found in review: every URL that ever failed stayed for the
        node's life, and each round walked them all: 3.6 ms a round with 100,000)."""
        horizon = now - RETRY_MEMORY
        for url in [url for url, at in self._retry_at.items() if at <= horizon]:
            del self._retry_at[url]
            self._failures.pop(url, None)
            self._early_closes.pop(url, None)
        past = [address for address, at in self._address_retry_at.items() if at <= horizon]
        for address in past:
            del self._address_retry_at[address]

    def start_dial(self, url: str, *, anchor: bool = False) -> Dial:
        """Note a managed dial of the store's ``url`` as under way, and return it."""
        dial_url, expected = split_peer_url(url)
        dial = self._dials[url] = Dial(url, dial_url, expected, anchor)
        self._store_url[dial_url] = url
        if anchor:
            self._anchoring = url
        return dial

    def selection(
        self, connected_ids: Collection[str], own_urls: Iterable[str], view: PeerView | None
    ) -> Selection | None:
        """
        A round of managed dials towards the target, or None if none is missing.

        Args:
            connected_ids: Peers connected now (either way), and our own id.
            own_urls: The URLs we listen on.
            view: The peer store, if the node has one.

        """
        self._deferred = False  # this round says again if it leaves some out
        missing = self.missing()
        if missing <= 0:
            return None
        from .selection import Selection  # (it drives this policy: a module of its own)

        return Selection(self, missing, connected_ids, own_urls, view, anchors=False)

    def is_anchor(self, conn: ConnId, view: PeerView | None) -> bool:
        """Whether an outbound connection anchors us: to a bootstrap URL or peer, to a
        peer we had connected to before this run, or open for ``anchor_age``."""
        out = self._conns[conn]
        return (
            address_of(out.url) in self.bootstrap
            or self.clock() - out.opened_at >= self.anchor_age
            or (out.peer_id is not None and view is not None and view.is_anchor(out.peer_id))
        )

    def anchor_selection(
        self, connected_ids: Collection[str], own_urls: Iterable[str], view: PeerView | None
    ) -> Selection | None:
        """
        An anchor round, or None: dial one bootstrap or earlier peer (one at a time,
        even past the target) when we have outbound connections and none anchors us,
        so that peers learned from others can't be all we have. Arguments as for
        :meth:`selection`.
        """
        if not self._conns or any(self.is_anchor(conn, view) for conn in self._conns):
            return None
        for dial in self._dials.values():
            if dial.url == self._anchoring or address_of(dial.url) in self.bootstrap:
                return None  # one on the way
        from .selection import Selection

        return Selection(self, 1, connected_ids, own_urls, view, anchors=True)
