"""The conformance suite and TCP-only checks for :class:`TcpDriver`, many with a raw peer."""

from __future__ import annotations

import asyncio
import itertools
import socket as socket_module
import ssl
import struct
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, strategies as st

from tests.conftest import MS
from tests.drivers.conformance import (
    QUIET,
    TIMEOUT,
    DriverConformance,
    DriverFactory,
    DriverHarness,
    RecordingListener,
)
from tests.pacing import Pace, paced
from tests.paths import congested_paths
from trustp2p.drivers import (
    FRAME_PROGRESS,
    CloseCode,
    DriverEvent,
    DriverOptions,
    Socket,
    driver_class,
)
from trustp2p.drivers.tcp import TcpDriver, TcpSocket
from trustp2p.exceptions import ConnectionDropped, DriverError


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it was free a moment ago)."""
    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def control(payload: bytes) -> bytes:
    return struct.pack(">I", 0x8000_0000 | len(payload)) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return control(b"\x01" + code.to_bytes(2, "big") + reason.encode())


class TestTcpConformance(DriverConformance):
    scheme = "tcp"

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        return TcpDriver

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"tcp://127.0.0.1:{_closed_port()}"

    @pytest.fixture(
        params=[
            "not a url",
            "http://127.0.0.1:1/",
            "ws://127.0.0.1:1",
            "tcp://",
            "tcp://:1",
            "tcp://127.0.0.1",
            "tcp://127.0.0.1:0",
            "tcp://127.0.0.1:99999",
            "tcp://127.0.0.1:port",
            "tcp://[::1",
            "tcp://127.0.0.1:1/#fragment",
            "tcp://127.0.0.1:1/?query",
            "tcp://user:secret@127.0.0.1:1",
        ]
    )
    def invalid_url(self, request: pytest.FixtureRequest) -> str:
        url: str = request.param
        return url


@pytest.fixture
async def harness() -> AsyncIterator[DriverHarness]:
    harness = DriverHarness(TcpDriver, "127.0.0.1")
    try:
        yield harness
    finally:
        await harness.aclose()


class RawPeer:
    """A plain asyncio stream connected to a TCP driver server, speaking bytes."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        server: Socket,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.server = server

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_frame(self) -> bytes:
        """Read one whole frame, header included."""
        async with asyncio.timeout(TIMEOUT):
            header = await self.reader.readexactly(4)
            length = struct.unpack(">I", header)[0] & 0x7FFF_FFFF
            return header + await self.reader.readexactly(length)

    async def read_to_eof(self) -> bytes:
        async with asyncio.timeout(TIMEOUT):
            return await self.reader.read()

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


@pytest.fixture
async def raw_peers(harness: DriverHarness) -> AsyncIterator[list[RawPeer]]:
    """Raw peers opened by :func:`connect_raw`; closed at teardown."""
    peers: list[RawPeer] = []
    try:
        yield peers
    finally:
        for peer in peers:
            await peer.aclose()


async def connect_raw(url: str, events: RecordingListener, peers: list[RawPeer]) -> RawPeer:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        record = await events.next(DriverEvent.CONNECTION)
    except BaseException:
        writer.close()
        raise
    assert record.socket is not None
    peer = RawPeer(reader, writer, record.socket)
    peers.append(peer)
    return peer


async def serve_raw(
    harness: DriverHarness, peers: list[RawPeer], options: DriverOptions | None = None
) -> tuple[RawPeer, RecordingListener]:
    listening, events = await harness.listen(options)
    return await connect_raw(listening.url, events, peers), events


# Registration, URLs, options


def test_driver_class() -> None:
    assert driver_class("tcp") is TcpDriver


async def test_listening_url(harness: DriverHarness) -> None:
    listening, _ = await harness.listen()
    port = listening.url.rsplit(":", 1)[1]
    assert listening.url == f"tcp://127.0.0.1:{port}"


async def test_url_path_is_ignored(harness: DriverHarness) -> None:
    listening, _ = await harness.listen()
    client, _ = await harness.connect(f"{listening.url}/p2p/some-peer-id")
    assert client.peer == f"{listening.url}/p2p/some-peer-id"


async def test_inbound_peer_and_host(harness: DriverHarness) -> None:
    pair = await harness.pair()
    assert isinstance(pair.client, TcpSocket)
    assert pair.client._transport is not None
    local_port = pair.client._transport.get_extra_info("sockname")[1]
    assert pair.server.peer == f"127.0.0.1:{local_port}"
    assert pair.server.host == "127.0.0.1"


async def test_invalid_url_message(harness: DriverHarness) -> None:
    with pytest.raises(DriverError) as exc_info:
        await harness.connect("ws://127.0.0.1:1")
    assert str(exc_info.value) == "invalid TCP URL 'ws://127.0.0.1:1': scheme isn't tcp"
    with pytest.raises(DriverError) as exc_info:
        await harness.connect("tcp://127.0.0.1:99999")
    assert (
        str(exc_info.value) == "invalid TCP URL 'tcp://127.0.0.1:99999': Port out of range 0-65535"
    )
    assert isinstance(exc_info.value.__cause__, ValueError)


async def test_connect_refused_message(harness: DriverHarness) -> None:
    url = f"tcp://127.0.0.1:{_closed_port()}"
    with pytest.raises(DriverError) as exc_info:
        await harness.connect(url)
    assert str(exc_info.value) == f"can't connect to {url}: Connection refused"
    assert isinstance(exc_info.value.__cause__, OSError)


async def test_connect_times_out(harness: DriverHarness) -> None:
    # A listening socket nobody accepts from, with a backlog of 0: once the kernel's
    # queue is full, it ignores further SYNs and the dial hangs.
    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(0)
        url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        options = DriverOptions(open_timeout=50 * MS)
        errors: list[DriverError] = []
        for _ in range(8):
            events = harness.recorder()
            try:
                await harness.connect(url, options, events)
            except DriverError as exc:
                errors.append(exc)
                break
        assert [str(exc) for exc in errors] == [
            f"can't connect to {url}: timed out after {50 * MS:g} s"
        ]
        assert events.records == []


@pytest.mark.parametrize("size", [2**31, 2**32])
def test_max_message_size_must_fit_a_frame(size: int) -> None:
    with pytest.raises(ValueError, match="exceeds the TCP frame limit of 2147483647 bytes"):
        TcpDriver(DriverOptions(max_message_size=size))


def test_max_message_size_largest() -> None:
    assert TcpDriver(DriverOptions(max_message_size=2**31 - 1)).scheme == "tcp"


async def test_close_soon_rejects_invalid_arguments(harness: DriverHarness) -> None:
    pair = await harness.pair()
    with pytest.raises(ValueError, match=r"^invalid close code 1006$"):
        pair.client.close_soon(CloseCode.ABNORMAL_CLOSURE)
    with pytest.raises(ValueError, match=r"^close reason of 124 bytes exceeds limit of 123 bytes$"):
        pair.client.close_soon(CloseCode.NORMAL_CLOSURE, "é" * 62)
    assert not pair.client.closed
    pair.client.close_soon(CloseCode.NORMAL_CLOSURE, "é" * 61 + "x")  # 123 bytes
    async with asyncio.timeout(TIMEOUT):
        await pair.server.wait_closed()
    assert pair.server.close_reason == "é" * 61 + "x"


# Wire format


async def test_wire_format(harness: DriverHarness, raw_peers: list[RawPeer]) -> None:
    raw, events = await serve_raw(harness, raw_peers)
    raw.server.write(b"hi")
    raw.server.write(b"")
    assert await raw.read_frame() == b"\x00\x00\x00\x02hi"
    assert await raw.read_frame() == b"\x00\x00\x00\x00"
    await raw.send(b"\x00\x00\x00\x05hello" + b"\x00\x00\x00\x00")
    assert await events.wait_messages(raw.server, 2) == [b"hello", b""]

    raw.server.close_soon(CloseCode.NORMAL_CLOSURE, "bye")
    assert await raw.read_frame() == bytes.fromhex("80 00 00 06 01 03 e8 62 79 65")
    await raw.send(close_frame(CloseCode.NORMAL_CLOSURE, "bye"))
    assert await raw.read_to_eof() == b""  # the server half-closed after the close frame
    await raw.aclose()
    async with asyncio.timeout(TIMEOUT):
        await raw.server.wait_closed()
    assert (raw.server.close_code, raw.server.close_reason) == (1000, "bye")
    assert events.events(raw.server) == [
        DriverEvent.CONNECTION,
        DriverEvent.MESSAGE,
        DriverEvent.MESSAGE,
        DriverEvent.CLOSE,
    ]


async def test_peer_closes_first(harness: DriverHarness, raw_peers: list[RawPeer]) -> None:
    raw, events = await serve_raw(harness, raw_peers)
    await raw.send(frame(b"last") + close_frame(CloseCode.GOING_AWAY, "going away"))
    # The answer repeats the code and reason, then the server half-closes.
    assert await raw.read_frame() == close_frame(CloseCode.GOING_AWAY, "going away")
    assert await raw.read_to_eof() == b""
    assert raw.server.closed
    await raw.aclose()
    async with asyncio.timeout(TIMEOUT):
        await raw.server.wait_closed()
    assert (raw.server.close_code, raw.server.close_reason) == (1001, "going away")
    assert events.messages(raw.server) == [b"last"]
    assert events.errors(raw.server) == []


async def test_garbage_after_close_is_ignored(
    harness: DriverHarness, raw_peers: list[RawPeer]
) -> None:
    raw, events = await serve_raw(harness, raw_peers)
    garbage = b"\xff\xff\xff\xff" + frame(b"not delivered") + b"\x00" * 1000
    await raw.send(close_frame(CloseCode.NORMAL_CLOSURE, "done") + garbage)
    assert await raw.read_frame() == close_frame(CloseCode.NORMAL_CLOSURE, "done")
    assert await raw.read_to_eof() == b""
    await raw.aclose()
    async with asyncio.timeout(TIMEOUT):
        await raw.server.wait_closed()
    assert (raw.server.close_code, raw.server.close_reason) == (1000, "done")
    assert events.events(raw.server) == [DriverEvent.CONNECTION, DriverEvent.CLOSE]


@pytest.mark.parametrize(
    ("before", "error"),
    [
        (b"", "connection closed without a close frame"),
        (frame(b"whole"), "connection closed without a close frame"),
        (b"\x00\x00", "connection closed without a close frame: 2 of 4 header bytes received"),
        (
            b"\x00\x00\x00\x09half",
            "connection closed without a close frame: 4 of 9 payload bytes received",
        ),
        (  # a truncated control frame
            b"\x80\x00\x00\x06\x01\x03",
            "connection closed without a close frame: 2 of 6 payload bytes received",
        ),
    ],
)
async def test_peer_drops_without_close(
    harness: DriverHarness, raw_peers: list[RawPeer], before: bytes, error: str
) -> None:
    raw, events = await serve_raw(harness, raw_peers)
    await raw.send(before)
    await raw.aclose()
    async with asyncio.timeout(TIMEOUT):
        await raw.server.wait_closed()
    assert raw.server.close_code == CloseCode.ABNORMAL_CLOSURE
    assert [str(exc) for exc in events.errors(raw.server)] == [error]
    assert isinstance(events.errors(raw.server)[0], ConnectionDropped)
    assert events.events(raw.server)[-2:] == [DriverEvent.ERROR, DriverEvent.CLOSE]
    assert events.messages(raw.server) == ([b"whole"] if before == frame(b"whole") else [])


async def test_close_times_out_when_raw_peer_is_silent(
    harness: DriverHarness, raw_peers: list[RawPeer]
) -> None:
    raw, events = await serve_raw(harness, raw_peers, DriverOptions(close_timeout=50 * MS))
    raw.server.close_soon(CloseCode.GOING_AWAY, "bye")
    assert await raw.read_frame() == close_frame(CloseCode.GOING_AWAY, "bye")
    # No answer, no FIN: the server drops the connection after close_timeout.
    async with asyncio.timeout(TIMEOUT):
        await raw.server.wait_closed()
    assert raw.server.close_code == CloseCode.ABNORMAL_CLOSURE
    assert events.events(raw.server) == [DriverEvent.CONNECTION, DriverEvent.CLOSE]
    assert await raw.read_to_eof() == b""


# Bad input: each fails the connection with an error and a close code


async def _expect_failure(
    raw: RawPeer, events: RecordingListener, code: int, reason: str, error: str
) -> None:
    """The server reports ``error``, sends a close frame, half-closes, then closes."""
    assert await raw.read_frame() == close_frame(code, reason)
    # The error was reported before the close frame went out.
    assert [str(exc) for exc in events.errors(raw.server)] == [error]
    assert isinstance(events.errors(raw.server)[0], DriverError)
    assert raw.server.closed
    assert await raw.read_to_eof() == b""
    await raw.aclose()
    async with asyncio.timeout(TIMEOUT):
        await raw.server.wait_closed()
    assert (raw.server.close_code, raw.server.close_reason) == (code, reason)
    assert events.events(raw.server)[-2:] == [DriverEvent.ERROR, DriverEvent.CLOSE]
    assert events.events(raw.server).count(DriverEvent.ERROR) == 1


def _traced_peak() -> int:
    return tracemalloc.get_traced_memory()[1]


@pytest.mark.parametrize(
    ("header", "code", "reason", "error"),
    [
        (
            b"\x7f\xff\xff\xff",
            CloseCode.MESSAGE_TOO_BIG,
            "message too big",
            "message too big: 2147483647 bytes exceeds limit of 1048576 bytes",
        ),
        (
            b"\x80\x00\x00\x00",
            CloseCode.PROTOCOL_ERROR,
            "protocol error",
            "empty control frame",
        ),
        (
            b"\xff\xff\xff\xff",
            CloseCode.PROTOCOL_ERROR,
            "protocol error",
            "control frame of 2147483647 bytes exceeds limit of 126 bytes",
        ),
        (  # a ws:// client's upgrade request: it was "message too big" (a tester's find)
            b"GET ",
            CloseCode.PROTOCOL_ERROR,
            "protocol error",
            "HTTP, not a tcp:// frame: does the peer dial ws://?",
        ),
    ],
)
async def test_huge_length_prefix_refused_without_allocating(
    harness: DriverHarness,
    raw_peers: list[RawPeer],
    header: bytes,
    code: int,
    reason: str,
    error: str,
) -> None:
    raw, events = await serve_raw(harness, raw_peers)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        # Sent in two reads, to go through the partial-header path too.
        await raw.send(header[:1])
        await asyncio.sleep(QUIET)
        await raw.send(header[1:] + b"x" * 1000)
        await events.next(DriverEvent.ERROR, raw.server)
        peak = _traced_peak()
    finally:
        if started:
            tracemalloc.stop()
    assert peak < 2**20
    await _expect_failure(raw, events, code, reason, error)


async def test_huge_frame_without_limit_is_not_preallocated(
    harness: DriverHarness, raw_peers: list[RawPeer]
) -> None:
    # With no message size limit, 2 GiB - 1 is a valid length: memory grows only with
    # what actually arrives, and the stalled frame is dropped at its deadline.
    options = DriverOptions(max_message_size=None, frame_timeout=50 * MS)
    raw, events = await serve_raw(harness, raw_peers, options)
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        await raw.send(b"\x7f\xff\xff\xff" + b"x" * 1000)
        await events.next(DriverEvent.ERROR, raw.server)
        peak = _traced_peak()
    finally:
        if started:
            tracemalloc.stop()
    assert peak < 2**20
    await _expect_failure(
        raw,
        events,
        CloseCode.POLICY_VIOLATION,
        "frame stalled",
        "frame stalled: 1000 of 2147483647 payload bytes received,"
        f" under {FRAME_PROGRESS} more in {50 * MS:g} s",
    )


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (control(b"\x07"), "unknown control frame type 7"),
        (control(b"\x00abc"), "unknown control frame type 0"),
        (control(b"\x01"), "close frame of 1 bytes lacks a close code"),  # truncated
        (control(b"\x01\x03"), "close frame of 2 bytes lacks a close code"),
        (close_frame(999), "invalid close code 999"),
        (close_frame(1006), "invalid close code 1006"),
        (close_frame(5000), "invalid close code 5000"),
        (control(b"\x01\x03\xe8\xff\xfe"), "close reason isn't valid UTF-8"),
        (control(b"\x01" + b"x" * 126), "control frame of 127 bytes exceeds limit of 126 bytes"),
    ],
)
async def test_bad_control_frame(
    harness: DriverHarness, raw_peers: list[RawPeer], data: bytes, error: str
) -> None:
    raw, events = await serve_raw(harness, raw_peers)
    await raw.send(frame(b"before") + data + frame(b"after"))
    await _expect_failure(raw, events, CloseCode.PROTOCOL_ERROR, "protocol error", error)
    assert events.messages(raw.server) == [b"before"]


@pytest.mark.parametrize(
    ("sent", "error"),
    [
        (b"\x00\x00", "frame stalled: 2 of 4 header bytes received, under {more}"),
        (b"\x00\x00\x00\x0afive!", "frame stalled: 5 of 10 payload bytes received, under {more}"),
    ],
)
async def test_stalled_frame_closed_at_deadline(
    harness: DriverHarness, raw_peers: list[RawPeer], sent: bytes, error: str
) -> None:
    timeout = 50 * MS
    listening, events = await harness.listen(DriverOptions(frame_timeout=timeout))
    idle = await connect_raw(listening.url, events, raw_peers)
    stalled = await connect_raw(listening.url, events, raw_peers)
    await stalled.send(sent)
    await _expect_failure(
        stalled,
        events,
        CloseCode.POLICY_VIOLATION,
        "frame stalled",
        error.format(more=f"{FRAME_PROGRESS} more in {timeout:g} s"),
    )
    # The idle connection has been idle for longer than frame_timeout and still works.
    assert not idle.server.closed
    await idle.send(frame(b"still here"))
    assert await events.wait_messages(idle.server, 1) == [b"still here"]
    idle.server.write(b"yes")
    assert await idle.read_frame() == frame(b"yes")
    assert events.errors(idle.server) == []


@pytest.mark.parametrize("window_closed", [False, True], ids=["congested", "zero-window"])
async def test_a_stalled_frame_waits_only_on_a_congested_path(
    harness: DriverHarness,
    raw_peers: list[RawPeer],
    monkeypatch: pytest.MonkeyPatch,
    window_closed: bool,
) -> None:
    # t45 F1: the verdict on a frame waits while TCP shows the path congested (segments
    # resent, the peer's window open), CONGESTION_GRACE deadlines at most; a peer whose
    # window is closed reads nothing, and is cut at the deadline as before.
    asked = congested_paths(monkeypatch, window_closed=window_closed)
    timeout = 50 * MS
    listening, events = await harness.listen(DriverOptions(frame_timeout=timeout))
    stalled = await connect_raw(listening.url, events, raw_peers)
    await stalled.send(b"\x00\x00\x00\x0afive!")
    async with asyncio.timeout(TIMEOUT):
        await events.next(DriverEvent.ERROR, stalled.server)
    assert len(asked) == 1 if window_closed else len(asked) > 1
    more = f"{FRAME_PROGRESS} more in {timeout:g} s"
    error = f"frame stalled: 5 of 10 payload bytes received, under {more}"
    await _expect_failure(stalled, events, CloseCode.POLICY_VIOLATION, "frame stalled", error)


async def test_deadline_is_per_frame(harness: DriverHarness, raw_peers: list[RawPeer]) -> None:
    # Two frames, each completed within the deadline, together take longer than it.
    # The sleeps are the test: real time passing against the frame deadline.
    timeout = 250 * MS

    async def scenario(pace: Pace) -> None:
        raw, events = await serve_raw(harness, raw_peers, DriverOptions(frame_timeout=timeout))
        await raw.send(b"\x00\x00\x00\x02a")
        await pace.sleep(0.6 * timeout)
        await raw.send(b"b\x00\x00")
        await pace.sleep(0.6 * timeout)
        await raw.send(b"\x00\x02cd")
        assert await events.wait_messages(raw.server, 2) == [b"ab", b"cd"]
        await asyncio.sleep(1.2 * timeout)  # idle between frames: no deadline runs
        assert not raw.server.closed
        assert events.errors(raw.server) == []

    await paced(scenario, limit=0.9 * timeout)


async def test_a_frame_that_keeps_coming_is_not_stalled(
    harness: DriverHarness, raw_peers: list[RawPeer]
) -> None:
    # A frame on a slow link: it takes four deadlines to arrive, but each brings
    # FRAME_PROGRESS bytes. (A deadline for the whole frame cut a 256 KiB package on any
    # link under 210 kbit/s.) The sleeps are the test: real time against the deadline.
    timeout = 250 * MS
    size = 4 * FRAME_PROGRESS + 10

    async def scenario(pace: Pace) -> tuple[RawPeer, RecordingListener]:
        raw, events = await serve_raw(harness, raw_peers, DriverOptions(frame_timeout=timeout))
        await raw.send(struct.pack(">I", size))
        for chunk in range(4):
            await raw.send(bytes([chunk]) * FRAME_PROGRESS)
            await pace.sleep(0.6 * timeout)
        await raw.send(b"0123456789")
        [message] = await events.wait_messages(raw.server, 1)
        assert len(message) == size and message.endswith(b"\x03" + b"0123456789")
        assert events.errors(raw.server) == []
        return raw, events

    raw, events = await paced(scenario, limit=0.9 * timeout)
    # Then a frame that stops coming is cut at its deadline, as ever.
    await raw.send(struct.pack(">I", 100) + b"x" * 10)
    await _expect_failure(
        raw,
        events,
        CloseCode.POLICY_VIOLATION,
        "frame stalled",
        f"frame stalled: 10 of 100 payload bytes received, under {FRAME_PROGRESS} more"
        f" in {timeout:g} s",
    )


async def test_a_frame_earns_time_in_proportion_to_its_bytes(
    harness: DriverHarness, raw_peers: list[RawPeer]
) -> None:
    # A bursty slow link (found in review): bursts of 3/4 FRAME_PROGRESS every 0.7
    # deadline. Each burst earns 0.75 of a deadline: the frame keeps its pace and
    # arrives; counted only in whole FRAME_PROGRESS steps, it was cut at the first
    # deadline. The sleeps are the test: real time against the deadline (600 ms: with
    # 250, a sleep late by 75 ms on a loaded machine cut the frame, twice in a day).
    timeout = 600 * MS
    raw, events = await serve_raw(harness, raw_peers, DriverOptions(frame_timeout=timeout))
    burst = 3 * FRAME_PROGRESS // 4
    clock = asyncio.get_running_loop().time
    await raw.send(struct.pack(">I", 6 * burst) + b"a" * burst)
    sent = [clock()]
    for _ in range(5):
        await asyncio.sleep(0.7 * timeout)
        await raw.send(b"b" * burst)
        sent.append(clock())
    if max(b - a for a, b in itertools.pairwise(sent)) > 0.95 * timeout:
        pytest.skip("the machine was too busy to keep the bursts' pace")  # (CI148, load 5)
    [message] = await events.wait_messages(raw.server, 1)
    assert len(message) == 6 * burst
    assert events.errors(raw.server) == []


async def test_pause_reading_suspends_the_deadline(
    harness: DriverHarness, raw_peers: list[RawPeer]
) -> None:
    timeout = 100 * MS
    raw, events = await serve_raw(harness, raw_peers, DriverOptions(frame_timeout=timeout))
    await raw.send(b"\x00\x00\x00\x04ab")
    await asyncio.sleep(QUIET)  # the server reads the first half
    raw.server.pause_reading()
    await asyncio.sleep(1.5 * timeout)  # real time: past the deadline, while paused
    await raw.send(b"cd")
    assert not raw.server.closed
    raw.server.resume_reading()
    assert await events.wait_messages(raw.server, 1) == [b"abcd"]
    assert events.errors(raw.server) == []


async def test_message_too_big_after_messages_in_one_read(
    harness: DriverHarness, raw_peers: list[RawPeer]
) -> None:
    raw, events = await serve_raw(harness, raw_peers, DriverOptions(max_message_size=4))
    await raw.send(frame(b"1234") + frame(b"12345") + frame(b"never"))
    await _expect_failure(
        raw,
        events,
        CloseCode.MESSAGE_TOO_BIG,
        "message too big",
        "message too big: 5 bytes exceeds limit of 4 bytes",
    )
    assert events.messages(raw.server) == [b"1234"]


# The parser, fed directly: any split of the stream gives the same messages


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.eof = False
        self.reading = True
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("192.0.2.1", 1107) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def write_eof(self) -> None:
        self.eof = True

    def can_write_eof(self) -> bool:
        return True

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True


def feed(socket: TcpSocket, data: bytes, cuts: list[int]) -> None:
    """Hand ``data`` to the socket in reads that end at ``cuts``."""
    start = 0
    for end in [*sorted({min(cut, len(data)) for cut in cuts}), len(data)]:
        if end <= start:
            continue
        buffer = socket.get_buffer(-1)
        size = min(end, start + len(buffer)) - start
        buffer[:size] = data[start : start + size]
        socket.buffer_updated(size)
        start += size


async def _parse_with_cuts(
    messages: list[bytes], cuts: list[int], options: DriverOptions
) -> tuple[RecordingListener, TcpSocket]:
    events = RecordingListener()
    socket = TcpSocket(listener=events, options=options, inbound=True)
    transport = FakeTransport()
    socket.connection_made(transport)
    feed(socket, b"".join(map(frame, messages)), cuts)
    socket.connection_lost(None)  # cancels the frame timer
    return events, socket


@given(
    messages=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=2500), max_size=12),
)
def test_any_split_gives_the_same_messages(messages: list[bytes], cuts: list[int]) -> None:
    events, socket = asyncio.run(_parse_with_cuts(messages, cuts, DriverOptions()))
    assert events.messages(socket) == messages
    assert events.errors(socket) == []


@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_garbage_gives_messages_or_driver_error(data: bytes, cuts: list[int]) -> None:
    async def run() -> None:
        events = RecordingListener()
        socket = TcpSocket(
            listener=events, options=DriverOptions(max_message_size=64), inbound=True
        )
        transport = FakeTransport()
        socket.connection_made(transport)
        feed(socket, data, cuts)
        errors = events.errors(socket)
        assert len(errors) <= 1
        assert all(isinstance(exc, DriverError) for exc in errors)
        assert all(isinstance(message, bytes) for message in events.messages(socket))
        if errors or socket.closed:
            assert transport.eof  # it answered or failed, then half-closed
        socket.connection_lost(None)
        assert events.events(socket)[-1] is DriverEvent.CLOSE

    asyncio.run(run())


# Closing in unusual moments


async def test_close_from_on_message_drops_the_rest(harness: DriverHarness) -> None:
    pair = await harness.pair()

    def close(socket: Socket, data: bytes | str) -> None:
        socket.close_soon(CloseCode.GOING_AWAY, "enough")

    pair.server_events.on_message_hook = close
    for message in (b"one", b"two", b"three"):
        pair.client.write(message)
    async with asyncio.timeout(TIMEOUT):
        await pair.client.wait_closed()
        await pair.server.wait_closed()
    assert pair.server_events.messages(pair.server) == [b"one"]
    for socket in (pair.client, pair.server):
        assert (socket.close_code, socket.close_reason) == (1001, "enough")
    assert pair.server_events.errors(pair.server) == []
    assert pair.client_events.errors(pair.client) == []


async def test_both_sides_close_at_once(harness: DriverHarness) -> None:
    pair = await harness.pair(DriverOptions(close_timeout=TIMEOUT))
    pair.client.close_soon(CloseCode.NORMAL_CLOSURE, "from client")
    pair.server.close_soon(CloseCode.GOING_AWAY, "from server")
    async with asyncio.timeout(TIMEOUT / 2):  # well before the close timeout
        await pair.client.wait_closed()
        await pair.server.wait_closed()
    # Each side keeps the close it received, as in WebSocket.
    assert (pair.client.close_code, pair.client.close_reason) == (1001, "from server")
    assert (pair.server.close_code, pair.server.close_reason) == (1000, "from client")
    assert pair.client_events.events(pair.client) == [DriverEvent.OPEN, DriverEvent.CLOSE]
    assert pair.server_events.events(pair.server) == [DriverEvent.CONNECTION, DriverEvent.CLOSE]


async def test_close_while_paused_reads_the_answer(harness: DriverHarness) -> None:
    pair = await harness.pair(DriverOptions(close_timeout=TIMEOUT))

    def pause(socket: Socket, data: bytes | str) -> None:
        socket.pause_reading()

    pair.server_events.on_message_hook = pause
    for message in (b"one", b"two"):
        pair.client.write(message)
    await pair.server_events.wait_messages(pair.server, 1)
    await asyncio.sleep(QUIET)
    # Paused with b"two" held: closing still completes promptly, and drops b"two".
    pair.server.close_soon(CloseCode.GOING_AWAY, "bye")
    async with asyncio.timeout(TIMEOUT / 2):  # well before the close timeout
        await pair.server.wait_closed()
        await pair.client.wait_closed()
    assert pair.server_events.messages(pair.server) == [b"one"]
    assert (pair.server.close_code, pair.client.close_code) == (1001, 1001)


# Liveness


async def test_last_seen_advances_on_a_partial_frame(
    harness: DriverHarness, raw_peers: list[RawPeer]
) -> None:
    """Any bytes are life: a large frame in flight keeps its sender alive (liveness)."""
    raw, events = await serve_raw(harness, raw_peers)
    before = raw.server.last_seen
    await asyncio.sleep(MS)  # let the event loop clock move on
    await raw.send(frame(b"x" * 1000)[:500])
    await wait_last_seen(raw.server, before)
    assert events.messages(raw.server) == []
    middle = raw.server.last_seen
    await asyncio.sleep(MS)
    await raw.send(frame(b"x" * 1000)[500:])
    assert await events.wait_messages(raw.server, 1) == [b"x" * 1000]
    assert raw.server.last_seen > middle


async def wait_last_seen(socket: Socket, before: float) -> None:
    async with asyncio.timeout(TIMEOUT):
        while socket.last_seen <= before:  # noqa: ASYNC110 - a plain attribute
            await asyncio.sleep(MS)


def test_os_error_reasons_are_the_systems_words_but_openssls_are_its_own() -> None:
    import errno
    import ssl

    from trustp2p.drivers._stream import os_error_reason

    refused = OSError(errno.ECONNREFUSED, "Connect call failed ('127.0.0.1', 1)")
    assert os_error_reason(refused) == "Connection refused"
    tls = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)")
    assert os_error_reason(tls) == "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)"
    resolver = OSError(-2, "Name or service not known")
    assert os_error_reason(resolver) == "Name or service not known"
    # No words at all (asyncio's TLS handshake, reset): named by its class.
    assert os_error_reason(ConnectionResetError()) == "connection reset"
    assert os_error_reason(OSError()) == "os"


@pytest.mark.parametrize(
    ("exc", "dropped", "message"),
    [
        (None, True, "connection closed without a close frame"),
        (EOFError(), True, "connection closed without a close frame"),
        (ConnectionResetError(104, "x"), True, "...frame: Connection reset by peer"),
        (BrokenPipeError(32, "x"), True, "...frame: Broken pipe"),
        (  # a peer that vanished without TLS's close_notify: dropped
            ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)"),
            True,
            "...frame: EOF occurred in violation of protocol (_ssl.c:2427)",
        ),
        (  # a record that fails its check: the bytes are wrong, the peer didn't vanish
            ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad (_ssl.c:2580)"),
            False,
            "TLS error: [SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad (_ssl.c:2580)",
        ),
        (ValueError("bad frame"), False, "ValueError: bad frame"),
    ],
)
def test_lost_errors_say_whether_the_peer_vanished(
    exc: BaseException | None, dropped: bool, message: str
) -> None:
    from trustp2p.drivers._stream import lost_error

    error = lost_error(exc)
    assert isinstance(error, ConnectionDropped) is dropped and isinstance(error, DriverError)
    expected = message.replace("...frame", "connection closed without a close frame")
    assert (str(error), error.__cause__) == (expected, exc)


@pytest.mark.parametrize("answer", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"<!DOCTYPE html>"])
async def test_a_dial_that_meets_http_says_so(harness: DriverHarness, answer: bytes) -> None:
    """Found by a new user: ``tcp://`` to an HTTP or WebSocket listener said "message
    too big: 1008813135 bytes" (the bytes of "<!DO"), at each redial."""

    async def web(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(answer)
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(web, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        socket, events = await harness.connect(f"tcp://127.0.0.1:{port}")
        await events.next(DriverEvent.ERROR, socket)
        [error] = [str(exc) for exc in events.errors(socket)]
        assert error == "HTTP, not a tcp:// frame: does it listen on ws://?"
    finally:
        server.close()


async def test_a_dial_closed_with_no_reply_asks_whether_it_is_ws(harness: DriverHarness) -> None:
    """Found by a new user: a secure ``tcp://`` dial of a ``ws://`` listener (which
    drops what a dialler sends first, answering nothing) said only "connection closed
    during handshake (code 1006)", at every redial."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # what the dialler sent first
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        socket, events = await harness.connect(f"tcp://127.0.0.1:{port}")
        socket.write(b"hello")
        await events.next(DriverEvent.CLOSE, socket)
        assert socket.close_code == 1006
        assert socket.close_reason == "closed with no reply: does it listen on ws://?"
    finally:
        server.close()
