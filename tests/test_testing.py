"""The public ``trustp2p.testing.Network`` helper: what it refuses, its stores in
memory, and its stop."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest

from trustp2p.drivers.memory import MemoryDriver
from trustp2p.exceptions import UsageError
from trustp2p.node import Node, NodeState
from trustp2p.testing import Network


def test_network_faults_need_the_memory_driver() -> None:
    network = Network(2, driver="ws")
    with pytest.raises(UsageError, match=r"^partition\(\) needs the memory driver$"):
        network.partition([[0], [1]])
    with pytest.raises(UsageError, match=r"^heal\(\) needs the memory driver$"):
        network.heal()
    with pytest.raises(UsageError, match=r"^set_delay\(\) needs the memory driver$"):
        network.set_delay(0.1)


def test_network_stores_are_memory_or_sqlite() -> None:
    with pytest.raises(ValueError, match="stores must be 'memory' or 'sqlite'"):
        Network(2, stores="disk")


async def test_network_nodes_read_without_turns() -> None:
    """All its nodes share one loop: the drivers' read turns (fairness against a
    flooding peer) only end turns early there (a 1,000-node simulation: 15 % more CPU,
    its p50 coverage 20-50 % longer), so a memory network's drivers read without them."""
    async with Network(2, degree=1, seed=1) as network:
        for node in network.nodes:
            driver = node.options.driver
            assert isinstance(driver, MemoryDriver) and driver.options.read_turn is None


async def test_network_nodes_keep_their_stores_in_memory() -> None:
    """No SQLite file and no store thread per node; a restarted node takes its stores
    back from its shelf, so it continues its sequence numbers."""
    async with Network(3, degree=2, seed=1) as network:
        await network.wait_connected()
        assert [t for t in threading.enumerate() if t.name.startswith("trustp2p-")] == []
        assert list(network.directory.rglob("*.sqlite")) == []
        node = network.nodes[0]
        assert node.gossip is not None
        first = await node.gossip.publish("chat", {"n": 1})
        await network.wait_delivered(1)
        await network.kill(0)
        node = await network.restart(0)
        assert node.gossip is not None and node.gossip.message_log is not None
        assert len(node.gossip.message_log) == 1
        await network.wait_connected()
        second = await node.gossip.publish("chat", {"n": 2})
        await network.wait_delivered(2)
        for deliveries in network.received:
            assert [(d.id, d.seq) for d in deliveries] == [(first, 1), (second, 2)]


async def test_network_stop_stops_its_nodes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    stopping: set[int] = set()
    most = 0
    stop = Node.stop

    async def counted(self: Node) -> None:
        nonlocal most
        stopping.add(id(self))
        most = max(most, len(stopping))
        await asyncio.sleep(0)  # every node starts stopping before any finishes
        await stop(self)

    monkeypatch.setattr(Node, "stop", counted)
    network = Network(5, degree=2, seed=1)
    await network.start()
    await network.wait_connected()
    await network.stop()
    assert most == 5
    assert all(node.state is NodeState.STOPPED for node in network.nodes)
    assert not any(network.alive(i) for i in range(5))


async def test_network_nodes_start_without_warnings(caplog: pytest.LogCaptureFixture) -> None:
    # Before, each node warned that its threads-enabled/ didn't exist, at every start.
    async with Network(3) as network:
        await network.wait_connected()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("wait", ["wait_connected", "wait_meshes", "wait_delivered"])
async def test_network_waits_refuse_a_negative_timeout(wait: str) -> None:
    """As the roles' waits do: ``timeout=-1`` timed out at once (review30, tester29)."""
    network = Network(2, degree=1, seed=1)
    args = {"wait_connected": (), "wait_meshes": ("chat",), "wait_delivered": (1,)}[wait]
    with pytest.raises(ValueError, match=r"^timeout must be None or at least 0, not -1"):
        await getattr(network, wait)(*args, timeout=-1)
