"""``trustp2p simulate``: main(argv) in-process on small networks, figures read as JSON."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from trustp2p.apps.simulate import Simulation, runner
from trustp2p.apps.simulate.metrics import (
    Observations,
    Outage,
    Published,
    RouterCounts,
    measure,
    quantile,
)
from trustp2p.apps.simulate.report import _plural, report_table
from trustp2p.cli import main
from trustp2p.exceptions import NodeStateError
from trustp2p.testing import Delivery

SMALL = ["--nodes", "15", "--degree", "4", "--messages", "20", "--rate", "100", "--seed", "1"]
TINY = ["--nodes", "4", "--degree", "2", "--messages", "4", "--rate", "100", "--seed", "1"]


@pytest.fixture(autouse=True)
def _short_late_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """After every node has every message, the runner goes on counting late copies for
    0.5 s; on one memory hub, a tenth of that is plenty (and the figures the tests
    check don't depend on it)."""
    monkeypatch.setattr(runner, "LATE", 0.1)


def simulate(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> dict[str, Any]:
    assert main(["simulate", *args, "--json"]) == code
    report: dict[str, Any] = json.loads(capsys.readouterr().out)
    return report


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: trustp2p simulate" in out
    for option in ("--nodes", "--degree", "--messages", "--churn", "--partition-at", "--mode"):
        assert option in out
    for option in ("--seed", "--plot", "--json", "--log-level"):
        assert option in out


def test_gossip_reaches_every_node_with_fewer_duplicates_than_flooding(
    capsys: pytest.CaptureFixture[str],
) -> None:
    gossip = simulate(capsys, *SMALL)
    assert gossip["ok"] is True
    assert gossip["problems"] == []
    assert gossip["published"] == 20
    assert gossip["live_nodes"] == 15
    assert gossip["coverage"] == 1.0
    assert gossip["fully_covered_messages"] == 1.0
    assert gossip["reached_per_message"] == {"min": 1.0, "p50": 1.0, "mean": 1.0}
    assert gossip["redelivered"] == 0
    assert gossip["out_of_order"] == 0
    coverage = gossip["time_to_full_coverage"]
    assert coverage["messages"] == 20
    assert 0 < coverage["p50"] <= coverage["p99"] <= coverage["max"]
    # Every copy a node receives is its first or a duplicate; an origin receives no
    # copy of its own message.
    copies, duplicates = (
        gossip["copies_per_message_per_node"],
        gossip["duplicates_per_message_per_node"],
    )
    assert copies == pytest.approx(duplicates + 14 / 15, abs=0.01)
    # All traffic is at least one copy per node of every message.
    assert gossip["bytes_per_message"] > 15 * gossip["message_package_bytes"]
    assert gossip["after_heal"] is None and gossip["after_restart"] is None

    flood = simulate(capsys, *SMALL, "--mode", "flood")
    assert flood["ok"] is True
    assert flood["coverage"] == 1.0
    assert flood["mode"] == "flood"
    # Flooding sends every message over every connection (about 2 x 4 per node).
    assert flood["duplicates_per_message_per_node"] > 5
    assert gossip["duplicates_per_message_per_node"] < flood["duplicates_per_message_per_node"] - 2


def test_partition_heals_and_every_node_catches_up(capsys: pytest.CaptureFixture[str]) -> None:
    report = simulate(
        capsys, *SMALL, "--rate", "40", "--partition-at", "0.1", "--partition-for", "0.25"
    )
    assert report["ok"] is True
    assert report["coverage"] == 1.0
    after_heal = report["after_heal"]
    assert after_heal["at"] == 0.1
    assert after_heal["for"] == 0.25
    assert after_heal["messages_before"] > 0
    # Messages published during the partition reached one half only.
    assert after_heal["missing"] > 0
    assert after_heal["nodes_complete"] == 1.0
    assert after_heal["seconds_max"] >= after_heal["seconds_p50"] >= 0
    outside = report["time_to_full_coverage_outside_partition"]
    assert outside["messages"] < report["time_to_full_coverage"]["messages"]


def test_churned_nodes_restart_and_catch_up(capsys: pytest.CaptureFixture[str]) -> None:
    report = simulate(capsys, *SMALL, "--rate", "40", "--churn", "0.2")
    assert report["ok"] is True
    assert report["coverage"] == 1.0
    assert report["redelivered"] == 0
    assert report["out_of_order"] == 0
    after_restart = report["after_restart"]
    assert after_restart["killed"] == after_restart["restarted"] == 3
    assert after_restart["nodes_complete"] == 1.0
    assert report["live_nodes"] == 15


def test_missing_messages_fail_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    # The partition lasts beyond publishing; right after the heal nobody has reconnected,
    # and 10 ms is too short to catch up.
    args = ["--nodes", "10", "--degree", "3", "--messages", "10", "--rate", "50", "--seed", "3"]
    args += ["--partition-at", "0", "--partition-for", "0.5", "--timeout", "0.01", "--json"]
    assert main(["simulate", *args]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["ok"] is False
    assert report["coverage"] < 1.0
    assert "live nodes miss messages" in report["problems"][0]
    assert "live nodes miss messages" in captured.err


def test_table_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *TINY]) == 0
    out = capsys.readouterr().out
    assert "gossip: 4 nodes, degree 2, 4 messages" in out
    assert "time to full coverage p50 / p99 / max" in out
    assert "duplicates per message per node" in out
    assert "every live node has every message" in out


def test_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "sim.png"
    report = simulate(capsys, *TINY, "--churn", "0.25", "--plot", str(path))
    assert report["ok"] is True
    assert report["after_restart"]["restarted"] == 1
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    # tester47 F6: exit status 2, a usage error, as --loop uvloop without uvloop (it was 1).
    assert main(["simulate", *SMALL, "--plot", str(tmp_path / "sim.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Usage: ")
    said = "Error: --plot needs matplotlib (trustp2p's plot extra): pip install matplotlib\n"
    assert err.endswith(said)
    assert not (tmp_path / "sim.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--churn", "1"], "Invalid value for '--churn'"),
        (["--nodes", "1"], "Invalid value for '--nodes'"),
        (["--mode", "broadcast"], "Invalid value for '--mode'"),
        (["--rate", "0"], "Invalid value for '--rate'"),
    ],
)
def test_invalid_options_are_usage_errors(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *args]) == 2
    assert message in capsys.readouterr().err


def test_simulation_checks_itself() -> None:
    with pytest.raises(ValueError, match="churn must be in"):
        Simulation(churn=1.5)
    with pytest.raises(ValueError, match="rate must be a positive number"):
        Simulation(rate=0)
    with pytest.raises(ValueError, match="at least 2 nodes"):
        Simulation(nodes=1)
    assert Simulation(messages=200, rate=5).publish_window == 40


def test_quantile_interpolates() -> None:
    assert quantile([], 0.5) is None
    assert quantile([3.0], 0.99) == 3.0
    assert quantile([4.0, 1.0, 2.0, 3.0], 0.5) == 2.5
    assert quantile([0.0, 10.0], 0.99) == pytest.approx(9.9)


def test_figures_from_recorded_deliveries() -> None:
    """measure() alone, on a made-up run: 3 nodes, node 2 killed and restarted."""
    sim = Simulation(nodes=3, messages=3, timeout=1.0)
    published = {
        "a1": Published(0, origin=0, when=10.0),
        "a2": Published(1, origin=0, when=11.0),
        "b1": Published(2, origin=1, when=12.0),
    }

    def got(message_id: str, when: float) -> Delivery:
        origin, seq = message_id[0], int(message_id[1])
        return Delivery(origin, seq, message_id, "sim", when)

    received = [
        [got("a1", 10.0), got("a2", 11.0), got("b1", 12.5)],
        # a2 before a1 (out of order), and a1 twice.
        [got("a2", 11.5), got("a1", 11.6), got("a1", 11.7), got("b1", 12.0)],
        # Down from 10.5 to 13.0: it missed a2 and b1 and never caught up on b1.
        [got("a1", 10.2), got("a2", 13.4)],
    ]
    seen = Observations(
        published,
        received,
        live=[0, 1, 2],
        outages=[Outage(2, killed=10.5, restarted=13.0)],
        counts=[RouterCounts(0, 1, 3, 0), RouterCounts(1, 2, 5, 0), RouterCounts(2, 0, 2, 1)],
        bytes_total=3000,
    )
    report = measure(sim, seen)
    assert report.coverage == pytest.approx(8 / 9)
    assert report.reached_per_message == {"min": pytest.approx(2 / 3), "p50": 1.0, "mean": 8 / 9}
    assert report.fully_covered == pytest.approx(2 / 3)
    # Node 2 came back after every publish: the times to full coverage leave it out.
    assert report.time_to_full_coverage == {
        "p50": pytest.approx(0.5),
        "p99": pytest.approx(1.578),
        "max": pytest.approx(1.6),
        "messages": 3,
    }
    assert (report.redelivered, report.out_of_order) == (1, 2)
    assert report.duplicates_per_message_per_node == pytest.approx(3 / 9)
    assert report.copies_per_message_per_node == pytest.approx(10 / 9)
    assert (report.caught_up, report.bytes_per_message) == (1, 1000.0)
    assert report.churn == {
        "killed": 1,
        "restarted": 1,
        "missing": 2,
        "nodes_complete": 0.0,
        "seconds_p50": None,
        "seconds_max": None,
    }
    assert report.partition is None
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(report_table(report))
    lines = console.export_text().splitlines()
    row = next(line for line in lines if "churn: restarted nodes with every message" in line)
    assert "0 of 1 (2 messages to catch up on)" in row
    assert report.problems == [
        "1 of 3 live nodes miss messages (1 (node, message) pairs) after waiting 1 s",
        "1 deliveries repeated a message to a node (exactly once was broken)",
        "2 deliveries came after a later message of the same origin (per-origin order was broken)",
    ]
    assert report.ok is False


def test_the_runner_counts_each_nodes_published_messages_once() -> None:
    """Completion: every live node delivered every message published so far (a repeat
    counts once); a delivery of a message whose publish isn't recorded yet is looked
    at again at the next scan."""
    run = runner._Runner(Simulation(nodes=2, messages=3, seed=1), None)
    received = run.network.received
    published = run.seen.published

    def got(node: int, message_id: str) -> None:
        received[node].append(Delivery("o", 1, message_id, "sim", 0.0))

    published["a"] = Published(0, origin=0, when=0.0)
    got(0, "a")
    got(0, "a")
    got(1, "b")  # published, not recorded yet
    got(1, "a")
    run.network._alive = [True, True]
    assert not run._complete()
    assert [bytes(g) for g in run.got] == [b"\1\0\0", b"\0\0\0"]
    published["b"] = Published(1, origin=1, when=0.0)
    assert not run._complete()  # node 0 lacks b
    assert [bytes(g) for g in run.got] == [b"\1\0\0", b"\1\1\0"]
    got(0, "b")
    assert run._complete()


class _Gossip:
    """A node's gossip whose publish() waits for the network's word where told to, or
    raises NodeStateError as a node the churn stopped does."""

    def __init__(self, net: _Publishers, index: int) -> None:
        self.net, self.index = net, index

    async def publish(self, topic: str, data: dict[str, int]) -> str:
        number = data["n"]
        self.net.calls.append((number, self.index))
        if self.index in self.net.stopped:
            raise NodeStateError("the node is stopping")
        if number == 0:
            await self.net.last_began.wait()  # held until the last publish began
        if number == self.net.count - 1:
            self.net.last_began.set()
        return f"id{number}"


class _Publishers:
    def __init__(self, size: int, count: int, stopped: set[int]) -> None:
        self.count, self.stopped = count, stopped
        self.calls: list[tuple[int, int]] = []
        self.last_began = asyncio.Event()
        self.nodes = [SimpleNamespace(gossip=_Gossip(self, i)) for i in range(size)]

    def alive(self, index: int) -> bool:
        return True


async def test_the_runner_publishes_each_message_without_waiting_for_the_last() -> None:
    """Publishers are independent nodes: one publish() that waits (its pacing, a loop
    iteration) doesn't hold back the next messages' (awaited in turn, 100 messages took
    38 s at 1,000 nodes rather than 20). A publish refused by a node the churn stopped
    is made by another node."""
    run = runner._Runner(Simulation(nodes=3, messages=4, rate=1000.0, seed=1), None)
    fake = _Publishers(3, 4, stopped={1})
    run.network = fake  # type: ignore[assignment]
    run.start = time.monotonic()
    async with asyncio.timeout(10):  # (awaited in turn, the first publish never returns)
        await run._publish_all()
    published = run.seen.published
    assert sorted(published) == ["id0", "id1", "id2", "id3"]
    assert {p.number for p in published.values()} == {0, 1, 2, 3}
    assert all(p.origin != 1 for p in published.values())
    assert list(dict.fromkeys(number for number, _ in fake.calls)) == [0, 1, 2, 3]  # in turn
    assert any(node == 1 for _, node in fake.calls)  # (the seed has node 1 asked once)


def test_counts_of_one_are_singular() -> None:
    # Found by a tester: "1 of 1 (1 messages to catch up on)".
    assert (_plural(1, "message"), _plural(2, "message"), _plural(0, "message")) == (
        "1 message",
        "2 messages",
        "0 messages",
    )
