"""The accept loop of the stream drivers when accept() fails: one warning, a back-off,
connections served meanwhile, accepting again once it works."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest

from tests.drivers.conformance import TIMEOUT
from tests.nodes import wait_for
from trustp2p.drivers._accept import StreamServer, bind


class Exhausted(socket.socket):
    """A listening socket whose accept() fails with EMFILE while ``failing``."""

    failing = True
    failures = 0

    def accept(self) -> tuple[socket.socket, object]:
        if self.failing:
            self.failures += 1
            raise OSError(errno.EMFILE, "Too many open files")
        return super().accept()


class Protocol(asyncio.Protocol):
    made: list[Protocol] = []  # noqa: RUF012 - shared by the test on purpose

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(self)


def listening_socket() -> Exhausted:
    sock = Exhausted(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    return sock


async def test_out_of_file_descriptors_pauses_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trustp2p.drivers")
    Protocol.made = []
    sock = listening_socket()
    server = StreamServer(Protocol, [sock], retry_max=0.2)
    server.start()
    port = sock.getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # The accept loop retries with back-off (50, 100, 200, 200 ms...), not in a loop.
        await wait_for(lambda: sock.failures >= 4, timeout=TIMEOUT)
        # asyncio's loop tried up to 100 times per round, each scheduling a retry.
        assert sock.failures < 10
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage() for r in warnings] == [
            "! can't accept connections, out of file descriptors (Too many open files): "
            "paused, trying again every 0.2 s at most"
        ]
        assert Protocol.made == []
        sock.failing = False  # a descriptor was freed
        await wait_for(lambda: len(Protocol.made) == 1, timeout=TIMEOUT)
        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1 and infos[0].startswith("= accepting connections again after ")
        assert server.accepting
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert not server.accepting
    assert sock.fileno() == -1  # closed


async def test_bind_gives_every_address_the_same_free_port() -> None:
    sockets = await bind("localhost", 0)
    try:
        ports = {sock.getsockname()[1] for sock in sockets}
        assert len(ports) == 1 and ports != {0}
    finally:
        for sock in sockets:
            sock.close()


async def test_bind_failure_leaves_nothing_open() -> None:
    sockets = await bind("127.0.0.1", 0)
    try:
        with pytest.raises(OSError, match="ddress already in use"):
            await bind("127.0.0.1", sockets[0].getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()
