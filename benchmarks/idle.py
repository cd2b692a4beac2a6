"""
Idle peers: the CPU a server spends keeping 5,000 idle connections alive (trustp2p's
heartbeat, on its default options), and its memory per idle peer, against a bare
``websockets`` server and its keepalive (issue 11, goal 6).

Run ``make bench-idle`` or ``.venv/bin/python benchmarks/idle.py`` (Linux only, like
``request_response.py``, whose helpers it uses: it pins processes and reads ``/proc``).
``--quick`` makes a short smoke run (200 peers, one 20 s window); ``--json`` prints every
figure as JSON.

Methodology
-----------

A server process pinned to CPU 0 and one client process pinned to CPU 1 (this script
started again with ``--role server`` and ``--role client``); the client opens
``--peers`` (5,000) connections to the server over 127.0.0.1, then nothing flows but
what keeps them alive. Servers:

- *plain*: ``trustp2p.create_server(port=0, secure=False, max_inbound=None)``: every
  other option at its default, the heartbeat too (a round every ``heartbeat_interval``
  2 s plus up to ``heartbeat_jitter`` 1 s, each peer pinged ``heartbeat_timeout`` 20 s
  after its last ping, dropped when a ping stays unanswered for
  ``heartbeat_response_timeout`` 10 s). ``max_inbound`` (default 100) is lifted, or
  4,900 peers would be refused;
- *secure*: the same with ``secure=True`` (the default): each peer a Noise XX handshake
  with its own identity, then every ping and pong sealed;
- *websockets*: ``websockets.asyncio.server.serve`` with its default keepalive
  (``ping_interval=20``, ``ping_timeout=20``), a handler that waits for the connection
  to close, ``compression=None`` as in ``request_response.py`` (trustp2p doesn't
  compress; the client offers no compression anyway). The reference of the goal;
- *websockets-10*: the same with ``ping_interval=10``, the period at which trustp2p
  pinged each peer before its ``heartbeat_timeout`` went to 20 s (the 2 s
  ``heartbeat_interval`` is how often its round looks, not how often a peer is pinged).
  Optional, for the rate of the former default.

The client is a faithful stand-in for 5,000 trustp2p client nodes, not 5,000 nodes: each
connection is dialled with trustp2p's own ``ws`` driver (and, secure, a
:class:`~trustp2p.security.channel.SecureLayer` with its own identity and Noise key) and
driven by trustp2p's own sans-I/O :class:`~trustp2p.protocol.connection.ConnectionProtocol`
(``inbound=False``), exactly as a node drives a connection: it sends the node's
introduction (``version`` or ``hello``), answers each ping with the protocol's pong, and
one heartbeat round over all connections runs the same liveness rules as a node's
(``Heartbeat.check``, every ``heartbeat_interval`` + jitter), so a silent server would be
pinged and dropped. What it leaves out is the rest of a node: no peer exchange (a client
node asks its server for addresses every ``exchange_interval``, 60 s; that is not
keepalive), no gossip, no peer store, no per-node tasks. 5,000 real client nodes would not
fit on the client's core: 300 of them in one process took 6.6 % of a CPU with the server.
Against the ``websockets`` servers the stand-in is the bare ``ws`` driver, which answers
the server's WebSocket pings; it pings nothing itself.

Measurement, side by side. Every server measured runs at once, each on CPU 0 with its
client on CPU 1, so that the noise of a shared machine falls on all of them alike (an
idle server takes a few % of a CPU: they hardly disturb one another). One after another,
each server starts, its client opens one connection and says ``warm``; after 0.5 s the
orchestrator reads the server's VmRSS (*before*); the client opens the others, 50 at a
time, and says ``ready`` once every one is open (secure: handshake done and the server's
``hello`` in). ``--settle`` seconds (15: every trustp2p peer pinged once) after the last
one is ready, the orchestrator reads each server's VmRSS again (*after*): (after -
before) / peers is the memory per idle peer. Then, over one ``--window`` (60 s) for all,
it reads the CPU time of every process (every thread, ``/proc/<pid>/task/*/schedstat``)
and of the machine (``/proc/stat``: how busy the CPUs were outside these processes, how
much the hypervisor stole); CPU % is CPU seconds per wall second. Last, each client
reports how many of its connections are still open and how many pings it answered and
sent in the window (trustp2p servers only). ``--rounds`` measures again, the servers
opening in the reverse order every other round.

The window is a multiple of the ``websockets`` ping intervals (20 and 10 s): the
connections open within seconds of each other, so each server's pings come in bursts,
and a window of 30 s held one burst of 5,000 pings or two depending on the phase (the
reference's CPU moved from 3.4 % to 5.8 % between rounds). Over a whole number of
intervals every connection is pinged the same number of times whatever the phase. A
window that isn't a whole number of 20 s periods gets no CPU verdict ("not measured"):
in 5 s the reference may send no ping at all and read 0 % (tester47 F3).
trustp2p's pings are spread by the rounds' jitter. The table shows the median of the
rounds, and each figure over the ``websockets`` one of the same round.

"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from handshake import _process_cpu
from request_response import (
    _child,
    _expect_line,
    _machine_cpu,
    _pin,
    _print_line,
    _progress,
    _read_line,
    _vm_rss_kib,
    _wait_for_signal,
    machine_facts,
    source_facts,
)
from websockets.asyncio.server import ServerConnection, serve

import trustp2p
from trustp2p import NodeOptions, PackageType
from trustp2p.drivers.base import Listening, Socket
from trustp2p.drivers.ws import WsDriver
from trustp2p.exceptions import ConnectionClosed, HandshakeError
from trustp2p.identity import Identity
from trustp2p.protocol.actions import Action, Introduced, Lost, Send
from trustp2p.protocol.connection import ConnectionProtocol
from trustp2p.protocol.handshake import HELLO_EVENT, VERSION_EVENT, version_body
from trustp2p.protocol.package import Package, build_package, encode
from trustp2p.security.channel import SecureLayer
from trustp2p.security.noise import NoiseKey

IMPLS = ("plain", "secure", "websockets", "websockets-10")
"""trustp2p plain (ws://) and secure, bare websockets with ping_interval 20 and 10 s."""

REFERENCE = "websockets"
PING_PERIOD = 20.0
"""The reference's ping interval (s): a CPU window is a whole number of these."""
GOAL_RSS_KIB = {"plain": 12.0, "secure": 20.0}
"""Issue 11, goal 6: server memory per idle peer at most this; CPU at most the
reference's."""

SERVER_CPU, CLIENT_CPU = 0, 1
_BATCH = 50  # connections opened at once; the listen backlog is 100


def raise_open_files() -> int:
    """Lift this process's soft limit on open files to its hard limit; return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# The server process


async def _wait_closed(ws: ServerConnection) -> None:
    await ws.wait_closed()


async def run_server(impl: str) -> None:
    """Serve on 127.0.0.1 with default options, print the URL, run until SIGTERM."""
    if impl in ("plain", "secure"):
        node = await trustp2p.create_server(
            host="127.0.0.1", port=0, max_inbound=None, secure=impl == "secure"
        )
        try:
            assert node.url is not None
            _print_line(node.url)
            await _wait_for_signal()
        finally:
            await node.stop()
    else:
        interval = 10.0 if impl == "websockets-10" else 20.0
        async with serve(
            _wait_closed, "127.0.0.1", 0, compression=None, ping_interval=interval
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            _print_line(f"ws://127.0.0.1:{port}")
            await _wait_for_signal()


# The client process: stand-ins for trustp2p client nodes


@dataclass
class Tally:
    """What the client's connections did."""

    pongs_sent: int = 0
    pings_sent: int = 0
    lost: int = 0
    closed: int = 0

    def take(self) -> dict[str, int]:
        """The counts so far; they start again from 0."""
        counts = asdict(self)
        self.pongs_sent = self.pings_sent = self.lost = self.closed = 0
        return counts


class StandIn:
    """
    One client connection driven as a trustp2p client node drives it: its own sans-I/O
    :class:`ConnectionProtocol`, whose actions (introduce, answer pings, ping on the
    liveness schedule) are carried out here. ``introduction`` is ``None`` for a bare
    WebSocket peer (the ``websockets`` servers): the driver answers their pings.
    """

    def __init__(self, tally: Tally, introduction: Package | None, options: NodeOptions) -> None:
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.socket: Socket | None = None
        self.protocol: ConnectionProtocol | None = None
        self._tally = tally
        self._introduction = introduction
        self._options = options

    def on_start(self, listening: Listening) -> None:  # pragma: no cover - never listens
        pass

    def on_connection(self, socket: Socket) -> None:  # pragma: no cover - never listens
        pass

    def on_open(self, socket: Socket) -> None:
        self.socket = socket
        if self._introduction is None:
            self.ready.set_result(None)
            return
        options = self._options
        self.protocol = ConnectionProtocol(
            secure=options.secure,
            peer_id=socket.peer_id,
            introduction=self._introduction,
            clock=asyncio.get_running_loop().time,
            handled=(),  # no threads: pings are answered by the protocol itself
            alt=options.alt,
            max_package_size=options.max_package_size,
            liveness=options.liveness_timings(),
            inbound=False,
        )
        self.carry_out(self.protocol.start())

    def on_message(self, socket: Socket, data: bytes | str) -> None:
        if self.protocol is not None:
            self.carry_out(self.protocol.receive_data(data))

    def carry_out(self, actions: list[Action]) -> None:
        """Do what the protocol asks, as the node does for these actions."""
        socket = self.socket
        assert socket is not None
        for action in actions:
            kind = type(action)
            if kind is Send:
                package = action.package  # type: ignore[union-attr]
                if package.type is PackageType.HEARTBEAT_PONG:
                    self._tally.pongs_sent += 1
                elif package.type is PackageType.HEARTBEAT_PING:
                    self._tally.pings_sent += 1
                with contextlib.suppress(ConnectionClosed):
                    socket.write(encode(package))
            elif kind is Introduced and not self.ready.done():
                self.ready.set_result(None)
            elif kind is Lost:
                self._tally.lost += 1
                socket.abort()

    def on_error(self, socket: Socket, error: Exception) -> None:
        self._fail(error)

    def on_close(self, socket: Socket) -> None:
        self._tally.closed += 1
        if self.protocol is not None:
            self.protocol.connection_lost()
        self._fail(ConnectionError(f"closed: {socket.close_code} {socket.close_reason}"))

    def failed(self, raw: Socket, error: HandshakeError) -> None:
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        if not self.ready.done():
            self.ready.set_exception(error)


class StandInClient:
    """
    Opens connections to ``url`` as trustp2p client nodes would (``impl`` ``plain`` or
    ``secure``), or as bare WebSocket peers, and runs the node's heartbeat round over
    them.
    """

    def __init__(self, impl: str, url: str, options: NodeOptions | None = None) -> None:
        self.url = url
        self.trustp2p = impl in ("plain", "secure")
        self.options = options or NodeOptions(client=True, secure=impl == "secure")
        self.driver = WsDriver(self.options.driver_options())
        self.tally = Tally()
        self.peers: list[StandIn] = []
        self._version = version_body(library_version=trustp2p.__version__)

    async def open_one(self) -> StandIn:
        """Open one connection and wait until it is ready (introductions exchanged)."""
        options = self.options
        if not self.trustp2p:
            peer = StandIn(self.tally, None, options)
            listener: Any = peer
        elif not options.secure:
            version = build_package(PackageType.TALK, VERSION_EVENT, self._version)
            peer = listener = StandIn(self.tally, version, options)
        else:
            identity = Identity.generate()  # each peer its own node, its own id
            body = {**self._version, "peer_id": identity.peer_id, "listen_urls": []}
            hello = build_package(PackageType.TALK, HELLO_EVENT, body)
            peer = StandIn(self.tally, hello, options)
            listener = SecureLayer(
                peer,
                identity,
                admit=lambda raw: None,
                failed=peer.failed,
                max_package_size=options.max_package_size,
                noise_key=NoiseKey(identity),
            )
        async with asyncio.timeout(30):
            await self.driver.connect(self.url, listener)
            await peer.ready
        self.peers.append(peer)
        return peer

    async def open(self, count: int) -> None:
        for start in range(0, count, _BATCH):
            await asyncio.gather(*(self.open_one() for _ in range(min(_BATCH, count - start))))

    def heartbeat(self) -> None:
        """One round of the node's heartbeat (``node.liveness.Heartbeat.check``)."""
        for peer in self.peers:
            socket, protocol = peer.socket, peer.protocol
            if socket is None or protocol is None or socket.closed:
                continue
            peer.carry_out(
                protocol.heartbeat(
                    last_bytes=socket.last_seen,
                    backlog=socket.bytes_in_flight,
                    reading_paused=False,
                )
            )

    async def run_heartbeat(self) -> None:
        """The heartbeat round, every ``heartbeat_interval`` plus jitter, until cancelled."""
        options = self.options
        while True:
            await asyncio.sleep(
                options.heartbeat_interval + random.uniform(0, options.heartbeat_jitter)
            )
            self.heartbeat()

    def still_open(self) -> int:
        return sum(peer.socket is not None and not peer.socket.closed for peer in self.peers)

    async def close(self) -> None:
        for start in range(0, len(self.peers), _BATCH):
            batch = [peer.socket for peer in self.peers[start : start + _BATCH] if peer.socket]
            await asyncio.gather(*(socket.close() for socket in batch), return_exceptions=True)


async def run_client(impl: str, url: str, peers: int) -> None:
    """
    Open one connection, print ``warm``; on a line from stdin open ``peers`` more,
    print ``ready``; on each further line print the tally as JSON (and start it
    again); close everything when stdin closes.
    """
    client = StandInClient(impl, url)
    heartbeat = asyncio.create_task(client.run_heartbeat()) if client.trustp2p else None
    try:
        await client.open_one()
        _print_line("warm")
        await _read_line()
        await client.open(peers)
        _print_line("ready")
        while await _read_line():
            _print_line(json.dumps({**client.tally.take(), "open": client.still_open()}))
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        await client.close()


# The orchestrator


@dataclass(frozen=True)
class _Reading:
    """CPU seconds of each measured process (by pid) and of the machine, at one time."""

    wall: float
    cpu: dict[int, float]
    machine: tuple[float, float, float]

    @classmethod
    def take(cls, pids: list[int]) -> _Reading:
        return cls(time.monotonic(), {pid: _process_cpu(pid) for pid in pids}, _machine_cpu())


def _cpu_figures(first: _Reading, last: _Reading, server: int, client: int) -> dict[str, float]:
    """CPU % of one server and its client between two readings, and the machine's noise
    (busy CPUs outside every measured process, stolen time)."""
    wall = last.wall - first.wall
    ours = sum(last.cpu.values()) - sum(first.cpu.values())
    busy, steal, total = (b - a for a, b in zip(first.machine, last.machine, strict=True))
    return {
        "server_cpu_pct": (last.cpu[server] - first.cpu[server]) / wall * 100,
        "client_cpu_pct": (last.cpu[client] - first.cpu[client]) / wall * 100,
        "other_cpus": max(0.0, busy - ours) / wall,
        "steal": steal / total if total else 0.0,
    }


def _send_line(process: subprocess.Popen[str], line: str = "") -> None:
    assert process.stdin is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()


@contextlib.contextmanager
def _process(*args: str, stdin: bool = False) -> Iterator[subprocess.Popen[str]]:
    """This script as a child; SIGTERM (or closing its stdin) on the way out."""
    process = _child(*args, stdin=stdin, script=__file__)
    try:
        yield process
    finally:
        if process.stdin is not None:
            process.stdin.close()
        else:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class _Pair:
    """One server process and its client process, and what was read of them."""

    server: subprocess.Popen[str]
    client: subprocess.Popen[str]
    figures: dict[str, float] = field(default_factory=dict)


def _connect(stack: contextlib.ExitStack, impl: str, peers: int) -> _Pair:
    """Start ``impl``'s server and a client that opens ``peers`` idle connections to it;
    read the server's VmRSS before (one connection open) and time the opening."""
    server = stack.enter_context(
        _process("--role", "server", "--impl", impl, "--cpu", str(SERVER_CPU))
    )
    url = _expect_line(server)
    client = stack.enter_context(
        _process("--role", "client", "--impl", impl, "--url", url, "--peers", str(peers),
                 "--cpu", str(CLIENT_CPU), stdin=True)
    )  # fmt: skip
    if _expect_line(client) != "warm":
        raise RuntimeError(f"{impl}: the client misbehaved")
    time.sleep(0.5)
    before = _vm_rss_kib(server.pid)
    started = time.monotonic()
    _send_line(client)
    if _expect_line(client) != "ready":
        raise RuntimeError(f"{impl}: the client misbehaved")
    return _Pair(server, client, {"rss_before_kib": before,
                                  "connect_s": time.monotonic() - started})  # fmt: skip


def _tally(pair: _Pair) -> dict[str, int]:
    """The client's counts since the last call."""
    _send_line(pair.client)
    counts: dict[str, int] = json.loads(_expect_line(pair.client))
    return counts


def measure(impls: list[str], peers: int, settle: float, window: float) -> dict[str, Any]:
    """
    Every server of ``impls`` with ``peers`` idle peers each, side by side: opened one
    after another, then after ``settle`` seconds their memory per peer, and their CPU
    over the same ``window`` (so the machine's noise falls on all alike).
    """
    with contextlib.ExitStack() as stack:
        pairs = {impl: _connect(stack, impl, peers) for impl in impls}
        time.sleep(settle)
        for pair in pairs.values():
            pair.figures["rss_after_kib"] = _vm_rss_kib(pair.server.pid)
            _tally(pair)  # counting starts now
        pids = [p.pid for pair in pairs.values() for p in (pair.server, pair.client)]
        first = _Reading.take(pids)
        time.sleep(window)
        last = _Reading.take(pids)
        for impl, pair in pairs.items():
            tally = _tally(pair)
            if tally["open"] != peers + 1:
                raise RuntimeError(f"{impl}: {tally['open']} of {peers + 1} connections open")
            figures = pair.figures
            figures.update(_cpu_figures(first, last, pair.server.pid, pair.client.pid))
            figures["rss_end_kib"] = _vm_rss_kib(pair.server.pid)
            figures["kib_per_peer"] = (figures["rss_after_kib"] - figures["rss_before_kib"]) / peers
            figures["pongs_per_s"] = tally["pongs_sent"] / window
            figures["pings_per_s"] = tally["pings_sent"] / window
            figures["lost"] = tally["lost"]
    return {impl: pair.figures for impl, pair in pairs.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


@dataclass
class Results:
    machine: dict[str, Any]
    source: dict[str, str]
    settings: dict[str, Any]
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)

    def median(self, impl: str, key: str) -> float:
        return statistics.median(figures[key] for figures in self.rounds[impl])

    def ratios(self) -> dict[str, dict[str, float]]:
        """CPU % and KiB per peer of each implementation over the reference's: the median
        of the ratios of each round (the servers of a round ran side by side)."""
        reference = self.rounds.get(REFERENCE)
        if reference is None:
            return {}
        return {
            impl: {
                key: statistics.median(
                    _ratio(ours[figure], theirs[figure])
                    for ours, theirs in zip(rounds, reference, strict=True)
                )
                for key, figure in (("cpu", "server_cpu_pct"), ("rss", "kib_per_peer"))
            }
            for impl, rounds in self.rounds.items()
        }

    def verdicts(self) -> dict[str, dict[str, bool | None]]:
        """Goal 6 for plain and secure: CPU at most the reference's (``None``, not
        measured, unless the window is a whole number of ping periods), memory in bounds."""
        ratios = self.ratios()
        periods = self.settings["window_s"] / PING_PERIOD
        measured = periods >= 1 and periods == int(periods)
        return {
            impl: {
                "cpu": (ratios[impl]["cpu"] <= 1.0 if ratios else False) if measured else None,
                "rss": self.median(impl, "kib_per_peer") <= bound,
            }
            for impl, bound in GOAL_RSS_KIB.items()
            if impl in self.rounds
        }

    def summary(self) -> dict[str, Any]:
        medians = {
            impl: {key: self.median(impl, key) for key in rounds[0]}
            for impl, rounds in self.rounds.items()
        }
        return {
            **asdict(self),
            "medians": medians,
            "ratios": self.ratios(),
            "verdicts": self.verdicts(),
        }


def run_all(args: argparse.Namespace) -> Results:
    results = Results(
        machine=machine_facts(),
        source=source_facts(),
        settings={
            "peers": args.peers,
            "settle_s": args.settle,
            "window_s": args.window,
            "rounds": args.rounds,
            "open_files": raise_open_files(),
        },
    )
    for number in range(1, args.rounds + 1):
        impls = args.impls if number % 2 else args.impls[::-1]  # who opens first alternates
        for impl, figures in measure(impls, args.peers, args.settle, args.window).items():
            results.rounds.setdefault(impl, []).append(figures)
            _progress(
                f"round {number}/{args.rounds}, {impl:<13}: server {figures['server_cpu_pct']:.2f} "
                f"% CPU, {figures['kib_per_peer']:.1f} KiB/peer; client "
                f"{figures['client_cpu_pct']:.2f} %; other {figures['other_cpus']:.2f} CPU, "
                f"steal {figures['steal']:.0%}"
            )
    return results


def format_table(results: Results) -> str:
    settings, machine = results.settings, results.machine
    ratios = results.ratios()
    lines = [
        f"{machine['cpu']}, {machine['nproc']} CPUs; Python {machine['python']}, "
        f"websockets {machine['websockets']}; trustp2p {machine['trustp2p']} at commit "
        f"{results.source['commit']}, src/ sha256 {results.source['src_sha256']}, "
        f"{machine.get('trustp2p_build', 'pure Python')}",
        "",
        f"{settings['peers']:,} idle peers, server on CPU {SERVER_CPU}, client on CPU "
        f"{CLIENT_CPU}, all servers side by side; CPU over {settings['window_s']:g} s after "
        f"{settings['settle_s']:g} s of settling, median of {settings['rounds']} round(s); "
        f"ratios over {REFERENCE}",
        "",
        f"{'server':<15}{'server CPU':>11}{'ratio':>7}{'KiB/peer':>10}{'ratio':>7}"
        f"{'client CPU':>12}{'pongs/s':>9}{'connect':>9}",
    ]
    for impl in results.rounds:

        def med(key: str, impl: str = impl) -> float:
            return results.median(impl, key)

        ratio = ratios.get(impl, {"cpu": float("nan"), "rss": float("nan")})
        lines.append(
            f"{impl:<15}{med('server_cpu_pct'):>10.2f}%{ratio['cpu']:>7.2f}"
            f"{med('kib_per_peer'):>10.1f}{ratio['rss']:>7.2f}{med('client_cpu_pct'):>11.2f}%"
            f"{med('pongs_per_s'):>9.0f}{med('connect_s'):>8.1f}s"
        )
    every = [figures for rounds in results.rounds.values() for figures in rounds]
    lines += [
        "",
        f"Noise: at worst {max(f['other_cpus'] for f in every):.2f} CPU busy outside the measured "
        f"processes, {max(f['steal'] for f in every):.0%} stolen by the hypervisor.",
    ]
    said = {True: "met", False: "MISSED", None: f"not measured (window not {PING_PERIOD:g} s x n)"}
    for impl, verdict in results.verdicts().items():
        lines.append(
            f"Goal 6, {impl}: CPU <= {REFERENCE} {said[verdict['cpu']]}; "
            f"<= {GOAL_RSS_KIB[impl]:g} KiB per peer {said[verdict['rss']]}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--peers", type=int, default=5000, help="idle peers (default: 5000)")
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="seconds of CPU counted, a multiple of 20 (the reference's ping period) or the"
        " CPU goal is not measured (default: 60)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=15.0,
        help="seconds idle before measuring, every peer pinged once (default: 15)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of each (default: 1)")
    parser.add_argument(
        "--impls", default=",".join(IMPLS), help="comma-separated servers (default: %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 peers, 3 s + 20 s")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    single = parser.add_argument_group("one process (the orchestrator starts these)")
    single.add_argument("--role", choices=("server", "client"), help="run only this process")
    single.add_argument("--impl", choices=IMPLS, default="plain", help="default: plain")
    single.add_argument("--url", help="client: the URL the server printed")
    single.add_argument("--cpu", type=int, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    chosen = set(args.impls.split(","))
    if not chosen or not chosen <= set(IMPLS):
        parser.error(f"--impls takes {', '.join(IMPLS)}")
    args.impls = [impl for impl in IMPLS if impl in chosen]
    if args.role == "client" and args.url is None:
        parser.error("--role client needs --url")
    if args.quick:
        args.peers, args.settle, args.window = min(args.peers, 200), 3.0, PING_PERIOD
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role is not None:
        raise_open_files()
        _pin(args.cpu)
        if args.role == "server":
            asyncio.run(run_server(args.impl))
        else:
            asyncio.run(run_client(args.impl, args.url, args.peers))
        return 0
    results = run_all(args)
    print(json.dumps(results.summary(), indent=2) if args.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
