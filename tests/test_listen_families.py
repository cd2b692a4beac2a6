"""
Listening on every interface (tester39 F5): ``host=""`` takes both families and says so,
with a URL that names an address (it was ``ws://:PORT``), announced to nobody;
``host="::"`` says it takes IPv6 only. Loopback, ephemeral ports.

"""

from __future__ import annotations

import logging
import socket

import pytest

from .nodes import MakeNode


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback here")


@needs_ipv6
async def test_an_empty_host_serves_both_families_and_says_so(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True, host="")
    assert server.url is not None and server.url.startswith("ws://0.0.0.0:")
    assert server.listen_urls == []  # the unspecified address: announced to nobody
    port = server.url.rsplit(":", 1)[1]
    assert f"= listening on ws://0.0.0.0:{port} (every interface, IPv4 and IPv6)" in caplog.text
    assert "! listening on the unspecified address" in caplog.text
    for url in (f"ws://127.0.0.1:{port}", f"ws://[::1]:{port}"):
        client = await make_node(client=True, peers=[url])
        assert client.client is not None
        await client.client.wait_connected()


@needs_ipv6
async def test_the_ipv6_unspecified_host_says_it_takes_ipv6_only(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trustp2p")
    server = await make_node(server=True, host="::")
    assert server.url is not None
    port = server.url.rsplit(":", 1)[1]
    assert f"= listening on ws://[::]:{port} (IPv6 only: --host '' for both)" in caplog.text
