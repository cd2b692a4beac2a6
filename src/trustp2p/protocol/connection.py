"""
The per-connection protocol: one peer's messages in, what to do about them out.

Like websockets' ``Protocol`` and h11's ``Connection``, :class:`ConnectionProtocol` does
no I/O: the node feeds it what the driver received (:meth:`~ConnectionProtocol.receive_data`)
and carries out the :mod:`~trustp2p.protocol.actions` it returns, in order, on an injected clock.
It owns the rules that decide what happens to a peer on one connection:

* the connection's state: ``HANDSHAKING`` → ``INTRODUCED`` → ``OPEN`` → ``CLOSING`` → ``CLOSED``;
* the introduction: the ``version`` talk (plain mode) or ``hello`` (secure mode, where
  nothing else is accepted before it), checked against our protocol version and network
  (``alt``). In plain mode a peer that never sends a decodable ``version`` still works:
  the shipped original sends an empty text frame instead, which counts as its
  introduction. One that carries our own ``nonce`` is a dial to ourselves (:class:`SelfDial`);
* the checks every package passes: it decodes within the size limit, and its own
  ``version`` major and ``alt`` are the connection's;
* the request budget, spent by requests and talks: a peer over it is throttled;
* the invalid-package count and how loudly each is logged;
* liveness (:mod:`~trustp2p.protocol.liveness`): our pings, their pongs, the verdict on
  a peer that doesn't answer; the answer to the peer's pings when no thread takes them;
* the shape and size of error answers (:func:`error_answer`).

"""

from __future__ import annotations

__all__ = [
    "CONTAINERS_PER_GOSSIP_TOKEN",
    "GOSSIP_BYTES_PER_TOKEN",
    "MAX_ERROR_EVENT_CHARS",
    "MAX_ERROR_TEXT_CHARS",
    "PING_EVENT",
    "PONG_EVENT",
    "SLOW_VALUES_PER_GOSSIP_TOKEN",
    "SLOW_VALUES_PER_TOKEN",
    "VALUES_PER_TOKEN",
    "WARN_INVALID",
    "ConnectionProtocol",
    "ConnectionState",
    "body_cost",
    "error_answer",
    "gossip_cost",
]

import enum
from collections.abc import Callable, Container

from ..exceptions import HandshakeError, PackageError
from .actions import (
    Action,
    Block,
    Close,
    DeliverGossip,
    DeliverResponse,
    Dispatch,
    Ignore,
    Introduced,
    Lost,
    Penalty,
    PingAnswered,
    SelfDial,
    Send,
    Throttle,
    Unhandled,
)
from .close import CloseCode, fit_reason
from .costs import (
    CONTAINERS_PER_GOSSIP_TOKEN,
    GOSSIP_BYTES_PER_TOKEN,
    SLOW_VALUES_PER_GOSSIP_TOKEN,
    SLOW_VALUES_PER_TOKEN,
    VALUES_PER_TOKEN,
    body_cost,
    gossip_cost,
)
from .deliver import NO_HANDLER
from .handshake import (
    HANDSHAKE_MAGIC,
    HELLO_EVENT,
    NONCE_KEY,
    SECURE_PEER,
    SELF_DIAL,
    VERSION_EVENT,
    check_version,
    kept_introduction,
    major_version,
    peer_package_limit,
)
from .jsontext import slow_values, text_size
from .limits import TokenBucket
from .liveness import Liveness, LivenessTimings, Verdict
from .package import (
    ANSWER_TYPE,
    DEFAULT_ALT,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    Body,
    Package,
    PackageType,
    Tag,
    build_package,
    decode,
)
from .path import PathView
from .scoring import PackageCounts
from .urls import MAX_URLS_PER_PEER, validate_urls

WARN_INVALID = 10
"""A connection's first invalid packages are reported at WARNING, the rest at DEBUG, so
that a peer can't flood the log."""

PING_EVENT = "ping"
"""The event of a heartbeat ping (``HEARTBEAT_PING``, body ``{}``), as the original's."""

PONG_EVENT = "pong"
"""The event of a heartbeat pong (``HEARTBEAT_PONG``, body ``{"sleep": false}``)."""

MAX_ERROR_EVENT_CHARS = 128
"""An error answer repeats at most this many characters of the request's event name."""

MAX_ERROR_TEXT_CHARS = 256
"""An error answer's text is cut to this many characters: with the event, a 44-character
tag and the framing, every error answer fits in 2 KiB, far below any peer's limit."""


class ConnectionState(enum.Enum):
    """Where a connection is in its life."""

    HANDSHAKING = "handshaking"  # open; we haven't introduced ourselves yet
    INTRODUCED = "introduced"  # our version/hello is sent; the peer's isn't received
    OPEN = "open"  # the peer introduced itself (plain mode: or spoke validly)
    CLOSING = "closing"  # we decided to close: nothing more is dispatched
    CLOSED = "closed"  # the connection is gone


def error_answer(
    request_type: PackageType, event: str, tag: str, text: str, *, alt: str = DEFAULT_ALT
) -> Package | None:
    """
    The answer to a request we can't serve: ``{"error": text}`` with the request's tag.

    The event and the text are cut to :data:`MAX_ERROR_EVENT_CHARS` and
    :data:`MAX_ERROR_TEXT_CHARS`, so that a request with a huge event name can't make us
    send a package over the peer's size limit.

    Returns:
        The RESPONSE or HEARTBEAT_PONG, or ``None`` when ``request_type`` is not a request
        type or there is no tag to answer with.

    """
    answer_type = ANSWER_TYPE.get(request_type)
    if answer_type is None or not tag:
        return None
    if len(text) > MAX_ERROR_TEXT_CHARS:
        text = text[: MAX_ERROR_TEXT_CHARS - 1] + "…"
    return build_package(
        answer_type, event[:MAX_ERROR_EVENT_CHARS], {"error": text}, tag=Tag(tag), alt=alt
    )


class ConnectionProtocol:
    """
    The rules of one connection, free of I/O.

    Args:
        secure: The connection runs the secure channel: the peer must say ``hello``
            first, and ``peer_id`` is its authenticated id.
        peer_id: The peer's authenticated id (secure mode), else ``None``.
        introduction: Our version talk or hello, sent by :meth:`start`.
        clock: Returns the current time in seconds (the event loop's clock).
        handled: The ``(package type, event)`` pairs some thread handles: a live view
            (only ``in`` is used), so that threads loaded later count.
        request_budget: The peer's request budget, shared by its connections, spent by
            its requests and talks; ``None`` for no limit.
        gossip_budget: The peer's budget of gossip messages, as ``request_budget``.
        alt: Our network id; packages and introductions must carry it.
        protocol_version: Our protocol version; packages must share its major.
        max_package_size: Bytes; larger messages are invalid. ``None``: no limit.
        liveness: The timings of the liveness rules.
        inbound: The peer dialled us: we lead the pinging (see
            :mod:`~trustp2p.protocol.liveness`).
        nonce: Our node's nonce (in our version body): an introduction carrying it
            means we dialled ourselves. ``None``: no such check.

    Attributes:
        state: The :class:`ConnectionState`.
        peer_version: The peer's version or hello body, once received.
        listen_urls: What the peer said it listens on (hello or ``my_url``).
        peer_max_size: The largest package the peer takes, by its introduction
            (:func:`~trustp2p.protocol.handshake.peer_package_limit`), when it is under
            ``max_package_size``; ``None``: unknown, or not under ours.
        invalid: Invalid packages received on this connection.
        valid: Valid packages received on this connection (by :meth:`receive_data`).
        last_seen: When the last complete message arrived from the peer (clock seconds).
        liveness: The connection's :class:`~trustp2p.protocol.liveness.Liveness` state.
        last_valid: Whether the last message received was a valid package.
        last_package: The last package decoded, valid or not (for logging).
        answered_ping: Whether the last HEARTBEAT_PONG received answered our own
            heartbeat ping (such a pong waits in no request table, and costs the peer
            nothing; any other pong nobody waits for is unmatched).

    """

    def __init__(
        self,
        *,
        secure: bool,
        peer_id: str | None,
        introduction: Package,
        clock: Callable[[], float],
        handled: Container[tuple[PackageType, str]],
        request_budget: TokenBucket | None = None,
        gossip_budget: TokenBucket | None = None,
        alt: str = DEFAULT_ALT,
        protocol_version: str = PROTOCOL_VERSION,
        max_package_size: int | None = 2**20,
        liveness: LivenessTimings | None = None,
        inbound: bool = True,
        nonce: str | None = None,
    ) -> None:
        self.secure = secure
        self._nonce = nonce
        self.peer_id = peer_id
        self._introduction = introduction
        self._clock = clock
        self._handled = handled
        self._budget = request_budget
        self._gossip_budget = gossip_budget
        self._alt = alt
        self._major = major_version(protocol_version)
        self._protocol_version = protocol_version
        self._max_size = max_package_size
        self.state = ConnectionState.HANDSHAKING
        self.peer_version: Body | None = None
        self.listen_urls: list[str] = []
        self.peer_max_size: int | None = None
        self.invalid = 0
        self.valid = 0
        self.last_seen = clock()
        self.liveness = Liveness(self.last_seen, liveness or LivenessTimings(), leads=inbound)
        self._ping: Package | None = None
        self.last_valid = False
        self.last_package: Package | None = None
        self.slow_read = 0
        """Values of the last package's body read the slow way (:func:`body_cost`)."""
        self.answered_ping = False

    # Connection events

    def start(self) -> list[Action]:
        """The connection is open: introduce ourselves."""
        if self.state is not ConnectionState.HANDSHAKING:
            return []
        self.state = ConnectionState.INTRODUCED
        return [Send(self._introduction)]

    def close(self) -> None:
        """We are closing the connection: nothing more is dispatched."""
        if self.state is not ConnectionState.CLOSED:
            self.state = ConnectionState.CLOSING

    def connection_lost(self) -> None:
        """The connection is gone."""
        self.state = ConnectionState.CLOSED

    # Liveness

    def heartbeat(
        self,
        *,
        last_bytes: float,
        backlog: Callable[[], int],
        reading_paused: bool,
        written: int = 0,
        path: Callable[[], PathView | None] | None = None,
    ) -> list[Action]:
        """
        Check the peer's liveness now (the node's heartbeat round calls this).

        Args:
            last_bytes: When bytes last arrived from the peer, a partial frame too.
            backlog: Returns the bytes we wrote that the peer hasn't taken yet; called
                only while a ping is outstanding or about to be sent.
            reading_paused: We are not reading from the peer.
            written: Bytes written to the connection so far (see
                :meth:`Liveness.check`).
            path: Returns TCP's view of the path (see :meth:`Liveness.check`); called
                only while a ping is outstanding.

        Returns:
            ``[Send(ping)]`` when a ping is due, ``[Lost(reason)]`` when the peer is
            to be dropped, else nothing.

        """
        if self.state not in (ConnectionState.INTRODUCED, ConnectionState.OPEN):
            return []
        liveness = self.liveness
        now = self._clock()
        outstanding = liveness.outstanding is not None
        verdict = liveness.check(
            now,
            last_bytes=last_bytes,
            last_package=self.last_seen,
            backlog=backlog() if outstanding else 0,
            written=written,
            reading_paused=reading_paused,
            path=path() if outstanding and path is not None else None,
        )
        if verdict is Verdict.PING:
            return self._send_ping(now, backlog(), written)
        if verdict is Verdict.DEAD:
            self.state = ConnectionState.CLOSING
            if reading_paused:  # no pong can come: what we sent wasn't taken
                return [Lost(f"took none of our bytes in {liveness.dead_after:g} s")]
            return [Lost(f"no pong within {liveness.dead_after:g} s")]
        return []

    def probe_silent(self) -> list[Action]:
        """
        The peer dialled us and has sent no valid package yet, half its handshake time
        after it connected (the node asks, in plain mode): ping it. The original's
        client sends its version talk before its ``.proto`` is loaded, which on a fast
        link drops it: it says nothing, and answers pings (found by a tester, t44: our
        server closed it at ``handshake_timeout``, and it never redials). Its pong opens
        the connection as any package does (:meth:`receive_data`). The ping is not
        charged by liveness: one left unanswered is the handshake deadline's business
        (review78: with a long ``handshake_timeout`` it was dropped as a lost peer).

        Returns:
            ``[Send(ping)]``, or nothing if the connection isn't plain, or is open (the
            peer introduced itself or sent a package).

        """
        if self.secure or self.state is not ConnectionState.INTRODUCED:
            return []
        return [Send(self._ping_package())]

    def _send_ping(self, now: float, backlog: int, written: int) -> list[Action]:
        self.liveness.ping_sent(now, backlog, written)
        return [Send(self._ping_package())]

    def _ping_package(self) -> Package:
        if self._ping is None:
            self._ping = build_package(PackageType.HEARTBEAT_PING, PING_EVENT, {}, alt=self._alt)
        return self._ping

    # Receiving

    def receive_data(self, data: bytes | str) -> list[Action]:
        """
        Take one message from the driver. The clock is read once: the rules that need
        the time (liveness, the request budget) go by :attr:`last_seen`.

        Returns:
            What to do, in order. :attr:`last_valid` tells whether it was a valid package.

        """
        self.last_valid = False
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return []
        self.last_seen = self._clock()
        if type(data) is str and not data and not self.secure:
            # The shipped original's version talk: it can't encode it and sends "".
            self._open_unintroduced()
            return [Ignore("empty text frame (the original's version talk)")]
        self.slow_read = 0  # (review68: a package that failed kept the last one's)
        slow = slow_values()
        try:
            package = decode(data, max_size=self._max_size)
        except PackageError as exc:
            if isinstance(data, bytes) and data.startswith(HANDSHAKE_MAGIC) and not self.secure:
                return self._close(CloseCode.POLICY_VIOLATION, SECURE_PEER)
            return self.receive_invalid(exc)
        self.last_package = package
        self.slow_read = slow_values() - slow
        actions = self._receive(package)
        if self.last_valid:
            self.valid += 1
        return actions

    def counts(self) -> PackageCounts:
        """This connection's valid and invalid packages, for the block policy."""
        return PackageCounts(self.valid, self.invalid)

    def receive_package(self, package: Package) -> list[Action]:
        """Take one decoded package. See :meth:`receive_data`."""
        self.last_valid = False
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return []
        self.last_seen = self._clock()
        return self._receive(package)

    def _receive(self, package: Package) -> list[Action]:
        if package.alt != self._alt or (
            package.version != self._protocol_version
            and major_version(package.version) != self._major
        ):
            introducing = package.type is PackageType.TALK and self.peer_version is None
            if introducing and package.event in (VERSION_EVENT, HELLO_EVENT):
                return self._introduce(package)  # a peer of another network: says why
            return self._invalid(
                f"package of protocol version {package.version!r}, network {package.alt!r}: "
                f"the connection's are {self._protocol_version!r}, {self._alt!r}",
                package.type,
                package.event,
                package.tag,
            )
        self.last_valid = True
        package_type = package.type
        if package_type is PackageType.TALK and package.event in (VERSION_EVENT, HELLO_EVENT):
            return self._introduce(package)
        if self.state is not ConnectionState.OPEN:
            if self.secure:
                self.last_valid = False
                return self._close(
                    CloseCode.POLICY_VIOLATION,
                    f"{package_type.name} {package.event[:40]!r} before hello",
                    penalty=True,
                )
            self._open_unintroduced()  # plain mode: the original never introduces
        if package_type in RESPONSE_TYPES:
            if package_type is PackageType.HEARTBEAT_PONG:
                # Every ping {} has one tag (a content hash): this pong answers ours,
                # and any thread's ping too.
                rtt = None
                if self._ping is not None and package.tag == self._ping.tag:
                    rtt = self.liveness.pong_received(self.last_seen)
                self.answered_ping = rtt is not None
                if rtt is not None:
                    return [PingAnswered(rtt), DeliverResponse(package)]
            return [DeliverResponse(package)]
        actions: list[Action]
        if package_type is PackageType.GOSSIP:
            actions = [DeliverGossip(package)]
            gossip_budget = self._gossip_budget  # a message costs a signature check
            if gossip_budget is not None:
                body_json = package.body_json  # (its size: reading and hashing it)
                cost = 1 + text_size(body_json) // GOSSIP_BYTES_PER_TOKEN
                cost += gossip_cost(body_json, package.body.get("data"), self.slow_read)
                if (delay := gossip_budget.spend(self.last_seen, cost)) > 0:
                    actions.append(Throttle(delay))
            return actions
        if package_type in REQUEST_TYPES:
            return self._request(package)
        if (package_type, package.event) in self._handled:
            actions = [Dispatch(package)]
        else:
            actions = [Unhandled(package)]
        # Talks (and SYSTEM packages) spend the budget requests do: found by an
        # attacker, SYSTEM packages cost nothing (2.7 M in 20 s from one connection).
        self._spend(actions, package)
        return actions

    def _open_unintroduced(self) -> None:
        """The peer speaks without an introduction (plain mode): the original, which
        answers no ping either (its server drops them: :meth:`.Liveness.answers_no_ping`),
        unless it introduced itself before."""
        self.state = ConnectionState.OPEN
        if self.peer_version is None:
            self.liveness.answers_no_ping()

    def receive_invalid(self, error: PackageError) -> list[Action]:
        """Take a message that didn't decode: count it, and answer it if it was a
        request whose type and tag could be read."""
        self.last_valid = False
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return []
        return self._invalid(
            f"invalid package: {error}",
            error.package_type,
            error.event or "",
            error.tag or "",
            answer=f"invalid request: {error.reason}",
        )

    def charge(self, tokens: float) -> list[Action]:
        """Spend ``tokens`` more of the peer's request budget, for a request that cost
        more than one to serve (a large answer): a Throttle if that puts it in debt."""
        if self._budget is None or self.state is ConnectionState.CLOSED:
            return []
        delay = self._budget.spend(self._clock(), tokens)
        return [Throttle(delay)] if delay > 0 else []

    def penalise(self, reason: str) -> list[Action]:
        """Count an invalid package found invalid above this layer (by a thread)."""
        return self._invalid(reason, None, "", "")

    # Rules

    def _request(self, package: Package) -> list[Action]:
        actions: list[Action]
        ping = package.type is PackageType.HEARTBEAT_PING and package.event == PING_EVENT
        if ping:
            self.liveness.ping_received(self.last_seen)
        if (package.type, package.event) in self._handled:
            actions = [Dispatch(package)]
        elif ping:
            # Liveness needs no thread: answer at once, ahead of the packages waiting
            # for handlers, with the original's pong (docs/original-wire-format.md).
            actions = [Send(self._pong(package.tag))]
        else:
            why = f"{NO_HANDLER}{package.type.name} {package.event!r}"
            answer = error_answer(package.type, package.event, package.tag, why, alt=self._alt)
            actions = [] if answer is None else [Send(answer)]
        self._spend(actions, package)
        return actions

    def _spend(self, actions: list[Action], package: Package) -> None:
        """A request's or talk's cost, on arrival: one token, and its body's."""
        budget = self._budget
        if budget is not None:
            delay = budget.spend(self.last_seen, 1 + body_cost(package.body_json, self.slow_read))
            if delay > 0:
                actions.append(Throttle(delay))

    def _pong(self, tag: str) -> Package:
        return build_package(
            PackageType.HEARTBEAT_PONG, PONG_EVENT, {"sleep": False}, tag=Tag(tag), alt=self._alt
        )

    def _introduce(self, package: Package) -> list[Action]:
        body = package.body
        if self.peer_version is not None:
            return [Ignore(f"another {package.event} talk: the first one stands")]
        if self.secure and package.event != HELLO_EVENT:
            self.last_valid = False
            return self._invalid("version talk on a secure connection: hello expected", None)
        try:
            check_version(body, alt=self._alt, protocol_version=self._protocol_version)
        except HandshakeError as exc:
            self.last_valid = False
            return self._close(CloseCode.PROTOCOL_ERROR, str(exc))
        if self._nonce is not None and body.get(NONCE_KEY) == self._nonce:
            self.state = ConnectionState.CLOSING
            return [SelfDial(CloseCode.NORMAL_CLOSURE, SELF_DIAL)]
        actions: list[Action] = []
        urls: list[str] = []
        if package.event == HELLO_EVENT:
            if self.peer_id is not None and body.get("peer_id") != self.peer_id:
                self.last_valid = False
                self.state = ConnectionState.CLOSING
                return [Block("hello names another peer id")]
            urls, problem = validate_urls(body.get("listen_urls", []), limit=MAX_URLS_PER_PEER)
            if problem is not None:
                actions += self._invalid(f"invalid listen_urls in hello: {problem}", None)
            self.listen_urls = urls
        self.peer_version = kept_introduction(body)
        self.liveness.answers_pings()  # (after its empty frame or a package: review76 F3)
        limit = peer_package_limit(body)  # (kept when under ours: else nothing to check)
        self.peer_max_size = (
            limit if self._max_size is None or (limit or 0) < self._max_size else None
        )
        self.state = ConnectionState.OPEN
        actions.append(Introduced(body, urls))
        return actions

    def _invalid(
        self,
        reason: str,
        package_type: int | None,
        event: str = "",
        tag: str = "",
        *,
        answer: str | None = None,
    ) -> list[Action]:
        self.invalid += 1
        actions: list[Action] = [
            Penalty(reason, self.invalid <= WARN_INVALID, self.invalid == WARN_INVALID)
        ]
        if package_type in REQUEST_TYPES and tag:
            package = error_answer(
                PackageType(package_type), event, tag, answer or reason, alt=self._alt
            )
            if package is not None:
                actions.append(Send(package))
        elif package_type == PackageType.RESPONSE and tag:
            # The request it answers fails now, saying why, rather than at its timeout.
            text = reason.replace("invalid package", "invalid response", 1)
            package = error_answer(PackageType.REQUEST, event, tag, text, alt=self._alt)
            if package is not None:
                actions.append(DeliverResponse(package))
        return actions

    def _close(self, code: int, reason: str, *, penalty: bool = False) -> list[Action]:
        self.state = ConnectionState.CLOSING
        actions: list[Action] = []
        if penalty:
            self.invalid += 1
            actions.append(Penalty(reason))
        actions.append(Close(code, fit_reason(reason)))
        return actions
