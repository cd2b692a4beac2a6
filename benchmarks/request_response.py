"""
Request/response round trips per second and memory per idle client: trustp2p, plain and
over its Noise secure channel, against bare ``websockets``.

Run ``make bench`` or ``.venv/bin/python benchmarks/request_response.py`` (Linux only:
it pins processes with :func:`os.sched_setaffinity` and reads ``/proc``). ``--quick``
makes a short run; ``--json`` prints the results as JSON instead of a table.

Methodology
-----------

Throughput. A server and a client run in two separate processes (this script started
again with ``--role server`` and ``--role client``) and talk over one WebSocket
connection on 127.0.0.1. Each request body is a JSON object whose compact encoding is
exactly 100 bytes; it carries a counter, because identical requests in flight to one
peer are deduplicated by design (same content-hash tag) and must not be. Three
implementations answer:

- *ours*: a trustp2p server node (``create_server``, port 0) whose thread answers the
  REQUEST ``echo`` with ``async def`` returning ``package.body``, and a trustp2p client
  node doing ``await client.client.request(socket, "echo", body)``, both with
  ``secure=False``: the plain protocol, as before the secure channel existed;
- *secure*: the same two nodes with ``secure=True`` (the default): a Noise XX handshake
  when the connection opens, then every package sealed in a ChaCha20-Poly1305 Noise
  transport message (:class:`trustp2p.security.channel.SecureSocket`);
- *baseline*: a ``websockets.asyncio.server.serve`` echo handler and a
  ``websockets.asyncio.client.connect`` client, both with ``compression=None``, sending
  the bytes of an encoded trustp2p REQUEST package of the same body and awaiting
  ``recv()``. The response has the same size in both cases.

With ``--payload``, ours and secure carry the ``--body-size`` bytes as a binary payload
(wire field 7, ``request_package(..., payload=...)``) beside an empty JSON body ``{}``,
and the server's handler answers ``Reply(package.body, package.payload)``; the baseline
is unchanged (the same number of bytes over bare ``websockets``). Payload requests carry
random tags, so they need no counter to stay apart.

Two modes: *sequential* (one request outstanding) and *pipelined* (100 outstanding:
ours runs 100 tasks that each loop on ``request()``; the baseline sends 100 messages,
then one more after each ``recv()``). Each measurement warms up, then counts the round
trips completed over a fixed wall-clock window.

Both trustp2p servers lift the per-peer request rate limit (``request_rate`` and
``request_burst`` of 10**9): with the default (100 requests/s, burst 200) the benchmark
client is over the limit at once, and the server blocks it, and 127.0.0.1 with it.

The servers live for the whole layout; each round starts a fresh client process (one
connection, sequential then pipelined). Rounds cycle baseline / ours / secure (5 rounds
each by default; each measurement warms up for 0.5 s and counts for 1.5 s); the table
reports the median of the rounds, their range, ours / baseline and secure / ours.
``--impls`` picks a subset.

Over the same window the client also reads the CPU time of both processes
(``/proc/<pid>/schedstat``) and reports it per round trip: it shows what each side costs
and which one limits the rate, the figures to watch when optimising. It also reads
``/proc/stat`` to see how many CPUs were busy outside the two processes and how much time
the hypervisor stole; when other work took more than ``--max-other`` CPUs (0.2) or more
than ``--max-steal`` (10 %) was stolen, the round is measured again, twice at most, and
the worst noise is reported.

Two CPU layouts, applied alike to both implementations, because on a 2-core machine
whether the processes share a core changes the sequential figures several-fold:
*same core* (server and client on CPU 0) and *separate cores* (server on CPU 0, client
on CPU 1).

Memory. A server process (ours and secure: trustp2p server node, no heartbeat thread,
``max_inbound=None``; baseline: the same ``websockets`` echo server) and a client
process that opens connections with the raw ``websockets`` client. The client opens one
connection first (so that lazily created state is paid for), the server's VmRSS is read
from ``/proc``, then the client opens 2000 more; after they have been idle for 2 s the
VmRSS is read again. The difference divided by 2000 is the server-side memory per idle
client. Against our plain server each client sends the version talk a trustp2p client
sends on open, so that the server holds what it holds for real peers; then nothing
flows. Against the secure server each client does what a secure trustp2p client does,
with its own fresh identity (the server keeps one connection per peer id): it sends
``HANDSHAKE_MAGIC`` + Noise message 1, reads message 2, sends message 3 (a full XX
handshake with the identity payloads signed and checked, :class:`NoiseHandshake`), reads
and decrypts the server's ``hello`` and sends its own encrypted ``hello``.

"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import __version__ as protobuf_version
from google.protobuf.internal import api_implementation
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State
from websockets.version import version as websockets_version

import trustp2p
from trustp2p import Body, EventMap, Package, PackageType, Reply, Socket, Thread
from trustp2p.identity import Identity
from trustp2p.protocol.handshake import HANDSHAKE_MAGIC, HELLO_EVENT, VERSION_EVENT, version_body
from trustp2p.protocol.package import body_to_json, build_package, decode, encode
from trustp2p.security.noise import NoiseHandshake, NoiseTransport

BODY_SIZE = int(os.environ.get("TRUSTP2P_BENCH_BODY_SIZE", "100"))
"""Size of each request body, as compact JSON text, in bytes (``--body-size``; the child
processes read it from the environment)."""

MAX_BODY_SIZE = 1_000_000
"""The largest ``--body-size``: a request and its answer, with their envelopes, fit the
1 MiB message limit every side keeps by default (``max_package_size``, websockets'
``max_size``); a larger body crashed the baseline server (tester47 F4)."""

PAYLOAD = os.environ.get("TRUSTP2P_BENCH_PAYLOAD") == "1"
"""Ours and secure send ``BODY_SIZE`` bytes as a payload beside ``{}`` (``--payload``)."""

PIPELINE_DEPTH = 100
"""Requests in flight in the pipelined mode."""

IMPLS = ("baseline", "ours", "secure")
"""``ours`` is trustp2p with ``secure=False``, ``secure`` with the Noise channel."""

RATIOS = (("ours", "baseline"), ("secure", "ours"), ("secure", "baseline"))
"""Rates compared in the table: ours / baseline, secure / ours, secure / baseline."""
MODES = ("sequential", "pipelined")

# Layout name -> (server CPU, client CPU).
LAYOUTS: dict[str, tuple[int, int]] = {
    "same core": (0, 0),
    "separate cores": (0, 1),
}

Figures = dict[str, float]
"""One measurement: ``rate`` (round trips/s), ``server_cpu_us`` and ``client_cpu_us``
(CPU time per round trip), ``other_cpus`` and ``steal`` (noise on the machine)."""

_CONNECT_BATCH = 50  # connections opened at once by the RSS client; the backlog is 100

_ATTEMPTS = 3  # measurements of a round, when other processes keep the machine busy


def make_body(n: int) -> Body:
    """A request body of exactly ``BODY_SIZE`` bytes of JSON, unique per ``n``."""
    # '{"data":"' and '"}' take 11 bytes; a 10-digit counter leads the padding.
    return {"data": f"{n:010d}".ljust(BODY_SIZE - 11, "x")}


def request_bytes() -> bytes:
    """An encoded trustp2p REQUEST package with a ``BODY_SIZE`` body: the baseline's message."""
    body = make_body(0)
    assert len(body_to_json(body).encode()) == BODY_SIZE
    return encode(build_package(PackageType.REQUEST, "echo", body))


# Child processes


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class EchoThread(Thread):
    """Answers the REQUEST ``echo`` with the request's body (and payload, if any)."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"echo": self._handle_echo}}

    async def _handle_echo(self, socket: Socket, package: Package) -> Body | Reply:
        if package.payload:
            return Reply(package.body, package.payload)
        return package.body


async def _baseline_echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def _wait_for_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


NO_RATE_LIMIT: dict[str, Any] = {"request_rate": 1e9, "request_burst": 10**9}
"""Server options that lift the per-peer request rate limit (100/s by default)."""


async def run_server(impl: str) -> None:
    """Serve on 127.0.0.1, print the URL, and run until SIGTERM."""
    if impl in ("ours", "secure"):
        node = await trustp2p.create_server(
            host="127.0.0.1",
            port=0,
            threads=(EchoThread,),
            max_inbound=None,
            secure=impl == "secure",
            **NO_RATE_LIMIT,
        )
        try:
            assert node.url is not None
            _print_line(node.url)
            await _wait_for_signal()
        finally:
            await node.stop()
    else:
        async with serve(_baseline_echo, "127.0.0.1", 0, compression=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            _print_line(f"ws://127.0.0.1:{port}")
            await _wait_for_signal()


@dataclass
class _Counter:
    done: int = 0
    stop: bool = False


_CLOCK_TICK = 1 / os.sysconf("SC_CLK_TCK")


def _task_cpu(pid: int | str) -> float:
    """CPU time of a process's main thread, in seconds (``/proc/<pid>/schedstat``)."""
    with open(f"/proc/{pid}/schedstat") as schedstat:
        return int(schedstat.read().split()[0]) / 1e9


def _machine_cpu() -> tuple[float, float, float]:
    """CPU seconds of the whole machine since boot: busy (without steal), steal, total."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    busy = user + nice + system + irq + softirq
    return busy * _CLOCK_TICK, steal * _CLOCK_TICK, sum(ticks) * _CLOCK_TICK


@dataclass(frozen=True)
class Snapshot:
    """Work done so far, and the CPU time of the two processes and of the machine."""

    done: int
    wall: float
    client_cpu: float
    server_cpu: float
    machine: tuple[float, float, float]

    @classmethod
    def take(
        cls, done: int, server_pid: int, cpu: Callable[[int | str], float] | None = None
    ) -> Snapshot:
        """``cpu(pid)`` reads a process's CPU time (default: its main thread's)."""
        cpu = cpu or _task_cpu
        return cls(done, time.monotonic(), cpu("self"), cpu(server_pid), _machine_cpu())


def rate_figures(first: Snapshot, last: Snapshot) -> Figures:
    """Rate and CPU per unit of work between two snapshots, and how noisy it was."""
    done = last.done - first.done
    wall = last.wall - first.wall
    client_cpu = last.client_cpu - first.client_cpu
    server_cpu = last.server_cpu - first.server_cpu
    busy, steal, total = (b - a for a, b in zip(first.machine, last.machine, strict=True))
    return {
        "rate": done / wall,
        "server_cpu_us": server_cpu / done * 1e6 if done else float("nan"),
        "client_cpu_us": client_cpu / done * 1e6 if done else float("nan"),
        # CPUs kept busy by anything else (other processes, softirqs), and stolen by
        # the hypervisor: how noisy the machine was during this measurement.
        "other_cpus": max(0.0, busy - client_cpu - server_cpu) / wall,
        "steal": steal / total if total else 0.0,
    }


async def _measure(
    counter: _Counter,
    run: Callable[[], Awaitable[None]],
    server_pid: int,
    warmup: float,
    duration: float,
) -> Figures:
    """Run ``run``, which counts round trips into ``counter``, and return the figures."""
    task = asyncio.ensure_future(run())
    try:
        await asyncio.sleep(warmup)
        first = Snapshot.take(counter.done, server_pid)
        await asyncio.sleep(duration)
        last = Snapshot.take(counter.done, server_pid)
        counter.stop = True
        await task
    finally:
        task.cancel()
    return rate_figures(first, last)


async def _client_ours(
    url: str,
    server_pid: int,
    modes: Collection[str],
    warmup: float,
    duration: float,
    *,
    secure: bool,
) -> dict[str, Figures]:
    node = await trustp2p.create_client(peers=[url], secure=secure)
    try:
        assert node.client is not None
        await asyncio.wait_for(node.client.wait_connected(), 10)
        socket = node.client.sockets[0]
        if PAYLOAD:
            loop = await _payload_loop(node.client, socket)
        else:
            loop = await _body_loop(node.client, socket)

        results = {}
        for mode, depth in (("sequential", 1), ("pipelined", PIPELINE_DEPTH)):
            if mode not in modes:
                continue
            counter = _Counter()

            async def run(counter: _Counter = counter, depth: int = depth) -> None:
                await asyncio.gather(*(loop(counter) for _ in range(depth)))

            results[mode] = await _measure(counter, run, server_pid, warmup, duration)
        return results
    finally:
        await node.stop()


async def _body_loop(
    client: trustp2p.ClientRole, socket: Socket
) -> Callable[[_Counter], Awaitable[None]]:
    """A coroutine function that asks ``echo`` with a JSON body until ``counter.stop``."""
    request = client.request
    numbers = itertools.count()
    first = make_body(next(numbers))
    answer = await request(socket, "echo", first, timeout=10)
    if answer != first:
        raise RuntimeError(f"unexpected answer {answer!r}")

    async def loop(counter: _Counter) -> None:
        while not counter.stop:
            await request(socket, "echo", make_body(next(numbers)))
            counter.done += 1

    return loop


async def _payload_loop(
    client: trustp2p.ClientRole, socket: Socket
) -> Callable[[_Counter], Awaitable[None]]:
    """The same with ``BODY_SIZE`` bytes of payload beside ``{}``."""
    request = client.request_package
    payload = os.urandom(BODY_SIZE)
    answer = await request(socket, "echo", {}, payload=payload, timeout=10)
    if answer.body != {} or answer.payload != payload:
        raise RuntimeError(f"unexpected answer {answer!r}")

    async def loop(counter: _Counter) -> None:
        while not counter.stop:
            await request(socket, "echo", {}, payload=payload)
            counter.done += 1

    return loop


async def _client_baseline(
    url: str, server_pid: int, modes: Collection[str], warmup: float, duration: float
) -> dict[str, Figures]:
    message = request_bytes()
    async with connect(url, compression=None) as ws:
        await ws.send(message)
        if await ws.recv() != message:
            raise RuntimeError("unexpected answer")

        async def sequential(counter: _Counter) -> None:
            while not counter.stop:
                await ws.send(message)
                await ws.recv()
                counter.done += 1

        async def pipelined(counter: _Counter) -> None:
            # Sending and receiving side by side, PIPELINE_DEPTH in flight: a sender
            # that sent them all before reading would deadlock on large bodies (both
            # write buffers full).
            window = asyncio.Semaphore(PIPELINE_DEPTH)

            async def receive() -> None:
                while True:
                    await ws.recv()
                    counter.done += 1
                    window.release()

            receiver = asyncio.create_task(receive())
            try:
                while not counter.stop:
                    await window.acquire()
                    await ws.send(message)
                for _ in range(PIPELINE_DEPTH):  # every answer in
                    await window.acquire()
            finally:
                receiver.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await receiver

        results = {}
        for mode, loop in (("sequential", sequential), ("pipelined", pipelined)):
            if mode not in modes:
                continue
            counter = _Counter()
            run = functools.partial(loop, counter)
            results[mode] = await _measure(counter, run, server_pid, warmup, duration)
        return results


async def run_client(
    impl: str, url: str, server_pid: int, modes: Collection[str], warmup: float, duration: float
) -> None:
    """Measure ``modes`` over one connection and print the figures as one JSON line."""
    if impl == "baseline":
        figures = await _client_baseline(url, server_pid, modes, warmup, duration)
    else:
        figures = await _client_ours(
            url, server_pid, modes, warmup, duration, secure=impl == "secure"
        )
    _print_line(json.dumps(figures))


async def _read_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def _secure_handshake(ws: ClientConnection) -> NoiseTransport:
    """
    What a secure trustp2p client does on a new connection, over a raw ``websockets``
    connection: the Noise XX handshake with a fresh identity, then the ``hello`` talks.
    Return the channel's transport, to seal and open what follows.
    """
    identity = Identity.generate()
    noise = NoiseHandshake(identity, initiator=True)
    await ws.send(HANDSHAKE_MAGIC + noise.write_message())
    message = await ws.recv()
    assert isinstance(message, bytes)
    noise.read_message(message)
    await ws.send(noise.write_message())
    transport = noise.transport()
    message = await ws.recv()
    assert isinstance(message, bytes)
    packages = transport.open(message, max_size=None)
    if len(packages) != 1 or decode(packages[0]).event != HELLO_EVENT:
        raise RuntimeError("the secure server didn't say hello")
    body = {
        **version_body(library_version=trustp2p.__version__),
        "peer_id": identity.peer_id,
        "listen_urls": [],
    }
    for sealed in transport.seal(encode(build_package(PackageType.TALK, HELLO_EVENT, body))):
        await ws.send(sealed)
    return transport


async def run_rss_client(impl: str, url: str, clients: int) -> None:
    """
    Open one connection, print ``warm``, wait for a line on stdin, open ``clients``
    more, print ``ready``, wait for a line on stdin, print how many connections are
    still open, then close them when stdin closes.
    """
    hello = b""
    if impl == "ours":
        hello = encode(
            build_package(
                PackageType.TALK, VERSION_EVENT, version_body(library_version=trustp2p.__version__)
            )
        )
    connections: list[ClientConnection] = []

    async def open_one() -> None:
        ws = await connect(url, compression=None, open_timeout=30)
        if impl == "secure":
            await _secure_handshake(ws)
        elif hello:
            await ws.send(hello)
        connections.append(ws)

    try:
        await open_one()
        _print_line("warm")
        await _read_line()
        for start in range(0, clients, _CONNECT_BATCH):
            count = min(_CONNECT_BATCH, clients - start)
            await asyncio.gather(*(open_one() for _ in range(count)))
        _print_line("ready")
        await _read_line()
        _print_line(str(sum(ws.state is State.OPEN for ws in connections)))
        await _read_line()
    finally:
        for start in range(0, len(connections), _CONNECT_BATCH):
            batch = connections[start : start + _CONNECT_BATCH]
            await asyncio.gather(*(ws.close() for ws in batch), return_exceptions=True)


# The orchestrator


@dataclass
class Results:
    machine: dict[str, Any]
    source: dict[str, str]
    settings: dict[str, Any]
    # layout -> impl -> mode -> one Figures per round
    rounds: dict[str, dict[str, dict[str, list[Figures]]]] = field(default_factory=dict)
    # impl -> KiB per idle client, with the raw figures
    rss: dict[str, dict[str, float]] = field(default_factory=dict)

    def median(self, layout: str, impl: str, mode: str, key: str = "rate") -> float:
        return statistics.median(figures[key] for figures in self.rounds[layout][impl][mode])

    @property
    def impls(self) -> list[str]:
        """The implementations measured, in ``IMPLS`` order."""
        seen = {impl for impls in self.rounds.values() for impl in impls}
        return [impl for impl in IMPLS if impl in seen]

    def ratios(self) -> list[tuple[str, str]]:
        """The (numerator, denominator) pairs of implementations worth comparing."""
        impls = self.impls
        return [pair for pair in RATIOS if pair[0] in impls and pair[1] in impls]

    def medians(self) -> dict[str, dict[str, dict[str, Any]]]:
        """layout -> mode -> medians of each implementation, and their ratios."""
        table: dict[str, dict[str, dict[str, Any]]] = {}
        for layout in self.rounds:
            table[layout] = {}
            for mode in MODES:
                row: dict[str, Any] = {
                    impl: {
                        key: self.median(layout, impl, mode, key)
                        for key in ("rate", "server_cpu_us", "client_cpu_us")
                    }
                    for impl in self.impls
                }
                row["ratios"] = {
                    f"{a}/{b}": row[a]["rate"] / row[b]["rate"] for a, b in self.ratios()
                }
                table[layout][mode] = row
        return table

    def spread(self, layout: str, impl: str, mode: str) -> str:
        rates = [figures["rate"] for figures in self.rounds[layout][impl][mode]]
        return f"({min(rates):,.0f}-{max(rates):,.0f})"

    def noise(self) -> tuple[float, float]:
        """The largest ``other_cpus`` and ``steal`` seen in any measurement."""
        every = [
            figures
            for impls in self.rounds.values()
            for modes in impls.values()
            for rounds in modes.values()
            for figures in rounds
        ]
        if not every:
            return 0.0, 0.0
        return max(f["other_cpus"] for f in every), max(f["steal"] for f in every)

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "medians": self.medians()}


def _child(*args: str, stdin: bool = False, script: str = __file__) -> subprocess.Popen[str]:
    """Start ``script`` (this one by default) with ``args``; read its stdout as text."""
    return subprocess.Popen(
        [sys.executable, os.path.abspath(script), *args],
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def _expect_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        raise RuntimeError(f"child process {process.pid} exited with code {process.returncode}")
    return line.strip()


@contextlib.contextmanager
def _server(impl: str, cpu: int | None) -> Iterator[tuple[str, int]]:
    """Start a server process; yield its URL and pid; stop it with SIGTERM."""
    args = ["--role", "server", "--impl", impl]
    if cpu is not None:
        args += ["--cpu", str(cpu)]
    process = _child(*args)
    try:
        yield _expect_line(process), process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _run_client(
    impl: str, url: str, server_pid: int, cpu: int, warmup: float, duration: float
) -> dict[str, Figures]:
    process = _child(
        "--role", "client", "--impl", impl, "--url", url, "--server-pid", str(server_pid),
        "--cpu", str(cpu), "--warmup", str(warmup), "--duration", str(duration),
    )  # fmt: skip
    try:
        figures: dict[str, Figures] = json.loads(_expect_line(process))
    finally:
        process.wait()
    if process.returncode:
        raise RuntimeError(f"{impl} client exited with code {process.returncode}")
    return figures


def _vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def measure_rss(impl: str, clients: int, idle: float) -> dict[str, float]:
    """Server-side memory per idle client, in KiB."""
    with _server(impl, cpu=None) as (url, pid):
        process = _child("--role", "rss-client", "--impl", impl, "--url", url,
                         "--clients", str(clients), stdin=True)  # fmt: skip
        assert process.stdin is not None
        stdin = process.stdin
        try:
            if _expect_line(process) != "warm":
                raise RuntimeError("rss client misbehaved")
            time.sleep(0.5)
            before = _vm_rss_kib(pid)
            stdin.write("go\n")
            stdin.flush()
            if _expect_line(process) != "ready":
                raise RuntimeError("rss client misbehaved")
            time.sleep(idle)
            after = _vm_rss_kib(pid)
            stdin.write("count\n")
            stdin.flush()
            still_open = int(_expect_line(process))
            if still_open != clients + 1:
                raise RuntimeError(f"{still_open} of {clients + 1} connections stayed open")
        finally:
            stdin.close()
            process.wait(timeout=60)
    return {
        "clients": clients,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_client": (after - before) / clients,
    }


def source_facts() -> dict[str, str]:
    """
    The commit checked out and a digest of the trustp2p sources imported: the figures
    belong to that code. When the package imported is not this checkout's ``src/`` (for
    example a snapshot on ``PYTHONPATH``, taken with ``git archive``), its path is given.
    """
    root = Path(__file__).resolve().parent.parent
    package = Path(trustp2p.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        relative = Path("src", "trustp2p", path.relative_to(package))
        digest.update(str(relative).encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    facts = {"commit": commit, "src_sha256": digest.hexdigest()[:12]}
    if package != root / "src" / "trustp2p":
        # Not this checkout's code: its commit says nothing about what ran.
        facts["commit"] = "unknown"
        facts["package"] = str(package)
    return facts


QUIET = 0.3
"""The other benchmarks' ``--max-other`` default: CPUs busy elsewhere above which a
measurement is made again."""


def run_arguments(
    parser: argparse.ArgumentParser,
    *,
    rounds: int,
    warmup: float,
    duration: float,
    remeasure: bool = False,
) -> argparse.ArgumentParser:
    """Add the options the other benchmarks share: ``--quick``, ``--json``, ``--rounds``,
    ``--warmup`` and ``--duration`` (with these defaults), and with ``remeasure``
    ``--max-other`` and ``--attempts``; return ``parser``."""
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 round, short")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=rounds, help="default: %(default)s")
    parser.add_argument("--warmup", type=float, default=warmup, help="seconds; %(default)s")
    parser.add_argument("--duration", type=float, default=duration, help="seconds; %(default)s")
    if remeasure:
        parser.add_argument(
            "--max-other",
            type=float,
            default=QUIET,
            help="measure again while more CPUs than this were busy elsewhere (%(default)s)",
        )
        parser.add_argument("--attempts", type=int, default=3, help="at most; %(default)s")
    return parser


def machine_facts() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "trustp2p": trustp2p.__version__,
        "trustp2p_build": trustp2p.build_name(),
        "websockets": websockets_version,
        "protobuf": protobuf_version,
        "protobuf_backend": api_implementation.Type(),
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def run_all(args: argparse.Namespace) -> Results:
    results = Results(
        machine=machine_facts(),
        source=source_facts(),
        settings={
            "body_bytes": BODY_SIZE,
            "payload": PAYLOAD,
            "package_bytes": len(request_bytes()),
            "pipeline_depth": PIPELINE_DEPTH,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "rss_clients": args.clients,
            "rss_idle_s": args.idle,
        },
    )
    impls = args.impls
    if not args.rss_only:
        for layout, (server_cpu, client_cpu) in LAYOUTS.items():
            rounds = results.rounds[layout] = {impl: {m: [] for m in MODES} for impl in impls}
            with contextlib.ExitStack() as stack:
                servers = {impl: stack.enter_context(_server(impl, server_cpu)) for impl in impls}
                for number in range(1, args.rounds + 1):
                    for impl in impls:
                        url, pid = servers[impl]
                        for attempt in range(1, _ATTEMPTS + 1):
                            figures = _run_client(
                                impl, url, pid, client_cpu, args.warmup, args.duration
                            )
                            _progress(
                                f"{layout}, round {number}/{args.rounds}, {impl:<8}: "
                                + "; ".join(_describe(mode, figures[mode]) for mode in MODES)
                            )
                            other = max(figures[mode]["other_cpus"] for mode in MODES)
                            steal = max(figures[mode]["steal"] for mode in MODES)
                            if attempt == _ATTEMPTS or (
                                other <= args.max_other and steal <= args.max_steal
                            ):
                                break
                            _progress(
                                f"  {other:.2f} CPU busy elsewhere, {steal:.0%} stolen: "
                                "measuring again"
                            )
                        for mode in MODES:
                            rounds[impl][mode].append(figures[mode])
    if not args.no_rss:
        for impl in impls:
            results.rss[impl] = rss = measure_rss(impl, args.clients, args.idle)
            _progress(f"rss, {impl}: {rss['kib_per_client']:.1f} KiB per idle client")
    return results


def _describe(mode: str, figures: Figures) -> str:
    return (
        f"{mode} {figures['rate']:,.0f}/s "
        f"(server {figures['server_cpu_us']:.0f} us, client {figures['client_cpu_us']:.0f} us, "
        f"other {figures['other_cpus']:.2f} CPU, steal {figures['steal']:.0%})"
    )


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def format_table(results: Results) -> str:
    settings = results.settings
    machine = results.machine
    lines = [
        f"{machine['cpu']}, {machine['nproc']} CPUs; Python {machine['python']}, "
        f"websockets {machine['websockets']}, protobuf {machine['protobuf']} "
        f"({machine['protobuf_backend']})",
        f"trustp2p {machine['trustp2p']} at commit {results.source['commit']}, "
        f"src/ sha256 {results.source['src_sha256']}, "
        f"{machine.get('trustp2p_build', 'pure Python')}"
        + (f", imported from {results.source['package']}" if "package" in results.source else ""),
    ]
    if results.rounds:
        impls = results.impls
        ratios = results.ratios()
        medians = results.medians()
        lines += [
            "",
            f"Round trips per second over one connection on 127.0.0.1: {settings['body_bytes']}"
            + (
                "-byte payloads beside {} (baseline: JSON bodies of that size, "
                if settings.get("payload")
                else "-byte JSON bodies ("
            )
            + f"{settings['package_bytes']}-byte packages), median of "
            f"{settings['rounds']} rounds of {settings['duration_s']:g} s (min-max). ours is "
            "trustp2p with secure=False, secure is trustp2p over its Noise channel.",
            "",
            f"{'layout':<16}{'mode':<12}"
            + "".join(f"{impl:^24}" for impl in impls)
            + "".join(f"{a + '/' + b:>17}" for a, b in ratios),
        ]
        for layout, modes in medians.items():
            for mode, row in modes.items():
                lines.append(
                    f"{layout:<16}{mode:<12}"
                    + "".join(
                        f"{row[impl]['rate']:>8,.0f} {results.spread(layout, impl, mode):<15}"
                        for impl in impls
                    )
                    + "".join(f"{row['ratios'][f'{a}/{b}']:>17.0%}" for a, b in ratios)
                )
        lines += [
            "",
            "The same in MB/s of bodies (request and response): "
            + "; ".join(
                f"{layout} {mode} "
                + ", ".join(
                    f"{impl} {row[impl]['rate'] * 2 * settings['body_bytes'] / 1e6:,.1f}"
                    for impl in impls
                )
                for layout, modes in medians.items()
                for mode, row in modes.items()
            ),
            "",
            "CPU time per round trip, server + client, in us (median of the rounds)",
            "",
            f"{'layout':<16}{'mode':<12}" + "".join(f"{impl:>14}" for impl in impls),
        ]
        for layout, modes in medians.items():
            for mode, row in modes.items():
                lines.append(
                    f"{layout:<16}{mode:<12}"
                    + "".join(
                        f"{row[impl]['server_cpu_us']:>8.0f} +{row[impl]['client_cpu_us']:>4.0f}"
                        for impl in impls
                    )
                )
        other, steal = results.noise()
        lines += [
            "",
            f"Noise: at worst {other:.2f} CPU busy outside the two processes and {steal:.0%} "
            "stolen by the hypervisor during a measurement (see --json for each round).",
        ]
    if results.rss:
        lines += [
            "",
            f"Server memory per idle client ({settings['rss_clients']} clients, "
            f"idle {settings['rss_idle_s']:g} s)",
            "",
        ]
        for impl, rss in results.rss.items():
            lines.append(
                f"{impl:<10}{rss['kib_per_client']:>6.1f} KiB "
                f"(VmRSS {rss['rss_before_kib'] / 1024:.1f} -> "
                f"{rss['rss_after_kib'] / 1024:.1f} MiB)"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    global BODY_SIZE, PAYLOAD  # --body-size, --payload; the children read the environment
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="short run: 1 round, 0.5 s")
    parser.add_argument(
        "--body-size",
        type=int,
        help=f"bytes of JSON per request body, 12 to {MAX_BODY_SIZE:,} (default: {BODY_SIZE})",
    )
    parser.add_argument(
        "--payload",
        action="store_true",
        help="ours and secure carry the body's bytes as a binary payload beside {} "
        "(the baseline is unchanged)",
    )
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument(
        "--from-json", metavar="FILE", help="print the table of a run saved with --json, only"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds per implementation (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="seconds before counting (default: %(default)s)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=1.5,
        help="seconds counted per mode (default: %(default)s)",
    )
    parser.add_argument(
        "--clients", type=int, default=2000, help="idle clients for RSS (default: %(default)s)"
    )
    parser.add_argument(
        "--idle", type=float, default=2.0, help="seconds idle before RSS (default: %(default)s)"
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.2,
        help="measure a round again (twice at most) when more than this many CPUs were "
        "busy outside the two processes (default: 0.2)",
    )
    parser.add_argument(
        "--max-steal",
        type=float,
        default=0.1,
        help="measure a round again (twice at most) when the hypervisor stole more than "
        "this fraction of CPU time (default: 0.1)",
    )
    parser.add_argument(
        "--impls",
        default=",".join(IMPLS),
        help="comma-separated implementations to measure (default: %(default)s)",
    )
    parser.add_argument("--rss-only", action="store_true", help="only measure memory")
    parser.add_argument("--no-rss", action="store_true", help="don't measure memory")
    single = parser.add_argument_group(
        "one process",
        "The orchestrator starts the processes it measures with these; run them by hand "
        "to profile one side (see BENCHMARKS.md).",
    )
    single.add_argument(
        "--role", choices=("server", "client", "rss-client"), help="run only this process"
    )
    single.add_argument("--impl", choices=IMPLS, default="ours", help="default: ours")
    single.add_argument("--url", help="client: the URL the server printed")
    single.add_argument("--server-pid", type=int, help="client: the server's pid, for CPU time")
    single.add_argument("--cpu", type=int, help="pin this process to one CPU")
    single.add_argument(
        "--modes",
        default=",".join(MODES),
        help="client: comma-separated modes to measure (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.body_size is not None:
        if not 12 <= args.body_size <= MAX_BODY_SIZE:
            parser.error(
                f"--body-size must be 12 to {MAX_BODY_SIZE:,}: a request over the 1 MiB "
                "message limit of each side would be refused"
            )
        BODY_SIZE = args.body_size
        os.environ["TRUSTP2P_BENCH_BODY_SIZE"] = str(args.body_size)
    if args.payload:
        PAYLOAD = True
        os.environ["TRUSTP2P_BENCH_PAYLOAD"] = "1"
    if args.role in ("client", "rss-client") and args.url is None:
        parser.error(f"--role {args.role} needs --url")
    if args.role == "client" and args.server_pid is None:
        parser.error("--role client needs --server-pid")
    chosen = set(args.impls.split(","))
    if not chosen or not chosen <= set(IMPLS):
        parser.error(f"--impls takes {', '.join(IMPLS)}")
    args.impls = [impl for impl in IMPLS if impl in chosen]
    if not set(args.modes.split(",")) <= set(MODES):
        parser.error(f"--modes takes {' and/or '.join(MODES)}")
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.2, 0.5
        args.clients, args.idle = min(args.clients, 500), 1.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role is not None:
        _pin(args.cpu)
        if args.role == "server":
            asyncio.run(run_server(args.impl))
        elif args.role == "client":
            modes = args.modes.split(",")
            asyncio.run(
                run_client(args.impl, args.url, args.server_pid, modes, args.warmup, args.duration)
            )
        else:
            asyncio.run(run_rss_client(args.impl, args.url, args.clients))
        return 0
    if args.from_json is not None:
        with open(args.from_json) as file:
            saved = json.load(file)
        saved.pop("medians", None)
        print(format_table(Results(**saved)))
        return 0
    results = run_all(args)
    if args.json:
        print(json.dumps(results.summary(), indent=2))
    else:
        print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
