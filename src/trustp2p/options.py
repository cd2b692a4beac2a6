"""Node options: one frozen object that checks itself."""

from __future__ import annotations

__all__ = ["DEFAULT_PORT", "MIN_PACKAGE_SIZE", "NodeOptions", "parse_admin_address"]

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .addresses import check_admin, parse_admin_address
from .drivers import Driver, DriverOptions, check_peer_url, driver_class
from .exceptions import ConfigError, InvalidURL
from .identity import Identity, is_node_name
from .option_ranges import check_numbers
from .protocol.gossip.control import check_own_topics
from .protocol.handshake import HANDSHAKE_MAGIC, LEAST_PACKAGE_LIMIT
from .protocol.limits import AddressLimiter, ReconnectStorms, address_share
from .protocol.liveness import LivenessTimings
from .protocol.package import DEFAULT_ALT, DEFAULT_MAX_PACKAGE_SIZE
from .protocol.scoring import BlockPolicy
from .protocol.urls import (
    MAX_URLS_PER_PEER,
    canonical_url,
    check_dial_url,
    check_listen_address,
    split_peer_url,
)
from .security.noise import MAX_NOISE_MESSAGE
from .storage.memory import MemoryShelf

if TYPE_CHECKING:
    from .threads.base import Thread

DEFAULT_PORT = 1107
"""The original's server port."""


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """
    Everything a node can be told. Durations are in seconds, sizes in bytes.

    Attributes:
        cwd: Directory holding ``threads-enabled/``; ``None`` loads no thread files.
        server: Accept peers (listen on ``host``:``port``).
        client: Dial ``peers``.
        host: Address to listen on; ``""``: every interface, IPv4 and IPv6 (``::``: IPv6 only).
        port: Port to listen on; 0 picks a free one.
        peers: URLs of servers to dial, e.g. ``ws://127.0.0.1:1107``.
        driver: Driver for listening, by name (``"ws"``, ``"tcp"``, ``"memory"``,
            ``"picows"``) or instance. Dialling picks the driver from each URL's scheme,
            or uses this one for the URLs of its scheme (``"picows"``: ``ws://``,
            ``wss://``). ``"picows"`` needs ``pip install 'trustp2p[fast]'``.
        threads: Thread classes to run besides those loaded from ``cwd``.
        alt: Network id; peers on another network are refused.
        program: Name of the program, sent in the version talk.
        program_version: Its version, sent in the version talk.
        max_package_size: Largest package accepted; a larger frame closes the
            connection with code 1009. A package to send over it is not sent: a
            request or talk raises :exc:`PackageTooLarge`, a handler's answer becomes
            an error answer. ``None`` disables the limit; at least
            :data:`MIN_PACKAGE_SIZE` (1 KiB: the node's own ``hello`` must fit).
        max_inbound: Most clients connected at once, counted from TCP accept. When all
            are taken, the oldest still in its handshake is dropped for a new one; when
            all finished theirs, the next one is closed with code 1013, unless its
            network group holds at least two fewer than the largest: then, once its
            handshake is done, the largest group's newest connection is closed for it
            (README, "Limits from the first byte"). ``None`` disables the limit.
        max_concurrent_requests: Requests of one connection whose (coroutine) handlers
            run at once; each response goes out as its handler finishes. Talks, gossip
            and socket hooks are handled one at a time, in order.
        max_pending_packages: Packages of one connection waiting for its handlers;
            beyond this, the node stops reading from that peer until they catch up.
        max_pending_bytes: Bytes of one connection's packages waiting for its handlers
            or held by its request handlers running (a body past 1 KiB counts its text
            and its values read), and of its answers waiting for room in the write
            buffer; beyond this, the node stops reading from that peer, and its next
            request waits for a running one to finish.
        heartbeat_interval: Time between two heartbeat rounds: each round checks every
            connection's liveness, on both sides (:mod:`trustp2p.protocol.liveness`).
        heartbeat_jitter: Up to this much is added at random to each interval.
        heartbeat_timeout: Time from one ping of a peer to the next, whether it talks
            or not (the side that dialled waits one round longer and lets the other
            ping first).
        heartbeat_response_timeout: A peer whose ping stays unanswered this long is
            dropped as a lost peer; time in which the link shows progress (a large
            frame arriving, ours leaving) doesn't count, and 3 times this is allowed
            while TCP shows the path congested (Linux; :mod:`trustp2p.protocol.path`).
            With the defaults a dead link is found within 39 s on both sides
            (``liveness_timings().detection_bound``).
        loop_block_warning: A WARNING says when the event loop was blocked this long (a
            handler calling blocking code): below ``heartbeat_response_timeout``.
        response_timeout: Default time to wait for a response.
        stalled_timeout: Time after which a rerouting request goes to the next server.
        reconnect_initial: First delay before redialling a server.
        reconnect_max: Largest delay before redialling a server.
        reconnect_factor: Growth of the delay after each failed dial.
        reconnect_jitter: Largest random fraction taken off a delay.
        open_timeout: Time allowed to open a connection.
        close_timeout: On a stop, the bound of each closing handshake, stop() and wait.
        frame_timeout: Once a frame has started, time in which it must complete;
            each 16 KiB of it earns it that time again, else the connection closes
            with code 1008 (16 KiB per 10 s serves links down to about 13 kbit/s).
        write_limit: Write buffer size above which senders wait.
        trust_real_ip: Take a client's address from ``X-Real-IP`` when it connects
            through a proxy on a loopback address.
        secure: Run the Noise XX secure channel on every connection (the default).
            ``False`` speaks the original's plain protocol; the two refuse each other.
        identity: The node's identity; by default loaded from (or created in)
            ``<cwd>/identity/node.key``, or made up for this run when ``cwd`` is None.
        name: The node's name in ``cwd``: its identity is ``identity/<name>.key`` and
            its data ``data/<name>/``, whatever other nodes run there (1 to 64 lowercase
            letters, digits, ``-`` and ``_``). Without one, the first node running in ``cwd``
            takes ``identity/node.key`` and ``data/``, the next ``node-2``, and so on,
            in the order they start.
        handshake_timeout: Time an inbound connection has, from TCP accept, to finish
            its handshakes: the WebSocket upgrade, the Noise handshake and its hello
            (in plain mode, its version talk or first message: one that said nothing
            is pinged halfway, and its pong will do); also the Noise deadline of our
            dials. It counts against ``max_inbound`` and the
            per-address limits meanwhile.
        listen_urls: URLs this node announces to peers; by default the URL it listens on.
            At most 8, each one peers can dial: a port, no unspecified host (``0.0.0.0``,
            ``::``), no path; a ``/p2p/<id>`` suffix, if any, must name this node's id
            (checked at start when the identity is loaded then). Peers hold against the
            node the URLs they can't use, and drop an unspecified host.
        peer_store: Keep the peer store in ``<cwd>/data/peers.sqlite`` (in memory when
            ``cwd`` is None or this is False).
        store_shelf: Keep the peer store and the message log in memory, with no file
            and no worker thread, and on this shelf while the node is stopped, so that
            a node started again with it takes them back
            (:class:`~trustp2p.storage.memory.MemoryShelf`; simulations do).
        block_duration: How long a misbehaving peer stays blocked.
        invalid_ratio: Block a peer whose invalid/good package ratio exceeds this...
        min_packages: ...once it sent at least this many packages.
        max_send_queue: Packages the node writes without waiting (error answers, gossip)
            to a peer whose write buffer is above ``write_limit``; one more disconnects
            it. The application's own sends (``request()``, ``send_*()``,
            ``broadcast()``, handler responses) wait for the buffer to drain instead, so
            a burst slows the application and never disconnects a peer.
        max_send_bytes: ...and their bytes, at most (16 MiB, or ``max_package_size``
            if larger: one package always fits): 256 gossip messages of 256 KiB to each
            peer that stopped reading would hold 64 MiB each.
        send_stall_timeout: A peer that takes nothing from its write buffer for this
            long while data waits (it reads nothing) is disconnected with 1008; up to
            3 times as long while TCP shows the path congested and the peer's window open
            (Linux; :mod:`trustp2p.protocol.path`).
        request_rate: Requests and talks per second a peer may send us...
        request_burst: ...with this burst. A peer over its budget (shared by its
            connections: reconnecting doesn't refill it) is throttled: the node stops
            reading from it until the budget has refilled. It is never refused, counted
            invalid or blocked for it.
        gossip_rate: Gossip messages per second a peer may send us (each costs a
            signature check; one more per 16 KiB of body), as ``request_rate``...
        gossip_burst: ...with this burst.
        gossip_node_rate: New live gossip messages per second the node checks from all
            peers together (the default: one peer's ``gossip_rate``), shared evenly:
            in a second past it, a peer that sent more than an even share waits for
            the next second; a peer within its share waits only past twice the rate.
            Identities are free, so without it a few of them could send more than the
            node (and each of its subscribers) can check. Raise it with ``gossip_rate``
            for faster networks. What the node asked for (catch-up answers, ``iwant``
            answers) has shares of its own of this rate, which it paces itself.
        max_per_ip: Inbound connections at once from one address (an IPv6 address
            counts as its /64, as for ``ip_rate`` and reconnect storms); ``None``: no
            limit. Raised above 8 (many clients behind one NAT), it raises ``ip_rate``,
            ``ip_burst`` and an address's ``storm_connections`` as much (times
            ``max_per_ip / 8``), so that they can all reconnect at once.
        ip_rate: New inbound connections per second from one address...
        ip_burst: ...with this burst.
        storm_connections: A peer (by peer id, or by address in plain mode; loopback
            addresses only with ``limit_loopback``) that opens this many connections
            within ``storm_window`` reconnects in a storm: that connection and every
            new one of that peer for ``storm_cooldown`` are refused with 1013. Open
            connections are kept. The default back-off (``reconnect_*``) makes at most
            5 in any 10 s. ``None``: no such rule.
        storm_window: Seconds over which ``storm_connections`` are counted.
        storm_cooldown: Seconds a storming peer is refused new connections.
        address_rate: New addresses per second a peer may make us store (from its
            hello, ``my_url`` and ``get_peers`` answers); a new peer may add 100 at
            once...
        address_burst: ...and save up to this many.
        limit_loopback: Apply the per-address limits to loopback addresses too.
        target_outbound: Outbound connections the client keeps, drawing on the peer
            store when its bootstrap ``peers`` aren't enough.
        anchor_age: An outbound connection open this long is a long-lived one. When no
            outbound connection goes to a bootstrap peer, a peer we had connected to
            before, or a long-lived one, the client dials one such peer from the
            store, even past ``target_outbound`` (eclipse resistance).
        max_outbound_per_netgroup: Outbound peers per /16 (IPv4) or /32 (IPv6) network;
            loopback addresses are exempt.
        peer_exchange: Run the built-in peer exchange thread (``get_peers``, ``my_url``).
        exchange_interval: Longest time between two rounds of asking a server for peers
            while short of ``target_outbound`` (the first ask is 1 s after the
            previous, doubling up to this).
        feeler_interval: Time between two feeler dials of a client with a peer store
            (``target_outbound`` above 0): each dials one URL the store learned and
            nobody has proven yet, even at the target, and closes the connection once
            the handshake has worked (it keeps it if short of the target); the URL is
            proven, or its dial counts as failed. So a full store learns which URLs
            work, and keeps those past any number of made-up ones (as Bitcoin Core's
            feeler connections; README, "Peer store"). 0 makes none.
        gossip: Run publish/subscribe (``node.gossip``) and catch-up.
        gossip_mode: ``"gossip"`` (mesh plus lazy announcements) or ``"flood"`` (every
            copy to every subscribed peer; a baseline for benchmarks).
        gossip_degree: Mesh peers per topic the router aims for...
        gossip_degree_low: ...grafting below this...
        gossip_degree_high: ...and pruning above this.
        gossip_fanout: Peers a relay pushes each new message to at once (the
            publisher pushes to its whole mesh); the rest of the mesh learns of it from
            ``ihave``. Fewer means fewer duplicates, more means lower latency.
        gossip_lazy: Other peers told ``ihave`` per topic per heartbeat, at random
            (peers refused a mesh seat are told every new id).
        gossip_history: Heartbeats a message stays servable; announced in all but the last
            (1: never announced, only pushed).
        gossip_interval: Time between two gossip heartbeats.
        gossip_prune_backoff: After a ``gossip/prune`` between two peers (either way), the
            time neither grafts the other on that topic; a graft within it is refused
            unanswered, and counted as an invalid package past what an older node
            sends (GossipSub's ``prune_backoff``; 0 turns it off). Peers should share
            one value.
        gossip_want_window: A peer that asked us (``gossip/iwant``) for a message of a
            topic is missing our pushes there: for this long after its last such ask,
            it is among the first of the ``gossip_fanout`` peers a relay pushes the
            topic's messages to, mesh peers before others (0 turns it off).
        relay_topics: Topics the node carries though none of its threads handles them:
            it relays their messages and keeps them in its log for catch-up, as it does
            its threads' topics. A node relays only the topics it carries, so a hub whose
            clients gossip on a topic must carry it (``--relay-topic``). Their messages
            go to every peer that carries the topic (flooded, whatever ``gossip_mode``:
            a hub's clients pass nothing on). A thread may handle one too.
        seen_max: Most message ids remembered for de-duplication...
        seen_ttl: ...and for how long.
        max_hops: Relays a message may go through before it is no longer forwarded.
        log_max_messages: Messages kept per topic for catch-up...
        log_max_age: ...and for how long (``<cwd>/data/gossip.sqlite``)...
        log_max_bytes: ...and their payload, in all topics, at most (the log is held in
            memory): past it, the topic holding the most gives way, by its share rule.
        catchup_interval: Time between two catch-up rounds with a random peer that
            shares one of our topics (0: only when a peer introduces itself).
        catchup_batch: Most messages in one ``gossip/fetch`` answer, served or taken
            (an answer with more is malformed, counted against the peer).
        catchup_serve_rate: Bytes per second of catch-up answers the node serves all
            peers together, shared evenly by address (then by peer within one; loopback's
            peers each apart): past it, an asker over an even share is
            answered "busy" until the second is over (each asker is bounded by
            ``request_rate`` apart from this, but identities are free).
        gap_timeout: A gap in an origin's sequence that nobody fills is skipped after
            this long, once a peer asked for it answered without it (ten times as long
            while no peer answered).
        durable_delivery: Write each message's delivered mark to the message log once
            its handlers return, before the next message is delivered: a node killed
            (``kill -9``) and restarted delivers again at most the one message whose
            handlers were running, and never misses one. False: marks are written with
            the log's periodic flush (every second), faster under heavy load, and a
            crash may deliver up to a second of messages again.
        admin: ``"HOST:PORT"`` of the admin listener (``/metrics``, ``/status.json``,
            the status page); ``None`` (the default) runs none. Port 0 picks a free one
            (``node.admin_url``). A host other than loopback needs ``admin_token``.
        admin_token: When set, every admin request must carry it
            (``Authorization: Bearer <token>`` or ``?token=<token>``), else 401.
            Printable ASCII, without spaces.

    """

    cwd: Path | None = None
    server: bool = False
    client: bool = False
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    peers: tuple[str, ...] = ()
    driver: str | Driver | None = None
    threads: tuple[type[Thread], ...] = ()
    alt: str = DEFAULT_ALT
    program: str | None = None
    program_version: str | None = None
    max_package_size: int | None = DEFAULT_MAX_PACKAGE_SIZE
    max_inbound: int | None = 100
    max_pending_packages: int = 32
    max_pending_bytes: int = 4 * 2**20
    max_concurrent_requests: int = 16
    heartbeat_interval: float = 2.0
    heartbeat_jitter: float = 1.0
    heartbeat_timeout: float = 20.0
    heartbeat_response_timeout: float = 10.0
    loop_block_warning: float = 5.0
    response_timeout: float = 300.0
    stalled_timeout: float = 5.0
    reconnect_initial: float = 1.0
    reconnect_max: float = 60.0
    reconnect_factor: float = 2.0
    reconnect_jitter: float = 0.25
    open_timeout: float = 10.0
    close_timeout: float = 10.0
    frame_timeout: float = 10.0
    write_limit: int = 2**16
    trust_real_ip: bool = True
    secure: bool = True
    identity: Identity | None = None
    name: str | None = None
    handshake_timeout: float = 10.0
    listen_urls: tuple[str, ...] = ()
    peer_store: bool = True
    store_shelf: MemoryShelf | None = None
    block_duration: float = 3600.0
    invalid_ratio: float = 0.1
    min_packages: int = 10
    max_send_queue: int = 256
    max_send_bytes: int = 16 * 2**20
    send_stall_timeout: float = 20.0
    request_rate: float = 100.0
    request_burst: int = 200
    gossip_rate: float = 1000.0
    gossip_burst: int = 2000
    gossip_node_rate: float = 1000.0
    max_per_ip: int | None = 8
    ip_rate: float = 0.2
    ip_burst: int = 16
    storm_connections: int | None = 20
    storm_window: float = 10.0
    storm_cooldown: float = 60.0
    address_rate: float = 0.1
    address_burst: int = 1000
    limit_loopback: bool = False
    target_outbound: int = 8
    anchor_age: float = 600.0
    max_outbound_per_netgroup: int = 2
    peer_exchange: bool = True
    exchange_interval: float = 60.0
    feeler_interval: float = 120.0
    gossip: bool = True
    gossip_mode: Literal["gossip", "flood"] = "gossip"
    gossip_degree: int = 6
    gossip_degree_low: int = 4
    gossip_degree_high: int = 12
    gossip_fanout: int = 3
    gossip_lazy: int = 6
    gossip_history: int = 3
    gossip_interval: float = 1.0
    gossip_prune_backoff: float = 60.0
    gossip_want_window: float = 60.0
    relay_topics: tuple[str, ...] = ()
    seen_max: int = 100_000
    seen_ttl: float = 120.0
    max_hops: int = 16
    log_max_messages: int = 10_000
    log_max_age: float = 86_400.0
    log_max_bytes: int = 64 * 1024 * 1024
    catchup_interval: float = 30.0
    catchup_batch: int = 100
    catchup_serve_rate: float = 8 * 1024 * 1024
    gap_timeout: float = 30.0
    durable_delivery: bool = True
    admin: str | None = None
    admin_token: str | None = None

    def __post_init__(self) -> None:
        if self.cwd is not None and not isinstance(self.cwd, Path):
            object.__setattr__(self, "cwd", Path(self.cwd))
        object.__setattr__(self, "threads", tuple(self.threads))
        for name, what in (("peers", "URLs"), ("listen_urls", "URLs"), ("relay_topics", "topics")):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a sequence of {what}, not a str")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for url in self.peers:
            try:
                check_peer_url(url)
            except InvalidURL as exc:
                raise InvalidURL(f"peers: {exc}") from exc
        if isinstance(self.driver, str):
            driver_class(self.driver)  # raises DriverError: unknown, or not installed
        if not self.server and not self.client:
            raise ValueError("a node must be a server, a client or both")
        check_listen_address(self.host, self.port)
        if self.name is not None and not (isinstance(self.name, str) and is_node_name(self.name)):
            what = "1 to 64 lowercase letters, digits, '-' and '_', starting with a letter or digit"
            raise ValueError(f"name must be {what}, not {self.name!r}")
        self._check_listen_urls()
        check_own_topics(self.relay_topics, "relay_topics")
        check_numbers(self)
        self._check_relations()
        self._check_admin()

    def _check_listen_urls(self) -> None:
        """What the hello announces: URLs its peers accept (``validate_urls`` penalises
        the others, and drops an unspecified host) and can dial, naming no other id."""
        urls = self.listen_urls
        if len(urls) > MAX_URLS_PER_PEER:
            raise ValueError(
                f"listen_urls: {len(urls)} URLs exceed the limit of {MAX_URLS_PER_PEER} "
                "that peers accept"
            )
        seen: set[str] = set()
        for url in urls:
            reason = check_dial_url(url)
            if reason is not None:
                raise ValueError(f"listen_urls: {reason}")
            if canonical_url(url) in seen:
                raise ValueError(f"listen_urls: URL {url!r} appears twice")
            seen.add(canonical_url(url))
        if self.identity is not None:
            self.check_own_urls(self.identity.peer_id)

    def check_own_urls(self, peer_id: str) -> None:
        """
        Check that no URL of ``listen_urls`` names another node's id (``/p2p/<id>``):
        the node calls it once its identity is loaded.

        Raises:
            ConfigError: If one does.

        """
        for url in self.listen_urls:
            named = split_peer_url(url)[1]
            if named is not None and named != peer_id:
                raise ConfigError(
                    f"listen_urls: URL {url!r} names peer {named}, not this node's id {peer_id}"
                )

    def _check_relations(self) -> None:
        """Numbers that bound each other."""
        if self.reconnect_initial > self.reconnect_max:
            raise ValueError("reconnect_initial must not exceed reconnect_max")
        if self.target_outbound < 0 or self.max_outbound_per_netgroup < 1:
            raise ValueError("need target_outbound >= 0 and max_outbound_per_netgroup >= 1")
        if not self.gossip_degree_low <= self.gossip_degree <= self.gossip_degree_high:
            raise ValueError("need gossip_degree_low <= gossip_degree <= gossip_degree_high")
        if self.gossip_mode not in ("gossip", "flood"):
            raise ValueError(f"gossip_mode must be 'gossip' or 'flood', not {self.gossip_mode!r}")
        if self.relay_topics and not self.gossip:  # (it would do nothing: review31)
            raise ValueError("relay_topics needs gossip (it is off: gossip=False)")

    def _check_admin(self) -> None:
        if self.admin is not None:
            kind = self.driver if isinstance(self.driver, str) else type(self.driver).__name__
            binds = self.server and kind not in ("memory", "MemoryDriver")  # (no port)
            listen = (self.host, self.port) if binds else None
            check_admin(self.admin, self.admin_token, listen)

    @classmethod
    def from_kwargs(cls, base: NodeOptions | None = None, **kwargs: Any) -> NodeOptions:
        """
        Build options from keyword arguments, on top of ``base`` if given.

        Raises:
            TypeError: For an unknown option, naming it.

        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown node option(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        if base is not None:
            values = {name: getattr(base, name) for name in known}
        values.update(kwargs)
        return cls(**values)

    def reconnect_storms(self) -> ReconnectStorms | None:
        """A new reconnect storm rule with these options (``None`` if there is none)."""
        if self.storm_connections is None:
            return None
        return ReconnectStorms(
            connections=self.storm_connections,
            address_connections=math.ceil(self.storm_connections * self.address_share()),
            window=self.storm_window,
            cooldown=self.storm_cooldown,
        )

    def address_limiter(self) -> AddressLimiter:
        """A new per-address limiter with these options (rate and burst times
        :meth:`address_share`)."""
        share = self.address_share()
        return AddressLimiter(
            max_concurrent=self.max_per_ip,
            rate=self.ip_rate * share,
            burst=math.ceil(self.ip_burst * share),
            exempt_loopback=not self.limit_loopback,
            share=share,
        )

    def address_share(self) -> float:
        """How many default addresses' worth of clients one address may hold:
        ``max_per_ip / 8``, from 1 to 16. ``ip_rate``, ``ip_burst`` and the reconnect
        storms counted by address are multiplied by it (tester39: 30 clients behind one
        NAT, ``max_per_ip`` 64, were kept out 60-110 s after a server restart)."""
        return address_share(self.max_per_ip)

    def block_policy(self) -> BlockPolicy:
        """The peer store's block policy that these options give."""
        return BlockPolicy(
            invalid_ratio=self.invalid_ratio,
            min_packages=self.min_packages,
            block_duration=self.block_duration,
        )

    def liveness_timings(self) -> LivenessTimings:
        """The timings of the liveness rules that these options give."""
        return LivenessTimings(
            interval=self.heartbeat_timeout,
            timeout=self.heartbeat_response_timeout,
            period=self.heartbeat_interval + self.heartbeat_jitter,
        )

    def driver_options(self) -> DriverOptions:
        max_message_size = self.max_package_size
        if self.secure and max_message_size is not None:
            # Packages travel in Noise messages of at most 64 KiB; the secure layer
            # bounds the reassembled package.
            max_message_size = MAX_NOISE_MESSAGE + len(HANDSHAKE_MAGIC)
        return DriverOptions(
            max_message_size=max_message_size,
            open_timeout=self.open_timeout,
            close_timeout=self.close_timeout,
            write_limit=self.write_limit,
            trust_real_ip=self.trust_real_ip,
            frame_timeout=self.frame_timeout,
        )


MIN_PACKAGE_SIZE = LEAST_PACKAGE_LIMIT
"""The least ``max_package_size``: the node's introduction (``hello`` or ``version``,
its listen URLs) and its heartbeats must fit, with room."""
