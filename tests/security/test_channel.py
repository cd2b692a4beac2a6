"""The secure layer over the memory driver: which error each failure raises, and that it
names the peer."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import MS, stays, wait_for
from tests.drivers.conformance import RecordingListener
from trustp2p.drivers import DriverEvent, DriverOptions, Listening, Socket
from trustp2p.drivers.memory import MemoryDriver, MemoryHub
from trustp2p.drivers.ws import WsDriver
from trustp2p.exceptions import (
    ChannelError,
    ConnectionClosed,
    HandshakeClosed,
    HandshakeError,
    SelfDialError,
    UsageError,
)
from trustp2p.identity import Identity
from trustp2p.protocol.handshake import PLAIN_PEER, is_mode_mismatch
from trustp2p.protocol.package import PackageType, build_package, encode
from trustp2p.security.channel import SecureLayer, SecureSocket
from trustp2p.security.noise import NoiseKey


@dataclass
class Side:
    """A secure layer, the listener above it (the node's place), and its failures."""

    identity: Identity
    events: RecordingListener = field(default_factory=RecordingListener)
    failures: list[tuple[Socket, HandshakeError]] = field(default_factory=list)
    layer: SecureLayer = field(init=False)

    def __post_init__(self) -> None:
        self.layer = self.make_layer()

    def make_layer(
        self, handshake_timeout: float = 10.0, close_timeout: float = 10.0
    ) -> SecureLayer:
        return SecureLayer(
            self.events,
            self.identity,
            admit=lambda raw: None,
            failed=lambda raw, error: self.failures.append((raw, error)),
            handshake_timeout=handshake_timeout,
            close_timeout=close_timeout,
        )


@dataclass
class Net:
    driver: MemoryDriver
    server: Side
    listening: Listening


@pytest.fixture
async def net() -> AsyncIterator[Net]:
    driver = MemoryDriver(hub=MemoryHub())
    server = Side(Identity.generate())
    listening = await driver.listen("127.0.0.1", 0, server.layer)
    yield Net(driver, server, listening)
    listening.close()
    for raw in server.layer.raw_sockets:
        raw.abort()


async def connect_secure(net: Net, client: Side) -> tuple[SecureSocket, SecureSocket]:
    """Dial the server through ``client``'s layer; return both secure ends."""
    raw = await net.driver.connect(net.listening.url, client.layer)
    opened = (await client.events.next(DriverEvent.OPEN)).socket
    accepted = (await net.server.events.next(DriverEvent.CONNECTION)).socket
    assert isinstance(opened, SecureSocket) and isinstance(accepted, SecureSocket)
    assert opened.raw is raw
    return opened, accepted


async def test_peers_authenticate_and_exchange_packages(net: Net) -> None:
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    assert (opened.peer_id, accepted.peer_id) == (
        net.server.identity.peer_id,
        client.identity.peer_id,
    )
    opened.write(b"x" * 100_000)
    assert await net.server.events.wait_messages(accepted, 1) == [b"x" * 100_000]
    assert client.failures == net.server.failures == []


async def test_every_noise_message_of_a_package_is_life(net: Net) -> None:
    """Liveness looks at the raw socket: a large package arrives as several Noise
    messages, and each one, read before the package is whole, counts."""
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    assert accepted.last_seen == accepted.raw.last_seen
    accepted.last_seen = 0.0  # the raw socket keeps it
    assert accepted.last_seen == accepted.raw.last_seen
    messages = opened._transport.seal(b"x" * 200_000)
    assert len(messages) > 1
    raw_in = accepted.raw.stats.messages_in
    opened.raw.write(messages[0])
    assert opened.bytes_in_flight() == opened.raw.bytes_in_flight() >= len(messages[0])
    await wait_for(lambda: accepted.raw.stats.messages_in > raw_in)
    assert accepted.stats.messages_in == 0  # not whole yet, but heard
    assert accepted.last_seen == accepted.raw.last_seen
    for message in messages[1:]:
        opened.raw.write(message)
    assert await net.server.events.wait_messages(accepted, 1) == [b"x" * 200_000]


async def test_dialling_ourselves_is_a_self_dial_error(net: Net) -> None:
    ourselves = Side(net.server.identity)
    raw = await net.driver.connect(net.listening.url, ourselves.layer)
    await wait_for(lambda: bool(ourselves.failures))
    [(failed_raw, error)] = ourselves.failures
    assert failed_raw is raw
    assert type(error) is SelfDialError
    assert str(error) == "dialled ourselves"
    assert error.peer == net.listening.url
    await raw.wait_closed()
    assert (raw.close_code, raw.close_reason) == (1008, "dialled ourselves")
    assert DriverEvent.OPEN not in [record.event for record in ourselves.events.records]
    assert DriverEvent.CONNECTION not in [record.event for record in net.server.events.records]


async def test_plain_package_is_a_handshake_error_naming_the_peer(net: Net) -> None:
    plain = RecordingListener()
    raw = await net.driver.connect(net.listening.url, plain)
    raw.write(encode(build_package(PackageType.REQUEST, "echo", {})))
    await wait_for(lambda: bool(net.server.failures))
    [(failed_raw, error)] = net.server.failures
    assert type(error) is HandshakeError
    assert str(error) == PLAIN_PEER
    assert error.peer == failed_raw.peer
    assert failed_raw.peer.startswith(f"{net.driver.name}#")
    await raw.wait_closed()
    assert (raw.close_code, raw.close_reason) == (1008, PLAIN_PEER)


async def dial_plain_server(net: Net, answer: bytes) -> tuple[Side, Socket]:
    """Dial a listener without the secure layer, which answers message 1 with
    ``answer``; return the dialler and its raw socket once its handshake failed."""
    plain = RecordingListener()
    listening = await net.driver.listen("127.0.0.1", 0, plain)
    client = Side(Identity.generate())
    try:
        raw = await net.driver.connect(listening.url, client.layer)
        accepted = (await plain.next(DriverEvent.CONNECTION)).socket
        await plain.wait_messages(accepted, 1)  # the magic and message 1
        accepted.write(answer)
        await wait_for(lambda: bool(client.failures))
    finally:
        listening.close()
    return client, raw


async def test_plain_answer_to_message_1_is_a_handshake_error(net: Net) -> None:
    client, raw = await dial_plain_server(net, encode(build_package(PackageType.TALK, "x", {})))
    [(failed_raw, error)] = client.failures
    assert failed_raw is raw
    assert type(error) is HandshakeError
    assert str(error) == PLAIN_PEER
    assert error.peer == raw.peer
    await raw.wait_closed()
    assert (raw.close_code, raw.close_reason) == (1008, PLAIN_PEER)


async def test_invalid_message_2_that_is_no_package_says_so(net: Net) -> None:
    client, _ = await dial_plain_server(net, b"\xff" * 100)
    [(_, error)] = client.failures
    assert type(error) is HandshakeError
    assert str(error).startswith("handshake message 2 is invalid: ")


async def test_a_valid_message_2_is_not_decoded_as_a_package(
    net: Net, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a message 2 that fails is checked for a plain peer's package."""
    decoded: list[bytes] = []
    monkeypatch.setattr("trustp2p.security.channel.decode", decoded.append)
    await connect_secure(net, Side(Identity.generate()))
    assert decoded == []


async def test_text_frame_during_handshake_is_a_plain_peer(net: Net) -> None:
    # Found by a tester (t43 F2): the original trustp2p's first frame is an empty text
    # frame; "text frame during the secure handshake" said nothing of a plain peer, and
    # the dialler, not seeing a mode mismatch, warned at every redial.
    raw = await net.driver.connect(net.listening.url, RecordingListener())
    await wait_for(lambda: net.server.layer.handshaking == 1)
    [server_raw] = net.server.layer.raw_sockets
    net.server.layer.on_message(server_raw, "")  # the memory driver carries bytes only
    [(_, error)] = net.server.failures
    assert type(error) is HandshakeError
    assert str(error) == PLAIN_PEER
    assert is_mode_mismatch(str(error))
    assert error.peer == server_raw.peer
    await raw.wait_closed()


async def test_handshake_deadline_is_a_handshake_error(net: Net) -> None:
    listening = await net.driver.listen("127.0.0.1", 0, net.server.make_layer(20 * MS))
    try:
        raw = await net.driver.connect(listening.url, RecordingListener())  # says nothing
        await wait_for(lambda: bool(net.server.failures))
        [(failed_raw, error)] = net.server.failures
        assert type(error) is HandshakeError
        assert str(error) == f"handshake not complete within {20 * MS:g} s"
        assert error.peer == failed_raw.peer
        await raw.wait_closed()
        assert raw.close_code == 1008
    finally:
        listening.close()


async def test_close_during_handshake_is_a_handshake_error_of_no_offence(net: Net) -> None:
    raw = await net.driver.connect(net.listening.url, RecordingListener())
    await wait_for(lambda: net.server.layer.handshaking == 1)
    await raw.close(1000, "bye")
    await wait_for(lambda: bool(net.server.failures))
    [(failed_raw, error)] = net.server.failures
    assert type(error) is HandshakeClosed and isinstance(error, HandshakeError)
    assert not error.offence  # the peer sent nothing invalid
    assert str(error) == "connection closed during handshake (bye)"
    assert error.peer == failed_raw.peer


async def test_undecryptable_message_is_a_channel_error(net: Net) -> None:
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    opened.raw.write(b"not a Noise message of this channel")
    [error] = [(await net.server.events.next(DriverEvent.ERROR, accepted)).payload]
    assert type(error) is ChannelError
    assert str(error) == "transport message doesn't decrypt"
    assert error.peer == accepted.peer
    await opened.wait_closed()
    assert (opened.close_code, opened.close_reason) == (1008, "transport message doesn't decrypt")
    assert net.server.failures == []


async def test_text_frame_on_a_secure_connection_is_a_channel_error(net: Net) -> None:
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    net.server.layer.on_message(accepted.raw, "hello")  # the memory driver carries bytes only
    error = (await net.server.events.next(DriverEvent.ERROR, accepted)).payload
    assert type(error) is ChannelError
    assert str(error) == "text frame on a secure connection"
    assert error.peer == accepted.peer
    await opened.wait_closed()


async def test_bad_chunk_flag_is_a_channel_error(net: Net) -> None:
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    opened.raw.write(opened._transport.encrypt(b"\x07package"))
    error = (await net.server.events.next(DriverEvent.ERROR, accepted)).payload
    assert type(error) is ChannelError
    assert str(error) == "invalid chunk flag 7"
    assert error.peer == accepted.peer


async def test_exhausted_nonces_on_write_are_a_channel_error(net: Net) -> None:
    client = Side(Identity.generate())
    opened, _ = await connect_secure(net, client)
    opened._transport._send_nonce = 2**64 - 1
    with pytest.raises(ChannelError) as info:
        opened.write(b"one too many")
    assert str(info.value) == "nonces exhausted: 2**64 - 1 messages sent"
    assert info.value.peer == net.listening.url


class CountingIdentity(Identity):
    """An identity that counts its signatures."""

    signatures = 0

    def sign(self, data: bytes) -> bytes:
        self.signatures += 1
        return super().sign(data)


async def test_the_static_key_is_made_and_signed_once_per_layer(net: Net) -> None:
    """Per connection, a handshake draws an ephemeral key only: the node's Noise static
    key and the identity signature over it are made with the layer."""
    client = Side(CountingIdentity(Ed25519PrivateKey.generate()))
    assert isinstance(client.identity, CountingIdentity)
    assert client.identity.signatures == 1
    for _ in range(3):
        _, accepted = await connect_secure(net, client)
        assert accepted.peer_id == client.identity.peer_id
    assert client.identity.signatures == 1


def test_a_noise_key_of_another_identity_is_refused() -> None:
    with pytest.raises(UsageError, match="noise_key is signed by another identity"):
        SecureLayer(
            RecordingListener(),
            Identity.generate(),
            admit=lambda raw: None,
            failed=lambda raw, error: None,
            noise_key=NoiseKey(Identity.generate()),
        )


# Batches: what is written in one iteration of the loop goes out sealed together


async def test_packages_written_together_go_in_one_noise_message(net: Net) -> None:
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    assert opened._transport.batches  # both sides are of this version
    raw_in = accepted.raw.stats.messages_in
    packages = [bytes([i]) * (i + 1) for i in range(50)]
    for package in packages:
        opened.write(package)
    assert opened.write_buffer_size >= sum(map(len, packages))  # held until flushed
    assert await net.server.events.wait_messages(accepted, 50) == packages
    assert accepted.raw.stats.messages_in == raw_in + 1
    assert opened.stats.messages_out == accepted.stats.messages_in == 50


def at_second_message(events: RecordingListener, act: Callable[[Socket], None]) -> None:
    """Have the server's listener ``act`` on the socket as its second message arrives."""

    def hook(socket: Socket, data: bytes | str) -> None:
        if len(events.messages(socket)) == 2:
            act(socket)

    events.on_message_hook = hook


async def test_a_pause_within_a_batch_holds_the_rest_until_resumed(net: Net) -> None:
    """Reading paused by a handler (a full inbox) means no more packages, even those
    that arrived in the same batch: they wait, in order, for resume_reading()."""
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    events = net.server.events
    at_second_message(events, lambda socket: socket.pause_reading())
    packages = [b"%d" % i for i in range(6)]
    for package in packages:
        opened.write(package)
    assert await events.wait_messages(accepted, 2) == packages[:2]
    assert await stays(lambda: len(events.messages(accepted)) == 2, 50 * MS)
    opened.write(b"after")  # a later message waits behind the held ones
    assert await stays(lambda: len(events.messages(accepted)) == 2, 50 * MS)
    accepted.resume_reading()
    assert await events.wait_messages(accepted, 7) == [*packages, b"after"]


async def held_then_lost(net: Net) -> tuple[SecureSocket, list[bytes]]:
    """The server pauses at the second of six packages the client writes in one batch,
    then the client's raw connection ends (the memory driver: at once). Returns the
    server's secure socket, closed to writes, and the packages."""
    opened, accepted = await connect_secure(net, Side(Identity.generate()))
    at_second_message(net.server.events, lambda socket: socket.pause_reading())
    packages = [b"%d" % i for i in range(6)]
    for package in packages:
        opened.write(package)
    await net.server.events.wait_messages(accepted, 2)
    opened.raw.abort()
    await wait_for(lambda: accepted.closed)
    return accepted, packages


async def test_packages_held_from_a_batch_arrive_before_the_end_of_a_lost_connection(
    net: Net,
) -> None:
    """As the drivers do with what they read (EndAfterHeld): the end waits for them."""
    accepted, packages = await held_then_lost(net)
    events = net.server.events
    with pytest.raises(ConnectionClosed):
        accepted.write(b"no")
    assert await stays(lambda: DriverEvent.CLOSE not in events.events(accepted), 50 * MS)
    accepted.resume_reading()
    await events.next(DriverEvent.CLOSE, accepted)
    assert events.messages(accepted) == packages
    assert events.events(accepted)[-1] is DriverEvent.CLOSE


async def test_wait_closed_waits_for_the_end_the_held_packages_keep_back(net: Net) -> None:
    """A dialler awaits wait_closed() to redial: it must not return while the node still
    has the connection (it would spin)."""
    accepted, _ = await held_then_lost(net)
    waiting = asyncio.ensure_future(accepted.wait_closed())
    assert await stays(lambda: not waiting.done(), 50 * MS)
    accepted.resume_reading()
    await asyncio.wait_for(waiting, 2)
    assert net.server.events.events(accepted)[-1] is DriverEvent.CLOSE


@pytest.mark.parametrize("how", ["close_soon", "abort"])
async def test_letting_go_of_a_lost_connection_drops_the_packages_held_from_a_batch(
    net: Net, how: str
) -> None:
    accepted, packages = await held_then_lost(net)
    events = net.server.events
    getattr(accepted, how)()
    await events.next(DriverEvent.CLOSE, accepted)
    accepted.resume_reading()  # nothing more
    assert await stays(lambda: events.events(accepted)[-1] is DriverEvent.CLOSE, 50 * MS)
    assert events.messages(accepted) == packages[:2]


async def test_packages_held_from_a_batch_are_dropped_with_a_warning_if_never_resumed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    driver = MemoryDriver(hub=MemoryHub())
    server = Side(Identity.generate())
    server.layer = server.make_layer(close_timeout=50 * MS)  # (it was handshake_timeout)
    listening = await driver.listen("127.0.0.1", 0, server.layer)
    net = Net(driver, server, listening)
    accepted, packages = await held_then_lost(net)
    await server.events.next(DriverEvent.CLOSE, accepted)  # within the layer's close_timeout
    assert server.events.messages(accepted) == packages[:2]
    assert "dropped 4 package(s)" in caplog.text
    listening.close()


async def test_a_close_within_a_batch_drops_the_rest(net: Net) -> None:
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    events = net.server.events
    at_second_message(events, lambda socket: socket.close_soon())
    for i in range(6):
        opened.write(b"%d" % i)
    await events.next(DriverEvent.CLOSE, accepted)
    assert events.messages(accepted) == [b"0", b"1"]


async def test_close_soon_sends_what_was_written_first(net: Net) -> None:
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    for i in range(20):
        opened.write(b"%d" % i)
    opened.close_soon()
    assert await net.server.events.wait_messages(accepted, 20) == [b"%d" % i for i in range(20)]
    await net.server.events.next(DriverEvent.CLOSE, accepted)


async def test_abort_drops_what_was_not_sent(net: Net) -> None:
    client = Side(Identity.generate())
    opened, accepted = await connect_secure(net, client)
    opened.write(b"never sent")
    opened.abort()
    await net.server.events.next(DriverEvent.CLOSE, accepted)
    assert net.server.events.messages(accepted) == []
    assert opened.write_buffer_size == 0


async def test_write_after_close_raises_at_once(net: Net) -> None:
    client = Side(Identity.generate())
    opened, _ = await connect_secure(net, client)
    opened.close_soon()
    with pytest.raises(ConnectionClosed):
        opened.write(b"too late")


async def test_pipelined_packages_over_websocket_arrive_whole_and_in_order() -> None:
    """Over real loopback: bursts of packages of every size, batches and chunks mixed,
    written across many iterations of the loop."""
    driver = WsDriver(DriverOptions())
    server, client = Side(Identity.generate()), Side(Identity.generate())
    listening = await driver.listen("127.0.0.1", 0, server.layer)
    try:
        await driver.connect(listening.url, client.layer)
        opened = (await client.events.next(DriverEvent.OPEN)).socket
        accepted = (await server.events.next(DriverEvent.CONNECTION)).socket
        assert isinstance(opened, SecureSocket) and opened._transport.batches
        rng = random.Random(7)
        sizes = [rng.choice((1, 100, 5_000, 65_515, 70_000)) for _ in range(600)]
        packages = [i.to_bytes(4, "big") * (size // 4 + 1) for i, size in enumerate(sizes)]
        for start in range(0, len(packages), 40):
            for package in packages[start : start + 40]:
                opened.write(package)
            await opened.drain()
        received = await server.events.wait_messages(accepted, len(packages))
        assert received == packages
    finally:
        listening.close()
        for raw in server.layer.raw_sockets + client.layer.raw_sockets:
            raw.abort()


def burn(seconds: float) -> None:
    """Take the CPU for ``seconds``, as a handler's work on a package does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


TURN_BATCHES, TURN_PER_BATCH = 6, 800


async def send_batches(opened: SecureSocket) -> list[bytes]:
    """Write TURN_BATCHES batches of TURN_PER_BATCH packages, each its Noise message."""
    sent = [b"%07d" % i for i in range(TURN_BATCHES * TURN_PER_BATCH)]
    for start in range(0, len(sent), TURN_PER_BATCH):
        for package in sent[start : start + TURN_PER_BATCH]:
            opened.write(package)
        await asyncio.sleep(0)  # the batch goes out (one Noise message)
        await asyncio.sleep(0)
    return sent


SECURE_STREAM_DRIVERS = [WsDriver]
try:
    from trustp2p.drivers.ws_picows import PicowsDriver
except ImportError:  # pragma: no cover - picows not installed
    pass
else:
    SECURE_STREAM_DRIVERS.append(PicowsDriver)


@pytest.mark.parametrize("driver_class", SECURE_STREAM_DRIVERS)
async def test_a_burst_of_batches_then_a_close_is_all_delivered(driver_class: type) -> None:
    """Read turns (the raw driver's) with a close timer shorter than the burst takes to
    deliver: every package, then the close (review94 F1: a secure layer that paused the
    raw socket for its own turns had its raw frames dropped as the node's pause: 800 of
    4,800 delivered)."""
    driver = driver_class(DriverOptions(close_timeout=10 * MS))  # the server's
    client_driver = driver_class(DriverOptions())
    server, client = Side(Identity.generate()), Side(Identity.generate())
    server.layer = server.make_layer(close_timeout=10 * MS)
    listening = await driver.listen("127.0.0.1", 0, server.layer)
    try:
        await client_driver.connect(listening.url, client.layer)
        opened = (await client.events.next(DriverEvent.OPEN)).socket
        accepted = (await server.events.next(DriverEvent.CONNECTION)).socket
        assert isinstance(opened, SecureSocket) and isinstance(accepted, SecureSocket)
        server.events.on_message_hook = lambda socket, data: burn(0.05 * MS)
        accepted.raw.pause_reading()  # (a burst: read once it is all sent)
        sent = await send_batches(opened)
        opened.close_soon()
        await asyncio.sleep(0.05)
        accepted.raw.resume_reading()
        await server.events.next(DriverEvent.CLOSE, accepted, timeout=30.0)
        assert server.events.messages(accepted) == sent
    finally:
        listening.close()
        for raw in server.layer.raw_sockets + client.layer.raw_sockets:
            raw.abort()


async def test_a_burst_of_batches_then_an_abort_is_all_delivered(net: Net) -> None:
    """The same over the memory driver, the peer aborting (review94 F1: 1,600 of 4,800)."""
    opened, accepted = await connect_secure(net, Side(Identity.generate()))
    net.server.events.on_message_hook = lambda socket, data: burn(0.05 * MS)
    sent = await send_batches(opened)
    opened.raw.abort()
    await net.server.events.next(DriverEvent.CLOSE, accepted, timeout=30.0)
    assert net.server.events.messages(accepted) == sent
