"""
A handler that blocks the event loop (tester39 F4): the node that has the bug says so at
WARNING (``loop_block_warning``), rather than leaving its peers to report "lost peer".
Loopback; the handler blocks past a small threshold.

"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import warnings
import weakref
from pathlib import Path

import pytest

from trustp2p import EventMap, Node, Package, PackageType, Socket, Thread
from trustp2p.admin import current_node

from .conftest import MS
from .nodes import MakeNode, wait_for

THRESHOLD = 200 * MS


class Blocking(Thread):
    """Its ``block`` request handler calls blocking code: the whole loop waits."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"block": self.block}}

    def block(self, socket: Socket, package: Package) -> dict[str, bool]:
        time.sleep(3 * THRESHOLD)  # the mistake: not asyncio.sleep / to_thread
        return {"done": True}


async def test_a_handler_that_blocks_the_loop_is_reported_at_warning(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="trustp2p")
    server = await make_node(server=True, threads=[Blocking], loop_block_warning=THRESHOLD)
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None
    await client.client.wait_connected()
    socket = client.client.sockets[0]
    assert await client.client.request(socket, "block", {}) == {"done": True}
    await wait_for(lambda: "event loop was blocked" in caplog.text)
    [line] = [r for r in caplog.records if "event loop was blocked" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert "a handler or thread that doesn't await" in line.getMessage()


async def test_the_threshold_is_an_option_of_positive_seconds(make_node: MakeNode) -> None:
    with pytest.raises(ValueError, match="loop_block_warning must be a positive number"):
        await make_node(server=True, loop_block_warning=0)


async def test_the_nodes_of_one_loop_share_one_watchdog(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """One watchdog per node: a 1,000-node simulation ran 1,000 timers a second, and
    said one block 1,000 times. One per loop, for its nodes: said once."""
    caplog.set_level(logging.WARNING, logger="trustp2p")
    server = await make_node(server=True, threads=[Blocking], loop_block_warning=THRESHOLD)
    client = await make_node(client=True, peers=[server.url], loop_block_warning=THRESHOLD)
    await make_node(client=True, loop_block_warning=THRESHOLD)  # a third, idle
    assert client.client is not None
    await client.client.wait_connected()
    socket = client.client.sockets[0]
    assert await client.client.request(socket, "block", {}) == {"done": True}
    await wait_for(lambda: "event loop was blocked" in caplog.text)
    lines = [r for r in caplog.records if "event loop was blocked" in r.getMessage()]
    assert len(lines) == 1


async def test_a_block_is_said_as_a_node_still_running(make_node: MakeNode) -> None:
    """review59: the watchdog's timer ran in the context of the start of the loop's
    first node, so a block was said as that node (on its status page) after it
    stopped, never as the node still running."""
    said: list[object] = []

    class Whose(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "event loop was blocked" in record.getMessage():
                said.append(current_node.get(None))

    handler = Whose()
    logging.getLogger("trustp2p").addHandler(handler)
    try:
        first = await make_node(server=True, loop_block_warning=THRESHOLD)
        second = await make_node(server=True, loop_block_warning=THRESHOLD)
        await first.stop()
        await asyncio.sleep(0)
        said.clear()  # (a loaded machine's own blocks before: CI149)
        time.sleep(3 * THRESHOLD)  # noqa: ASYNC251 (the block, once the first stopped)
        await wait_for(lambda: bool(said))
    finally:
        logging.getLogger("trustp2p").removeHandler(handler)
    assert set(said) == {second.context_key}


def test_a_node_never_stopped_does_not_keep_its_loop(tmp_path: Path) -> None:
    """review58: the watchdog's table, weakly keyed by loop, held the loop (its clock,
    its task) and every node on it: a node never stopped kept its loop and its state."""

    async def start() -> None:
        await Node(cwd=tmp_path, server=True, port=0, host="127.0.0.1").start()

    loop = asyncio.new_event_loop()
    loop_ref = weakref.ref(loop)
    loop.run_until_complete(start())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (its pending tasks, destroyed; its socket)
        loop.close()
        del loop
        gc.collect()
    assert loop_ref() is None
