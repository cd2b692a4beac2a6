"""The kernel's view of a TCP connection (Linux ``TCP_INFO``), for the stall rules."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator

import pytest

from trustp2p.drivers._tcp_info import read_path_view

from .conformance import TIMEOUT

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="TCP_INFO is Linux's")


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            yield client, accepted


def test_an_idle_connection_has_an_open_window_and_nothing_resent(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = tcp_pair
    client.sendall(b"x" * 1000)
    assert accepted.recv(1000)
    for sock in tcp_pair:
        view = read_path_view(sock)
        assert view is not None
        assert not view.window_closed and not view.resending and view.heard < TIMEOUT


def test_a_peer_that_reads_nothing_shows_a_closed_window(
    tcp_pair: tuple[socket.socket, socket.socket],
) -> None:
    # The rules cut such a peer within their own timeout: no grace for congestion.
    client, _accepted = tcp_pair
    client.setblocking(False)
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            while client.send(b"y" * 65536):
                pass
        except BlockingIOError:
            pass
        view = read_path_view(client)
        assert view is not None
        if view.window_closed:
            break
        assert time.monotonic() < deadline, view
        time.sleep(0.01)  # until the window closes: a condition, not a duration
    assert not view.alive(TIMEOUT)


def test_no_view_of_a_socket_that_is_not_tcp() -> None:
    left, right = socket.socketpair()
    with left, right:
        assert read_path_view(left) is None


class _OldKernel:
    """A TCP socket whose ``TCP_INFO`` is as short as a kernel before 5.4 gives."""

    type = socket.SOCK_STREAM

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        return self._sock.getsockopt(level, option, size)[:200]


def test_no_view_without_the_peers_window(tcp_pair: tuple[socket.socket, socket.socket]) -> None:
    """review86 M1: before Linux 5.4, TCP_INFO has no peer's window, and a peer that
    read nothing (each zero-window probe answered, backoff climbing) looked like a
    congested path and got the grace: 60 s instead of send_stall_timeout's 20."""
    client, _ = tcp_pair
    assert read_path_view(client) is not None
    assert read_path_view(_OldKernel(client)) is None  # type: ignore[arg-type]
