"""``simulate --workers N``: the plan (pure), then real runs over worker processes."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trustp2p.apps.simulate import Simulation, runner, simulate
from trustp2p.apps.simulate.plan import SPARE_DESCRIPTORS, descriptors, dial_plan, owner, split
from trustp2p.apps.simulate.worker import _Worker
from trustp2p.cli import main
from trustp2p.exceptions import UsageError, WorkerError
from trustp2p.testing import Network, random_links

WORKER = "trustp2p.apps.simulate.worker"


@pytest.fixture(autouse=True)
def _short_late_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Late copies are counted for 0.1 s instead of 0.5 s (see test_simulate.py)."""
    monkeypatch.setattr(runner, "LATE", 0.1)


# The plan


def test_split_gives_contiguous_shares_that_differ_by_one_at_most() -> None:
    assert split(10, 3) == [range(0, 4), range(4, 7), range(7, 10)]
    assert split(4, 4) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]
    assert split(3000, 2) == [range(0, 1500), range(1500, 3000)]
    for nodes, workers in [(7, 2), (100, 7), (2, 1)]:
        shares = split(nodes, workers)
        assert [i for share in shares for i in share] == list(range(nodes))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="can't split 2 nodes over 3 workers"):
        split(2, 3)
    with pytest.raises(ValueError, match="over 0 workers"):
        split(2, 0)


def test_owner_finds_the_share_of_a_node() -> None:
    shares = split(10, 3)
    assert [owner(shares, i) for i in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    for index in (-1, 10):
        with pytest.raises(ValueError, match="in no share"):
            owner(shares, index)


def test_dial_plan_gives_each_node_of_a_share_the_urls_it_dials() -> None:
    links = [[1, 2], [2], [], [0]]
    urls = ["tcp://127.0.0.1:1000", "tcp://127.0.0.1:1001", "tcp://127.0.0.1:1002", "x"]
    assert dial_plan(range(0, 2), links, urls) == [[urls[1], urls[2]], [urls[2]]]
    assert dial_plan(range(2, 4), links, urls) == [[], [urls[0]]]


def test_descriptors_count_listeners_and_connection_ends() -> None:
    # 0 -> 1 inside the first share (two ends there), 1 -> 2 and 3 -> 0 across.
    links = [[1], [2], [], [0]]
    assert descriptors(range(0, 2), links) == 2 + 4 + SPARE_DESCRIPTORS
    assert descriptors(range(2, 4), links) == 2 + 2 + SPARE_DESCRIPTORS
    # 3,000 nodes of degree 6 over 2 workers: a connection end per link end, 12 a node.
    shares = split(3000, 2)
    links = random_links(3000, 6, random.Random(1))
    assert sum(descriptors(share, links) for share in shares) == 3000 * 13 + 2 * 64


def test_random_links_are_those_of_a_network_with_the_same_seed() -> None:
    links = random_links(50, 6, random.Random(7))
    assert links == random_links(50, 6, random.Random(7))
    assert all(len(mine) == 6 and index not in mine for index, mine in enumerate(links))
    pairs = [frozenset((a, b)) for a, mine in enumerate(links) for b in mine]
    assert len(pairs) == len(set(pairs))  # never both ways
    network = Network(50, degree=6, seed=7)
    assert network._topology() == links
    assert random_links(3, 6, random.Random(1)) == random_links(3, 2, random.Random(1))


def test_workers_are_checked() -> None:
    with pytest.raises(ValueError, match=r"workers must be in \[1, nodes\], not 5"):
        Simulation(nodes=4, workers=5)
    with pytest.raises(ValueError, match="workers must be in"):
        Simulation(workers=0)
    with pytest.raises(ValueError, match="churn and partitions need the memory driver"):
        Simulation(workers=2, churn=0.1)
    with pytest.raises(ValueError, match="churn and partitions need the memory driver"):
        Simulation(workers=2, partition_at=1.0)


# Real runs


async def test_a_plan_over_the_open_files_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "getrlimit", lambda which: (100, 100))
    sim = Simulation(nodes=20, degree=4, messages=1, workers=2)
    with pytest.raises(UsageError, match=r"needs about 1\d\d open files, over the limit of 100"):
        await simulate(sim)
    assert children() == []


def children() -> list[int]:
    """This process's children that are simulation workers."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except FileNotFoundError:
            continue  # a thread (an executor's) ended since the listing
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if WORKER.encode() in cmdline:
                found.append(int(pid))
    return found


def test_two_workers_reach_every_node(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--nodes", "20", "--degree", "4", "--messages", "10", "--rate", "50"]
    assert main(["simulate", *args, "--seed", "1", "--workers", "2", "--json"]) == 0
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert report["workers"] == 2
    assert report["live_nodes"] == 20
    assert report["coverage"] == 1.0
    assert report["fully_covered_messages"] == 1.0
    assert report["redelivered"] == report["out_of_order"] == 0
    coverage = report["time_to_full_coverage"]
    assert coverage["messages"] == 10
    assert 0 < coverage["p50"] <= coverage["p99"]
    # Copies of each message crossed tcp:// connections, between the processes too.
    assert report["bytes_per_message"] > 20 * report["message_package_bytes"]
    rss = report["peak_rss_mib"]
    assert len(rss["workers"]) == 2
    assert rss["total"] == pytest.approx(rss["parent"] + sum(rss["workers"]), abs=0.2)
    cpu = report["cpu_seconds"]
    assert len(cpu["workers"]) == 2 and all(seconds > 0 for seconds in cpu["workers"])
    assert children() == []


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds workers in /proc")
async def test_a_killed_worker_fails_the_run_clearly() -> None:
    killed: list[int] = []

    def progress(published: int, messages: int, delivered: int, expected: int) -> None:
        if not killed:
            killed.append(children()[0])
            os.kill(killed[0], signal.SIGKILL)

    sim = Simulation(nodes=10, degree=3, messages=200, rate=20, seed=2, workers=2)
    with pytest.raises(WorkerError, match=r"exited with status -9 before the end") as failed:
        await simulate(sim, progress=progress)
    assert f"pid {killed[0]}" in str(failed.value)
    assert "worker " in str(failed.value) and "(nodes " in str(failed.value)
    assert children() == []  # the other worker was stopped too


async def test_a_workers_failed_publish_is_said_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    """Publishes run in tasks of their own; one that fails says so at once, or the parent
    waits out its whole timeout before the report's gather finds it (review30)."""

    class Failing:
        async def publish(self, topic: str, data: dict[str, int]) -> str:
            raise RuntimeError("the store is closed")

    worker = _Worker.__new__(_Worker)
    worker.network = SimpleNamespace(nodes=[SimpleNamespace(gossip=Failing())])  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        await worker._publish({"op": "publish", "number": 5, "origin": 0, "node": 0})
    said = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert said == [{"op": "error", "message": "RuntimeError: the store is closed"}]
