"""
The client's dialling, in asyncio: a reconnect loop per persistent URL, and the outbound
manager that keeps ``target_outbound`` connections from the peer store. What to dial and
when is decided by :class:`~trustp2p.protocol.outbound.OutboundPolicy`; this module
carries its decisions out.

"""

from __future__ import annotations

__all__ = ["Dialer"]

import asyncio
import errno
import logging
from typing import TYPE_CHECKING

from ..drivers import check_peer_url
from ..drivers.base import Socket
from ..exceptions import (
    DriverError,
    HandshakeClosed,
    NodeStateError,
    PeerIdMismatch,
    SelfDialError,
)
from ..identity import PeerId, short_id
from ..protocol.backoff import served
from ..protocol.close import CloseCode, block_left
from ..protocol.handshake import is_id_mismatch, is_mode_mismatch, is_secure_mismatch
from ..protocol.hosts import crowded_group
from ..protocol.outbound import Dial, Gate, OutboundPolicy, Reconnect
from ..protocol.peers import is_address_key, peer_key
from ..protocol.selection import Selection
from ..protocol.urls import address_of, split_peer_url
from ..tasks import TaskOwner
from .feelers import Feelers

if TYPE_CHECKING:
    from ..storage.peerstore import PeerStore
    from .node import Node

logger = logging.getLogger(__name__)

_MAX_REASONS = 256  # addresses whose last failure is kept (Dialer.last_failure)


class Dialer:
    """
    Dials for a node's client role (``node.client.dialer``).

    Persistent URLs are dialled for as long as the node runs, again after a delay that
    grows from ``reconnect_initial`` to ``reconnect_max`` (with jitter) when a dial
    fails or a connection drops. The outbound manager runs a round at start, and wakes
    on :meth:`wake` (peer exchange learnt URLs, a connection or a dial ended or
    failed) or every
    ``exchange_interval`` (sooner when URLs nobody has proven wait for their bound,
    :class:`~trustp2p.protocol.limits.UnprovenDials`), and dials what the policy
    selects.

    Args:
        node: The node whose client dials.

    """

    def __init__(self, node: Node) -> None:
        self.node = node
        options = node.options
        self.policy = OutboundPolicy(
            clock=self._now,
            target=options.target_outbound,
            max_per_netgroup=options.max_outbound_per_netgroup,
            anchor_age=options.anchor_age,
            retry_initial=options.reconnect_initial,
            retry_max=options.reconnect_max,
            retry_factor=options.reconnect_factor,
            bootstrap=[split_peer_url(url)[0] for url in options.peers],
        )
        self.tasks = TaskOwner(logger)
        self._persistent: dict[str, asyncio.Task[None]] = {}  # address -> task
        self.ourselves: set[str] = set()  # URLs (as stored) found to be this node
        self._twinned: dict[str, str] = {}  # URL (as stored) -> the nonce of its twin
        self._wakeup = asyncio.Event()
        self._started = False  # connect() before start() dials from the start
        self.feelers = Feelers(self)  # one unproven URL dialled every feeler_interval
        # Why the last dial of an address failed or its connection closed, for the
        # errors of the waits (tester37 F6: a TimeoutError said only "not within 3 s";
        # the reasons were INFO lines). Oldest first, at most _MAX_REASONS.
        self._reasons: dict[str, str] = {}

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    @property
    def urls(self) -> list[str]:
        """The URLs dialled: persistent ones as given, then the store's being dialled."""
        return [*self.policy.persistent_urls, *(dial.url for dial in self.policy.dials)]

    def connect(self, url: str) -> None:
        """Dial ``url`` for good (see :meth:`~trustp2p.ClientRole.connect`)."""
        # The checks of the node's peers (tester31 F3: a URL with credentials or a path
        # went into logs, the store and get_peers answers; no port dialled 80; no host
        # or a bad port was redialled for ever).
        check_peer_url(url)
        self.node.driver_for_url(url)  # a driver that isn't installed fails now
        if self.tasks.closed:  # (a URL dialled already would say nothing)
            raise NodeStateError(f"can't dial {url}: the node has stopped")
        if not self.policy.add_persistent(url):
            self._pin(url)
        elif self._started:
            self._dial_for_good(url)

    def _pin(self, url: str) -> None:
        """``url``'s address is dialled already: if ``url`` names a peer the URL dialled
        doesn't, its next dials are ``url``'s (tester31 F4: the pin was dropped without
        a word); a connection there to another peer stays until it closes, said."""
        pin = split_peer_url(url)[1]
        given = self.policy.persistent_url(url)
        if pin is None or given is None or split_peer_url(given)[1] == pin:
            return
        self.policy.pin_persistent(url)
        client = self.node.client
        socket = client.socket_for(given) if client is not None else None
        if socket is not None:
            self._pin_met(given, socket)

    def _pin_met(self, dialled: str, socket: Socket) -> None:
        """``socket``, dialled as ``dialled``, is up: if its address was pinned to
        another peer since (while it connected, say: review35), say it stays."""
        url = self.policy.persistent_url(dialled)
        pin = split_peer_url(url)[1] if url is not None else None
        if pin is not None and socket.peer_id != pin:
            logger.warning("! %s: the connection to %s, dialled as %s, is to another peer; "
                           "it stays until it closes, and the address is dialled with the "
                           "pin from then on (disconnect() it to drop it now)", url,
                           address_of(dialled), dialled)  # fmt: skip

    def _dial_for_good(self, url: str) -> None:
        task = self.tasks.spawn(self._dial_forever(url), f"dial {url}")
        self._persistent[address_of(url)] = task

    async def disconnect(self, url: str) -> None:
        """Stop dialling ``url`` for good (any spelling of its address)."""
        given = self.policy.remove_persistent(url)
        task = self._persistent.pop(address_of(url), None) if given is not None else None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def wake(self) -> None:
        """Run the outbound manager now."""
        self._wakeup.set()

    def start(self) -> None:
        self._started = True
        for url in self.node.options.peers:
            self.connect(url)
        for url in self.policy.persistent_urls:
            if address_of(url) not in self._persistent:  # given to connect() before start
                self._dial_for_good(url)
        self.tasks.spawn(self._report_held(), "links held")
        if self.policy.target > 0:
            # A first round at once: a node restarted with its bootstrap peers down (or
            # none given) has the peers of its store to dial.
            self._wakeup.set()
            self.tasks.spawn(self._manage(), "outbound manager")
            self.tasks.spawn(self.feelers.run(), "feelers")

    async def stop(self) -> None:
        await self.tasks.aclose()
        self._persistent.clear()

    # What the node reports.

    def connection_opened(self, socket: Socket) -> None:
        self.policy.connection_opened(socket.id, socket.peer, socket.peer_id)
        if not socket.inbound:  # it led to another node: not (only) ourselves
            self.ourselves.discard(self.policy.store_url(socket.peer))
            self._close_if_crowded(socket)
            self._pin_met(socket.peer, socket)

    def _close_if_crowded(self, socket: Socket) -> None:
        """A managed dial (not an anchor) reached an address whose network group holds
        ``max_outbound_per_netgroup`` other outbound connections (it was chosen by its
        URL, and a name counts by its domain): close it, and wait the longest retry
        delay before its next try."""
        dial = next((d for d in self.policy.dials if d.dial_url == socket.peer), None)
        client = self.node.client
        if dial is None or dial.anchor or client is None:
            return
        others = [other.host for other in client.sockets if other is not socket]
        limit = self.policy.max_per_netgroup
        group = crowded_group(socket.host, others, limit)
        if group is None:
            return
        self.policy.dial_failed(dial.url, lasting=True)
        logger.debug(
            "= %s reached %s: %d outbound peers in %s already, closing",
            socket.peer,
            socket.host,
            limit,
            group,
        )
        socket.close_soon(CloseCode.NORMAL_CLOSURE, "outbound peers of your network maxed out")

    def connection_closed(self, socket: Socket) -> None:
        self.policy.connection_closed(socket.id)
        self._wakeup.set()

    def duplicate_dialled(self, socket: Socket, peer_id: str) -> None:
        """
        ``socket``, which we dialled, reached ``peer_id``, connected already, and the
        node refused it as a duplicate: its URL isn't dialled again while that peer is
        connected, and the store records who answers there, as for any connection we
        dialled (a URL another peer only claimed, or known without an id, is ``peer_id``'s
        from then on, and not dialled again in the next runs either: attacker36 F3).
        """
        self.policy.remember_peer(socket.peer, peer_id)
        self.node.tasks.spawn(self.record_connected(socket, peer_id), "record connection")

    async def record_connected(self, socket: Socket, peer_id: str | None = None) -> None:
        """
        Tell the peer store that ``socket``, which we dialled, reached its peer
        (``peer_id``, else the socket's), under the store's URL dialled (with the
        ``/p2p/<id>`` it names). A persistent URL (``peers``, :meth:`connect`) the store
        doesn't hold is stored now, as a bootstrap URL, not at the start: a URL that
        never worked (a typo) isn't dialled by the next runs (tester37 F1). Another
        key than the one proven there before is said (:func:`_say_key_changed`).
        """
        store = self.node.store
        if store is None:
            return
        url = self.policy.store_url(socket.peer)
        key = peer_key(peer_id or socket.peer_id, socket.host)
        before = store.verified_peer_id(url)
        mine = self.policy.persistent_url(socket.peer) is not None  # (the application's)
        if before is not None and before != key and not is_address_key(key):
            # At WARNING for a URL the operator gave, now or before (review50 R5: a URL
            # learnt from peers, its server started without a data directory, said it
            # each restart, with advice to pin an address nobody here chose).
            operator = mine or store.is_anchor(before, bootstrap=True)
            _say_key_changed(url, before, key, logging.WARNING if operator else logging.INFO)
        await store.record_connected(peer_id=key, url=url, address=socket.host, bootstrap=mine)

    def last_failure(self, url: str) -> str | None:
        """Why the last dial of ``url``'s address failed, or its last connection closed
        (None: none has, as far as this node remembers)."""
        return self._reasons.get(address_of(url))

    def _failed(self, url: str, reason: str) -> None:
        address = address_of(url)
        self._reasons.pop(address, None)
        self._reasons[address] = reason
        if len(self._reasons) > _MAX_REASONS:
            del self._reasons[next(iter(self._reasons))]

    def dial_failed(self, url: str, error: Exception) -> None:
        """A dial of ``url`` or its handshake failed: count it; the store remembers it.
        A URL found to be this node is no failure: it is dialled again only every
        ``reconnect_max`` (a name may lead to other nodes too), until it reaches one. A
        refusal "try again later" (1013: the peer is full) is no failure in the store:
        the URL waits its retry delay (or the wait the refusal names) in this run."""
        self._failed(url, str(error))
        url = self.policy.store_url(url)
        if isinstance(error, SelfDialError):
            if url not in self.ourselves:
                self.ourselves.add(url)
                delay = self.node.options.reconnect_max
                logger.info("= %s is this node: dialled again only every %g s", url, delay)
            return
        self.policy.dial_failed(
            url,
            lasting=is_mode_mismatch(str(error)),
            address=not isinstance(error, PeerIdMismatch),  # another id may answer there
        )
        if isinstance(error, HandshakeClosed) and error.code == CloseCode.TRY_AGAIN_LATER:
            # A live node with no room for us now (full, or a storm's cooldown): a wait
            # before the next dial, no failure of the URL (review69 F1: every client's
            # feelers made a popular full server's URL the first its store forgot).
            self.policy.hold(url, block_left(error.reason))
        elif (store := self.node.store) is not None and not _ours(error):
            self.node.tasks.spawn(store.record_failure(url), f"record failure {url}")
        self._wakeup.set()  # a bootstrap peer that can't be reached: the store may help

    # Dialling

    async def dial(self, url: str, expected: PeerId | None) -> Socket:
        """
        Open one connection (for a secure node, the handshake follows on its own).

        Raises:
            DriverError: If the dial fails.

        """
        node = self.node
        secure = node.secure_layer
        if secure is not None:
            secure.expect(url, expected)
        return await node.driver_for_url(url).connect(url, node.listener)

    async def _dial_forever(self, url: str) -> None:
        options = self.node.options
        reconnect = Reconnect(
            clock=self._now,
            initial=options.reconnect_initial,
            maximum=options.reconnect_max,
            factor=options.reconnect_factor,
            jitter=options.reconnect_jitter,
        )
        mismatched = False  # the last connection closed on a secure/plain mismatch
        blocked = False  # said that we block the peer there (once per block)
        while True:
            url = self.policy.persistent_url(url) or url  # (pinned by connect() since?)
            dial_url, expected = split_peer_url(url)
            gate, peer_id = self.policy.gate(url, self.connected_ids(), self.node.store)
            if gate is Gate.WAIT_FOR_PEER:
                assert peer_id is not None
                other = self.node.socket_for_peer(peer_id)
                if other is not None:
                    # One connection per peer (maybe it dialled us): dial again when
                    # that one closes.
                    await other.wait_closed()
                    if self.node.socket_for_peer(peer_id) is other:
                        await asyncio.sleep(1.0)  # closed, not forgotten yet: never spin
                    continue
            elif gate is Gate.BACK_OFF:
                delay = reconnect.failed()
                if not blocked:
                    self._blocked(url, peer_id, delay)
                blocked = True
                await asyncio.sleep(delay)
                continue
            blocked = False
            try:
                socket = await self.dial(dial_url, expected)
            except DriverError as exc:
                self.dial_failed(dial_url, exc)
                delay = reconnect.failed()
                if self.policy.store_url(dial_url) in self.ourselves:
                    delay = max(delay, options.reconnect_max)
                logger.info("! %s; retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            reconnect.opened()
            await socket.wait_closed()
            twins = self.node.connections.twins
            nonce = twins.dropped(socket)
            if nonce is not None:  # plain mode: the peer dialled us too, and that one stays
                logger.info(
                    "= %s: the peer's connection to us stays; redialling once it closes", dial_url
                )
                while (kept := twins.connection_to(nonce)) is not None:
                    await kept.wait_closed()
                    # After the peer's dialer, which dials after one such delay: its
                    # connection, if it comes, stays (it won before), and we wait again.
                    await asyncio.sleep(2 * reconnect.closed())
                continue
            delay = reconnect.closed(worked=served(socket.stats.messages_in, socket.close_code))
            delay, mismatched = self._closed(dial_url, socket, delay, mismatched)
            await asyncio.sleep(delay)

    def _closed(
        self, dial_url: str, socket: Socket, delay: float, mismatched: bool
    ) -> tuple[float, bool]:
        """A persistent URL's connection closed: say so, and return the delay before the
        next dial and whether the close was a secure/plain mismatch."""
        self.node.connections.twins.outbound_closed(socket, logger)
        self._failed(dial_url, f"closed ({socket.close_code} {socket.close_reason or '-'})")
        options = self.node.options
        if self.policy.store_url(dial_url) in self.ourselves:
            return max(delay, options.reconnect_max), mismatched  # said once
        if is_mode_mismatch(socket.close_reason):
            # It can't work until one side changes `secure` (`alt`, the pinned id...):
            # say so once, and try again only as often as the slowest redial.
            delay = max(delay, options.reconnect_max)
            if not mismatched:
                self._mismatch(dial_url, socket.close_reason, delay)
            return delay, True
        # The peer blocked us (its close says "blocked..."), or refuses our address:
        # not routine churn, and
        # no use redialling before the block ends, when it says (found by a new user:
        # a redial every 60 s at most for the hour, each a handshake refused).
        level = logging.WARNING if _blocked_us(socket.close_reason) else logging.INFO
        delay = max(delay, block_left(socket.close_reason))
        logger.log(
            level,
            "= connection to %s closed (%s %s); redialling in %.1f s",
            dial_url,
            socket.close_code,
            socket.close_reason or "-",
            delay,
        )
        return delay, False

    def _blocked(self, url: str, peer_id: str | None, delay: float) -> None:
        what = f"the peer there ({short_id(peer_id)})" if peer_id else "its address"
        logger.warning(
            "! not dialling %s: %s is blocked here (for block_duration from its offence);"
            " checking again in %.1f s",
            url, what, delay,
        )  # fmt: skip

    def _mismatch(self, url: str, reason: str, delay: float) -> None:
        # The reason may be the peer's, in its words: say which side this node is.
        if is_id_mismatch(reason):  # (tester30 F6: a WARNING at every redial)
            logger.warning(
                "! %s is another peer than its URL's /p2p/ id names (%s): redialling every "
                "%g s until the URL or the key there changes", url, reason, delay
            )  # fmt: skip
            return
        if not is_secure_mismatch(reason):  # another network, or protocol version
            logger.warning(
                "! %s and this node can't talk (the close said %r): redialling every "
                "%g s until one side changes its `alt` or version", url, reason, delay
            )  # fmt: skip
            return
        logger.warning(
            "! %s and this node disagree on the secure channel (this node runs with "
            "secure=%s; the close said %r): redialling every %g s until one side "
            "changes `secure`",
            url, self.node.secure_layer is not None, reason, delay,
        )  # fmt: skip

    async def _dial_once(self, dial: Dial) -> None:
        """
        Dial a URL from the store once, and stay until the connection closes. A URL
        with ``/p2p/<id>`` is dialled expecting that peer: another key there fails the
        handshake, and the failure counts against that entry only.
        """
        try:
            try:
                socket = await self.dial(dial.dial_url, dial.expected)
            except DriverError as exc:
                self.dial_failed(dial.dial_url, exc)
                # Logged (found by a new-user tester: at DEBUG, a lost peer's redials
                # said nothing for a minute), within a budget: a store may hold many
                # stale addresses. Its next failures in a row at DEBUG: a dead address
                # said so once a minute for as long as the node ran (another tester).
                failures = self.policy.failures(dial.url)
                if failures > 1:
                    logger.debug("! %s (a peer-store address; %d failures in a row)", exc, failures)
                    return
                self.node.connections.inbound.log(
                    logger, logging.INFO, "store dial failed", "! %s (a peer-store address)", exc
                )
                return
            finally:
                # No longer under way as an unproven dial: if a round left some out,
                # one may start now.
                if self.policy.dial_done(dial.url):
                    self._wakeup.set()
            await socket.wait_closed()
            self.dial_closed(dial, socket)
        finally:
            self.policy.dial_ended(dial.url)
            self._wakeup.set()

    def dial_closed(self, dial: Dial, socket: Socket) -> None:
        """The connection of the store dial ``dial`` (a managed dial's, or a feeler's)
        closed: the twin it left, a block the peer said, a mode mismatch it reported
        after the open."""
        twins = self.node.connections.twins
        if (nonce := twins.dropped(socket)) is not None:  # plain: the peer's dial stays
            # Not dialled while it does (found by a new user: the store's URL was
            # dialled again every 1 to 60 s, each connection closed as a twin).
            logger.info("= %s: the peer's connection to us stays; not dialled while "
                        "it does", dial.dial_url)  # fmt: skip
            self._twinned[dial.url] = nonce
        twins.outbound_closed(socket, logger)
        reason = socket.close_reason  # (a wrong /p2p/ id: counted at the handshake)
        if (left := block_left(reason)) > 0:  # the peer blocks us: not before it ends
            self.policy.hold(dial.url, left)
        if is_mode_mismatch(reason) and not is_id_mismatch(reason):  # plain: the peer
            self.dial_failed(dial.dial_url, DriverError(reason))  # refused us after

    # The outbound manager

    async def _manage(self) -> None:
        """Keep ``target_outbound`` servers, drawing on the peer store."""
        interval = self.node.options.exchange_interval
        while True:
            # Sooner when the last round left unproven URLs out for their bound.
            wake_in = self.policy.wake_in(self.node.store)
            timeout = interval if wake_in is None else min(interval, wake_in)
            try:
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            # Cleared before the round's first await: a wake() during the round
            # (peer exchange, a dial ending) runs another round.
            self._wakeup.clear()
            store = self.node.store
            if store is None:
                continue
            policy = self.policy
            own = [*self.node.listen_urls, *self.ourselves, *self.twins_open()]
            anchor = policy.anchor_selection(self.connected_ids(), own, store)
            if anchor is not None:
                await self._carry_out(anchor, store)
            selection = policy.selection(self.connected_ids(), own, store)
            if selection is not None:
                await self._carry_out(selection, store)

    async def _carry_out(self, selection: Selection, store: PeerStore) -> None:
        """Ask the store what the selection asks, and dial what it picks."""
        while (query := selection.query()) is not None:
            fetch = store.anchor_candidates if query.anchors else store.candidates
            urls = await fetch(
                query.limit, exclude_urls=query.exclude_urls, exclude_ids=query.exclude_ids
            )
            for dial in selection.offer(urls):
                if dial.anchor:
                    logger.info(
                        "= no outbound peer is a bootstrap or long-lived one: dialling %s",
                        dial.url,
                    )
                self.tasks.spawn(self._dial_once(dial), f"dial {dial.url}")

    async def _report_held(self) -> None:
        """Every :data:`HELD_INTERVAL`, tell the peer store which links we dialled are
        still open (:meth:`~trustp2p.storage.peerstore.PeerStore.record_held`): a peer
        that stays earns what one redialled each hour does."""
        while True:
            await asyncio.sleep(HELD_INTERVAL)
            store, client = self.node.store, self.node.client
            if store is None or client is None:
                continue
            for socket in client.sockets:
                if socket.closed:
                    continue
                key = peer_key(socket.peer_id, socket.host)
                try:
                    await store.record_held(peer_id=key, url=self.policy.store_url(socket.peer))
                except NodeStateError:
                    return  # the node is stopping

    def twins_open(self) -> list[str]:
        """The store's URLs whose dial was dropped for a twin that is still open."""
        twins = self.node.connections.twins
        for url, nonce in list(self._twinned.items()):
            if twins.connection_to(nonce) is None:
                del self._twinned[url]
        return list(self._twinned)

    def connected_ids(self) -> set[str]:
        """Peers connected either way, and ourselves: never dialled."""
        ids = self.node.connected_peer_ids()
        if self.node.peer_id is not None:
            ids.add(self.node.peer_id)
        return ids


def _say_key_changed(url: str, before: str, now: str, level: int) -> None:
    """Another key answers at ``url``, which names no peer, than the one that proved
    itself there before: said (at WARNING for the operator's URLs), as SSH says a
    changed host key (tester37 F2: nothing said it), with how to insist on the old one.
    The connection stays: a URL without ``/p2p/<id>`` trusts whoever answers there (a
    server given a new key keeps its clients), and its pin is how to refuse another."""
    logger.log(
        level,
        "! %s: another key answers there now: peer %s, not %s as before (its identity "
        "changed, or another node took the address); connected, as the URL names no "
        "peer: dial %s/p2p/%s to accept only the old one there",
        url, now, before, url, before,
    )  # fmt: skip


HELD_INTERVAL = 60.0
"""Seconds between two reports of the open links we dialled to the peer store."""

_LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def _ours(error: BaseException) -> bool:
    """Whether a dial failed for want of this node's resources (out of file descriptors,
    buffers or memory): not the peer's failure (found by a new user: a healthy bootstrap
    peer scored -4.85 after a node ran out of descriptors)."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _LOCAL_ERRNOS:
            return True
        cause = cause.__cause__
    return False


def _blocked_us(reason: str | None) -> bool:
    """Whether a close reason says the peer blocked this node (penalties' "blocked: ...",
    or a refusal "blocked"), or refuses our address (tester38 F1: the ninth client
    behind one NAT was refused, "too many connections from your address", at INFO, and
    a library user saw nothing)."""
    return reason is not None and reason.startswith(("blocked", _FROM_YOUR_ADDRESS))


_FROM_YOUR_ADDRESS = "too many connections from your address"
