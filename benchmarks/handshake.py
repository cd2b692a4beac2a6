"""
Noise handshakes per second: the sans-I/O handshake alone, and secure connections set up
end to end over loopback, against plain (``secure=False``) connection setup.

Run ``.venv/bin/python benchmarks/handshake.py`` (Linux only, like
``request_response.py``: it pins processes and reads ``/proc``). ``--quick`` makes a
short run; ``--json`` prints every figure as JSON.

Methodology
-----------

Sans-I/O (``--part sansio``). One process, pinned to one CPU, plays both sides of
:class:`trustp2p.security.noise.NoiseHandshake` exactly as the secure layer does for a
connection: each side is built with its node's :class:`~trustp2p.security.noise.NoiseKey`
(the Ed25519 identity and the X25519 static key it signed, made once per node as
``SecureLayer`` does), then ``write_message``/``read_message`` in turn: message 1 (``e``,
a fresh ephemeral key), message 2 (``e, ee, s, es`` + the responder's signed identity
payload), message 3 (``s, se`` + the initiator's payload); each side checks the other's
signature and derives its peer id, then ``transport()`` splits the ciphers. The loop
runs for a fixed time and counts complete handshakes; ``perf_counter`` around each call
splits the time between initiator and responder. The process is repeated
(``--repeats``), and the median is reported. The same process times the primitives the
handshake is made of with :mod:`timeit` (X25519 key generation and DH, Ed25519 sign and
verify, peer id, ``HandshakeState`` set-up) and the per-message cost of the transport,
which is what the secure channel adds to every package: ``NoiseTransport.seal`` then
``open`` of the request/response benchmark's 164-byte package (165 bytes of plaintext
with the chunk flag); ``ChaCha20Poly1305`` of ``cryptography`` called directly
(encrypt, decrypt); and *lean* seal + open, the AEAD called directly with a nonce
counter of our own, the floor of a transport. Last, the memory the secure channel keeps
per connection: VmRSS and Python allocations per ``NoiseTransport`` kept alive, and
VmRSS per pair of used ``ChaCha20Poly1305`` objects.

End to end (``--part e2e``). The server is ``request_response.py --role server`` (a
trustp2p server node, ``max_inbound=None``, per-IP limits exempt for loopback by
default), once with ``--impl ours`` (``secure=False``) and once with ``--impl secure``,
both alive for the whole layout. A client process opens connections one after another
(*sequential*) or ``--concurrency`` at a time (*concurrent*) with the node's own
machinery, without a whole client node per connection:

- secure: another :class:`Identity` (with its ``NoiseKey``, made before measuring)
  for each connection (the server keeps one connection
  per peer id), taken in turn from a pool of 4096 made before measuring (a real node has
  its identity already), and a :class:`SecureLayer` over the ``ws`` driver, exactly as a
  client node dials. The pool is the same in every client process, so the server's peer
  store holds at most 4096 peers: past its ``max_peers`` (10 000) every new peer id costs
  the server an O(n) eviction scan, milliseconds per connection, which would swamp the
  handshake (``--fresh-identities`` shows it). ``--pool N`` takes a smaller pool: a
  round's connections outnumber it, so the server meets the same peers again, with the
  same Noise static keys, as reconnecting peers (their signature checks cached). The
  connection is *open* when the layer
  calls ``on_open`` (handshake done on the client side: the moment
  ``client.wait_connected()`` returns in a node);
- plain: the ``ws`` driver alone; *open* is its ``on_open`` (WebSocket upgrade done).

On open the client sends what a trustp2p client sends (its ``hello`` talk, encrypted; or
the plain ``version`` talk), then waits for the server's first package (its ``hello`` or
``version``), which proves that the server completed its side too, and counts the
connection. Then it closes it (``close_soon``, WebSocket close handshake in the
background) and opens the next. So the rate is complete connection set-ups per second
including the server's work, and the close is paid for, alike in both modes.

Each round starts a fresh client process that measures sequential then concurrent, each
after a warm-up, over a fixed wall-clock window; rounds alternate plain / secure. The
client also reads both processes' CPU time (all threads, ``/proc/<pid>/task/*/schedstat``)
to report CPU per connection, and the latency from dialling to ``on_open`` and to the
server's first package (median of the sequential mode). Noise control and the two CPU
layouts (*same core*: both on CPU 0; *separate cores*: server on CPU 0, client on CPU 1)
are those of ``request_response.py``.

"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
import timeit
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from request_response import (
    LAYOUTS,
    Snapshot,
    _expect_line,
    _pin,
    _print_line,
    _progress,
    _server,
    machine_facts,
    rate_figures,
    request_bytes,
    source_facts,
)

import trustp2p
from trustp2p import NodeOptions, PackageType
from trustp2p.drivers.base import Listening, Socket
from trustp2p.drivers.ws import WsDriver
from trustp2p.exceptions import HandshakeError
from trustp2p.identity import Identity, peer_id_from_public_key, verify_signature
from trustp2p.protocol.handshake import HELLO_EVENT, VERSION_EVENT, version_body
from trustp2p.protocol.package import build_package, encode
from trustp2p.security.channel import SecureLayer
from trustp2p.security.noise import PROLOGUE, NoiseHandshake, NoiseKey, NoiseTransport
from trustp2p.security.noise_state import HandshakeState

E2E_IMPLS = ("plain", "secure")
"""plain: trustp2p with ``secure=False``; secure: with the Noise channel."""

SERVER_IMPL = {"plain": "ours", "secure": "secure"}
"""The ``request_response.py`` server implementation of each mode."""

E2E_MODES = ("sequential", "concurrent")

Figures = dict[str, float]
Rounds = dict[str, dict[str, list[Figures]]]
"""impl -> mode -> one Figures per round."""

_ATTEMPTS = 3

IDENTITY_POOL = 4096
"""Identities the secure client cycles through: each is used again only after 4095
other connections, long after its previous connection closed (the server keeps one
connection per peer id). They are derived from their index, so every client process
uses the same ones, and the server's peer store never holds more than 4096 peers (see
``--fresh-identities``)."""


def pool_identity(index: int, *, fresh: bool = False) -> Identity:
    """Identity number ``index`` of the pool: the same in every process unless ``fresh``."""
    if fresh:
        return Identity.generate()
    seed = hashlib.sha256(b"trustp2p-benchmark-identity-%d" % index).digest()
    return Identity(Ed25519PrivateKey.from_private_bytes(seed))


# Sans-I/O


def _handshake_once(a: NoiseKey, b: NoiseKey, clock: Callable[[], float]) -> tuple[float, float]:
    """One full XX handshake between nodes ``a`` (dials) and ``b``; seconds per side."""
    t0 = clock()
    initiator = NoiseHandshake(a, initiator=True)
    message1 = initiator.write_message()
    t1 = clock()
    responder = NoiseHandshake(b, initiator=False)
    responder.read_message(message1)
    message2 = responder.write_message()
    t2 = clock()
    initiator.read_message(message2)
    message3 = initiator.write_message()
    initiator.transport()
    t3 = clock()
    responder.read_message(message3)
    responder.transport()
    t4 = clock()
    if (
        responder.remote_peer_id != a.identity.peer_id
        or initiator.remote_peer_id != b.identity.peer_id
    ):
        raise RuntimeError("handshake authenticated the wrong peers")
    return (t1 - t0) + (t3 - t2), (t2 - t1) + (t4 - t3)


def measure_handshakes(seconds: float) -> Figures:
    """Complete handshakes per second in this process, and microseconds per side."""
    a, b = NoiseKey(Identity.generate()), NoiseKey(Identity.generate())  # once per node
    clock = time.perf_counter
    for _ in range(20):
        _handshake_once(a, b, clock)
    count, initiator, responder = 0, 0.0, 0.0
    start = clock()
    while clock() - start < seconds:
        i, r = _handshake_once(a, b, clock)
        initiator += i
        responder += r
        count += 1
    wall = clock() - start
    return {
        "handshakes_per_s": count / wall,
        "initiator_us": initiator / count * 1e6,
        "responder_us": responder / count * 1e6,
        "handshakes": count,
    }


def _per_call_us(statement: Callable[[], object], number: int) -> float:
    """Best of 5 ``timeit`` runs, in microseconds per call."""
    return min(timeit.repeat(statement, number=number, repeat=5)) / number * 1e6


def measure_primitives() -> dict[str, float]:
    """Microseconds per call of what a handshake and a transport message are made of."""
    identity = Identity.generate()
    key = X25519PrivateKey.generate()
    peer_public = X25519PrivateKey.generate().public_key()
    static_public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signed = b"trustp2p-noise-static-key:" + static_public
    signature = identity.sign(signed)
    ed25519 = Ed25519PrivateKey.generate()

    def x25519_generate() -> bytes:
        return X25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )

    def noise_setup() -> HandshakeState:
        return HandshakeState(
            initiator=True, static=key, static_public=static_public, prologue=PROLOGUE
        )

    # A transport pair, and one package as the request/response benchmark sends it.
    a, b = Identity.generate(), Identity.generate()
    initiator = NoiseHandshake(a, initiator=True)
    responder = NoiseHandshake(b, initiator=False)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    sender, receiver = initiator.transport(), responder.transport()
    package = request_bytes()
    plaintext = b"\x00" + package
    chacha = ChaCha20Poly1305(os.urandom(32))
    nonce = bytes(12)
    sealed = chacha.encrypt(nonce, plaintext, None)

    def seal_open() -> list[bytes]:
        (message,) = sender.seal(package)
        return receiver.open(message, max_size=None)

    # The floor of seal + open: the AEAD called directly, a nonce counter of our own,
    # the chunk flag prepended, no method around it (a reference, not trustp2p code).
    aead_key = os.urandom(32)
    encryptor, decryptor = ChaCha20Poly1305(aead_key), ChaCha20Poly1305(aead_key)
    nonces = itertools.count()

    def lean_seal_open() -> bytes:
        nonce = b"\0\0\0\0" + next(nonces).to_bytes(8, "little")
        message = encryptor.encrypt(nonce, b"\x00" + package, None)
        return decryptor.decrypt(nonce, message, None)[1:]

    n = 2000
    return {
        "x25519_generate_us": _per_call_us(x25519_generate, 500),
        "x25519_dh_us": _per_call_us(lambda: key.exchange(peer_public), 500),
        "ed25519_generate_us": _per_call_us(Ed25519PrivateKey.generate, 500),
        "ed25519_sign_us": _per_call_us(lambda: ed25519.sign(signed), 500),
        "ed25519_verify_us": _per_call_us(
            lambda: verify_signature(identity.public_key, signature, signed), 500
        ),
        "peer_id_us": _per_call_us(lambda: peer_id_from_public_key(identity.public_key), n),
        "handshake_state_setup_us": _per_call_us(noise_setup, 500),
        "transport_seal_open_us": _per_call_us(seal_open, n * 10),
        "lean_seal_open_us": _per_call_us(lean_seal_open, n * 10),
        "chacha20poly1305_encrypt_us": _per_call_us(
            lambda: chacha.encrypt(nonce, plaintext, None), n * 10
        ),
        "chacha20poly1305_decrypt_us": _per_call_us(
            lambda: chacha.decrypt(nonce, sealed, None), n * 10
        ),
    }


def _vm_rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure_transport_memory(count: int = 2000) -> dict[str, float]:
    """
    What the secure channel keeps per connection once the handshake is over: VmRSS and
    Python allocations (``tracemalloc``) per ``NoiseTransport`` kept alive (the
    responder's, after one message each way), and VmRSS per pair of used
    ``ChaCha20Poly1305`` objects (the AEAD contexts OpenSSL allocates, outside Python).
    """
    a, b = Identity.generate(), Identity.generate()

    def transport() -> NoiseTransport:
        initiator = NoiseHandshake(a, initiator=True)
        responder = NoiseHandshake(b, initiator=False)
        responder.read_message(initiator.write_message())
        initiator.read_message(responder.write_message())
        responder.read_message(initiator.write_message())
        theirs, ours = initiator.transport(), responder.transport()
        ours.decrypt(theirs.encrypt(b"x" * 100))
        theirs.decrypt(ours.encrypt(b"x" * 100))
        return ours

    def aead_pair() -> tuple[ChaCha20Poly1305, ChaCha20Poly1305]:
        sender, receiver = ChaCha20Poly1305(os.urandom(32)), ChaCha20Poly1305(os.urandom(32))
        sealed = sender.encrypt(bytes(12), b"x" * 100, None)
        with contextlib.suppress(InvalidTag):  # another key: only the context matters
            receiver.decrypt(bytes(12), sealed, None)
        return sender, receiver

    # The AEAD objects first, while the heap has no free space left by handshakes.
    kept: list[object] = [aead_pair() for _ in range(50)]
    gc.collect()
    before = _vm_rss_kib()
    kept += [aead_pair() for _ in range(count)]
    gc.collect()
    aead_rss = (_vm_rss_kib() - before) / count
    kept += [transport() for _ in range(50)]
    gc.collect()
    before = _vm_rss_kib()
    kept += [transport() for _ in range(count)]
    gc.collect()
    transport_rss = (_vm_rss_kib() - before) / count
    tracemalloc.start()
    first = tracemalloc.take_snapshot()
    kept += [transport() for _ in range(count // 2)]
    gc.collect()
    second = tracemalloc.take_snapshot()
    tracemalloc.stop()
    python_bytes = sum(s.size_diff for s in second.compare_to(first, "filename")) / (count // 2)
    del kept
    return {
        "transport_rss_kib": transport_rss,
        "transport_python_bytes": python_bytes,
        "aead_pair_rss_kib": aead_rss,
    }


def run_sansio(seconds: float, repeats: int) -> dict[str, Any]:
    """Median of ``repeats`` handshake loops of ``seconds``, the primitives, the memory."""
    runs = [measure_handshakes(seconds) for _ in range(repeats)]
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    rates = [run["handshakes_per_s"] for run in runs]
    return {
        "median": median,
        "min_rate": min(rates),
        "max_rate": max(rates),
        "primitives": measure_primitives(),
        "memory": measure_transport_memory(),
    }


# End to end: the client process


def _process_cpu(pid: int | str) -> float:
    """CPU time of every thread of a process, in seconds (``schedstat``)."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with (
                contextlib.suppress(FileNotFoundError, ProcessLookupError),
                open(f"/proc/{pid}/task/{task}/schedstat") as schedstat,
            ):
                total += int(schedstat.read().split()[0])
    return total / 1e9


class _Connection:
    """
    The listener of one client connection: what a client node does on open (send its
    hello or version talk), and futures for ``on_open`` and the server's first package.
    """

    def __init__(self, hello: Callable[[], bytes]) -> None:
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[float] = loop.create_future()
        self.greeted: asyncio.Future[float] = loop.create_future()
        self.socket: Socket | None = None
        self._hello = hello
        self._clock = loop.time

    def on_start(self, listening: Listening) -> None:  # pragma: no cover - never listens
        pass

    def on_connection(self, socket: Socket) -> None:  # pragma: no cover - never listens
        pass

    def on_open(self, socket: Socket) -> None:
        self.socket = socket
        if not self.opened.done():
            self.opened.set_result(self._clock())
        socket.write(self._hello())

    def on_message(self, socket: Socket, data: bytes | str) -> None:
        if not self.greeted.done():
            self.greeted.set_result(self._clock())

    def on_error(self, socket: Socket, error: Exception) -> None:
        self._fail(error)

    def on_close(self, socket: Socket) -> None:
        self._fail(ConnectionError(f"closed: {socket.close_code} {socket.close_reason}"))

    def failed(self, raw: Socket, error: HandshakeError) -> None:
        self._fail(error)

    def _fail(self, error: Exception) -> None:
        for future in (self.opened, self.greeted):
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: whoever awaits gets it anyway


@dataclass
class _Counter:
    done: int = 0
    failed: int = 0
    stop: bool = False
    to_open: list[float] = field(default_factory=list)
    to_hello: list[float] = field(default_factory=list)


class _Dialler:
    """Opens one connection after another to ``url``, as a plain or secure client."""

    def __init__(self, url: str, secure: bool, pool: int, *, fresh: bool = False) -> None:
        self.url = url
        self.secure = secure
        options = NodeOptions(client=True, secure=secure)
        self.options = options
        self.driver = WsDriver(options.driver_options())
        version = version_body(library_version=trustp2p.__version__)
        self._version = encode(build_package(PackageType.TALK, VERSION_EVENT, version))
        self._version_body = version
        # Each client node has its identity and its Noise static key already.
        self._keys = [
            NoiseKey(pool_identity(index, fresh=fresh)) for index in range(pool if secure else 0)
        ]
        self._next = 0

    def _key(self) -> NoiseKey:
        key = self._keys[self._next % len(self._keys)]
        self._next += 1
        return key

    async def open_one(self, counter: _Counter) -> None:
        """Open a connection, wait for the server's first package, close it."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self.secure:
            key = self._key()
            identity = key.identity
            body = {**self._version_body, "peer_id": identity.peer_id, "listen_urls": []}

            def hello() -> bytes:
                return encode(build_package(PackageType.TALK, HELLO_EVENT, body))

            conn = _Connection(hello)
            layer = SecureLayer(
                conn,
                identity,
                admit=lambda raw: None,
                failed=conn.failed,
                max_package_size=self.options.max_package_size,
                noise_key=key,
            )
            dial_listener: Any = layer
        else:
            conn = _Connection(lambda: self._version)
            dial_listener = conn
        try:
            async with asyncio.timeout(10):
                await self.driver.connect(self.url, dial_listener)
                opened = await conn.opened
                greeted = await conn.greeted
        except Exception as exc:
            counter.failed += 1
            _progress(f"connection failed: {type(exc).__name__}: {exc}")
            if conn.socket is not None:
                conn.socket.abort()
            return
        assert conn.socket is not None
        conn.socket.close_soon()
        if not counter.stop:
            counter.done += 1
            counter.to_open.append(opened - start)
            counter.to_hello.append(greeted - start)


def _figures(first: Snapshot, last: Snapshot, counter: _Counter, skip: int) -> Figures:
    done = last.done - first.done
    to_open = counter.to_open[skip : skip + done] or [float("nan")]
    to_hello = counter.to_hello[skip : skip + done] or [float("nan")]
    return {
        **rate_figures(first, last),
        "open_ms": statistics.median(to_open) * 1e3,
        "hello_ms": statistics.median(to_hello) * 1e3,
        "failed": counter.failed,
    }


async def run_e2e_client(
    impl: str,
    url: str,
    server_pid: int,
    concurrency: int,
    warmup: float,
    duration: float,
    *,
    fresh: bool = False,
    pool: int = IDENTITY_POOL,
) -> None:
    """Measure sequential and concurrent connection set-up; print the figures as JSON."""
    dialler = _Dialler(url, impl == "secure", pool, fresh=fresh)
    results: dict[str, Figures] = {}
    for mode, width in (("sequential", 1), ("concurrent", concurrency)):
        counter = _Counter()

        async def worker(counter: _Counter = counter) -> None:
            while not counter.stop:
                await dialler.open_one(counter)

        tasks = [asyncio.ensure_future(worker()) for _ in range(width)]
        try:
            await asyncio.sleep(warmup)
            first = Snapshot.take(counter.done, server_pid, _process_cpu)
            skip = counter.done
            await asyncio.sleep(duration)
            last = Snapshot.take(counter.done, server_pid, _process_cpu)
            counter.stop = True
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
        results[mode] = _figures(first, last, counter, skip)
        await asyncio.sleep(0.3)  # let the last closing handshakes end
    _print_line(json.dumps(results))


# End to end: the orchestrator


def _run_client(
    impl: str, url: str, pid: int, cpu: int, args: argparse.Namespace
) -> dict[str, Figures]:
    process = _child_here(
        "--role", "e2e-client", "--impl", impl, "--url", url, "--server-pid", str(pid),
        "--cpu", str(cpu), "--concurrency", str(args.concurrency),
        "--warmup", str(args.warmup), "--duration", str(args.duration),
        *(["--fresh-identities"] if args.fresh_identities else []), "--pool", str(args.pool),
    )  # fmt: skip
    try:
        figures: dict[str, Figures] = json.loads(_expect_line(process))
    finally:
        process.wait()
    if process.returncode:
        raise RuntimeError(f"{impl} client exited with code {process.returncode}")
    return figures


def _child_here(*args: str) -> subprocess.Popen[str]:
    """This script, as a child process (``request_response._child`` runs that one)."""
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )


def run_e2e(args: argparse.Namespace) -> dict[str, dict[str, dict[str, list[Figures]]]]:
    """layout -> impl -> mode -> one Figures per round."""
    rounds: dict[str, dict[str, dict[str, list[Figures]]]] = {}
    for layout, (server_cpu, client_cpu) in LAYOUTS.items():
        rounds[layout] = {impl: {mode: [] for mode in E2E_MODES} for impl in E2E_IMPLS}
        with contextlib.ExitStack() as stack:
            servers = {
                impl: stack.enter_context(_server(SERVER_IMPL[impl], server_cpu))
                for impl in E2E_IMPLS
            }
            for number in range(1, args.rounds + 1):
                for impl in E2E_IMPLS:
                    url, pid = servers[impl]
                    for attempt in range(1, _ATTEMPTS + 1):
                        figures = _run_client(impl, url, pid, client_cpu, args)
                        _progress(
                            f"{layout}, round {number}/{args.rounds}, {impl:<6}: "
                            + "; ".join(_describe(mode, figures[mode]) for mode in E2E_MODES)
                        )
                        other = max(figures[mode]["other_cpus"] for mode in E2E_MODES)
                        steal = max(figures[mode]["steal"] for mode in E2E_MODES)
                        if attempt == _ATTEMPTS or (
                            other <= args.max_other and steal <= args.max_steal
                        ):
                            break
                        _progress(f"  {other:.2f} CPU busy elsewhere, {steal:.0%} stolen: again")
                    for mode in E2E_MODES:
                        rounds[layout][impl][mode].append(figures[mode])
    return rounds


def _describe(mode: str, figures: Figures) -> str:
    return (
        f"{mode} {figures['rate']:,.0f}/s (server {figures['server_cpu_us']:.0f} us, "
        f"client {figures['client_cpu_us']:.0f} us, open {figures['open_ms']:.2f} ms, "
        f"hello {figures['hello_ms']:.2f} ms, failed {figures['failed']:.0f}, "
        f"other {figures['other_cpus']:.2f} CPU, steal {figures['steal']:.0%})"
    )


def format_report(results: dict[str, Any], args: argparse.Namespace) -> str:
    machine, source = results["machine"], results["source"]
    lines = [
        f"{machine['cpu']}, {machine['nproc']} CPUs; Python {machine['python']}, "
        f"websockets {machine['websockets']}",
        f"trustp2p {machine['trustp2p']} at commit {source['commit']}, "
        f"src/ sha256 {source['src_sha256']}, {machine.get('trustp2p_build', 'pure Python')}"
        + (f", imported from {source['package']}" if "package" in source else ""),
    ]
    sansio = results.get("sansio")
    if sansio is not None:
        median = sansio["median"]
        lines += [
            "",
            f"Sans-I/O NoiseHandshake, both sides in one process on CPU {args.sansio_cpu}, "
            f"median of {args.repeats} runs of {args.seconds:g} s:",
            f"  {median['handshakes_per_s']:,.0f} handshakes/s "
            f"({sansio['min_rate']:,.0f}-{sansio['max_rate']:,.0f}); per handshake "
            f"initiator {median['initiator_us']:.0f} us + responder "
            f"{median['responder_us']:.0f} us",
            "",
            "Primitives, us per call (best of 5):",
        ]
        for name, value in sansio["primitives"].items():
            lines.append(f"  {name.removesuffix('_us'):<28}{value:>8.2f}")
        memory = sansio.get("memory")
        if memory is not None:
            lines += [
                "",
                f"Kept per connection after the handshake: a NoiseTransport "
                f"{memory['transport_rss_kib']:.1f} KiB of VmRSS, of which "
                f"{memory['transport_python_bytes'] / 1024:.1f} KiB Python objects; a pair "
                f"of used ChaCha20Poly1305 objects {memory['aead_pair_rss_kib']:.1f} KiB.",
            ]
    e2e = results.get("e2e")
    if e2e:
        lines += [
            "",
            "Connection set-ups per second over loopback (dial -> server's first package -> "
            f"close), median of {args.rounds} rounds of {args.duration:g} s (min-max); "
            f"concurrent = {args.concurrency} at a time.",
            "",
            f"{'layout':<16}{'mode':<12}{'plain':^22}{'secure':^22}{'secure/plain':>13}"
            f"{'CPU us/conn plain':>20}{'secure':>14}{'open ms':>15}{'hello ms':>15}",
        ]
        for layout, impls in e2e.items():
            for mode in E2E_MODES:

                def med(impl: str, key: str, mode: str = mode, impls: Rounds = impls) -> float:
                    return statistics.median(f[key] for f in impls[impl][mode])

                def spread(impl: str, mode: str = mode, impls: Rounds = impls) -> str:
                    rates = [f["rate"] for f in impls[impl][mode]]
                    return f"({min(rates):,.0f}-{max(rates):,.0f})"

                lines.append(
                    f"{layout:<16}{mode:<12}"
                    + "".join(
                        f"{med(impl, 'rate'):>7,.0f} {spread(impl):<14}" for impl in E2E_IMPLS
                    )
                    + f"{med('secure', 'rate') / med('plain', 'rate'):>13.0%}"
                    + "".join(
                        f"{med(impl, 'server_cpu_us'):>12.0f} +{med(impl, 'client_cpu_us'):>5.0f}"
                        for impl in E2E_IMPLS
                    )
                    + "".join(
                        f"{med('plain', key):>7.2f}/{med('secure', key):<7.2f}"
                        for key in ("open_ms", "hello_ms")
                    )
                )
        every = [
            f for impls in e2e.values() for modes in impls.values() for rs in modes.values()
            for f in rs
        ]  # fmt: skip
        failed = sum(f["failed"] for f in every)
        lines += [
            "",
            f"Failed connections: {failed:.0f}. Noise: at worst "
            f"{max(f['other_cpus'] for f in every):.2f} CPU busy elsewhere, "
            f"{max(f['steal'] for f in every):.0%} stolen. open/hello ms: plain/secure.",
        ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--part", choices=("all", "sansio", "e2e"), default="all")
    parser.add_argument("--quick", action="store_true", help="short run")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument(
        "--from-json",
        metavar="FILE",
        help="print the report of a run saved with --json (give the same settings); run nothing",
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="sans-I/O: loop length")
    parser.add_argument("--repeats", type=int, default=5, help="sans-I/O: loops (median)")
    parser.add_argument("--sansio-cpu", type=int, default=1, help="sans-I/O: pin to this CPU")
    parser.add_argument("--rounds", type=int, default=5, help="e2e: rounds per mode")
    parser.add_argument("--warmup", type=float, default=0.5, help="e2e: seconds before counting")
    parser.add_argument("--duration", type=float, default=2.0, help="e2e: seconds counted")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="e2e: connections at once (concurrent)"
    )
    parser.add_argument(
        "--fresh-identities",
        action="store_true",
        help="e2e: each client process generates 4096 new identities instead of using the "
        "shared pool, so the server meets ever new peers (its peer store fills up)",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=IDENTITY_POOL,
        help="e2e: identities a secure client process cycles through; fewer than its "
        "connections and they return, as reconnecting peers (the server skips the "
        "signature check of an identity payload it checked lately)",
    )
    parser.add_argument("--max-other", type=float, default=0.2, help="noise control")
    parser.add_argument("--max-steal", type=float, default=0.1, help="noise control")
    single = parser.add_argument_group("one process (started by the orchestrator)")
    single.add_argument("--role", choices=("sansio", "e2e-client"))
    single.add_argument("--impl", choices=E2E_IMPLS, default="secure")
    single.add_argument("--url")
    single.add_argument("--server-pid", type=int)
    single.add_argument("--cpu", type=int)
    args = parser.parse_args(argv)
    if args.role == "e2e-client" and (args.url is None or args.server_pid is None):
        parser.error("--role e2e-client needs --url and --server-pid")
    if args.quick:
        args.seconds, args.repeats = 0.5, 1
        args.rounds, args.warmup, args.duration = 1, 0.2, 0.5
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role == "sansio":
        _pin(args.cpu)
        _print_line(json.dumps(run_sansio(args.seconds, args.repeats)))
        return 0
    if args.role == "e2e-client":
        _pin(args.cpu)
        asyncio.run(
            run_e2e_client(
                args.impl,
                args.url,
                args.server_pid,
                args.concurrency,
                args.warmup,
                args.duration,
                fresh=args.fresh_identities,
                pool=args.pool,
            )
        )
        return 0
    if args.from_json is not None:
        with open(args.from_json) as file:
            print(format_report(json.load(file), args))
        return 0
    results: dict[str, Any] = {"machine": machine_facts(), "source": source_facts()}
    if args.part in ("all", "sansio"):
        process = _child_here(
            "--role", "sansio", "--cpu", str(args.sansio_cpu),
            "--seconds", str(args.seconds), "--repeats", str(args.repeats),
        )  # fmt: skip
        results["sansio"] = json.loads(_expect_line(process))
        process.wait()
    if args.part in ("all", "e2e"):
        results["e2e"] = run_e2e(args)
    print(json.dumps(results, indent=2) if args.json else format_report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
