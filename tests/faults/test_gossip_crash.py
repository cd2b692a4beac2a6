"""
G. Gossip delivery across crashes: a subscriber killed with ``kill -9`` at random
moments under load, and restarted each time, never misses a message, and sees one
again only if it was the last one it handled before a kill (its handler had run and
the delivered mark was not yet on disk: no application write and mark are atomic).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trustp2p import Node

from ..nodes import wait_for
from .conftest import Child

TOPIC = "load"


async def publish_until(node: Node, published: list[int], stop: asyncio.Event) -> None:
    """Publish a message every 5 ms until ``stop``: the load the subscriber is killed
    under. (About real time passing: the kills must land among deliveries.) Not
    cancelled: a publish() cancelled on a loaded machine had published its message
    before it could be counted, and the test then found one more than it expected."""
    assert node.gossip is not None
    while not stop.is_set():
        await node.gossip.publish(TOPIC, {"n": len(published)})
        published.append(len(published) + 1)
        await asyncio.sleep(0.005)


def deliveries(path: Path, origin: str) -> list[list[int]]:
    """The seqs of ``origin`` recorded by each run of the subscriber, in order."""
    runs: list[list[int]] = []
    for line in path.read_text().splitlines():
        if line == "start":
            runs.append([])
        else:
            who, seq = line.split()
            assert who == origin
            runs[-1].append(int(seq))
    return runs


@pytest.mark.parametrize(
    "kills",
    # 20 kills take 15-20 s (a process start each): the full count runs with the slow
    # tests (`pytest -m slow`, which .ci/run runs too), a short one in the fast suite.
    [5, pytest.param(20, marks=pytest.mark.slow)],
)
async def test_a_subscriber_killed_at_random_moments_misses_nothing(
    tmp_path: Path, children: Callable[..., Child], kills: int
) -> None:
    for name in ("pub", "sub"):
        (tmp_path / name).mkdir()
    # 21 restarts of one peer in ~15 s would be a reconnect storm (20 within 10 s):
    # this test is about delivery, not that rule.
    publisher = Node(cwd=tmp_path / "pub", server=True, port=0, storm_connections=None)
    await publisher.start()
    published: list[int] = []
    stop = asyncio.Event()
    load = asyncio.create_task(publish_until(publisher, published, stop))
    record = tmp_path / "record"
    rng = random.Random(20)
    options = {
        "cwd": str(tmp_path / "sub"),
        "client": True,
        "peers": [publisher.url],
        "_record": [str(record), TOPIC],
        "_log_level": "WARNING",
    }
    try:
        for _ in range(kills):
            child = children(dict(options))
            await wait_for(lambda child=child: "started" in child.stdout, timeout=20)
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # a random moment under load
            child.signal(signal.SIGKILL)
            child.process.wait()
        stop.set()
        await load
        # One more run, left alone: catch-up brings what the kills made it miss.
        final = children(dict(options))
        await wait_for(lambda: "started" in final.stdout, timeout=20)
        origin = publisher.peer_id
        assert origin is not None
        started = time.monotonic()
        everything = set(range(1, len(published) + 1))
        await wait_for(
            lambda: (
                everything <= {s for run in deliveries(record, origin) for s in run}
                or not final.alive
            ),
            timeout=60,
            interval=0.05,  # the predicate reads the whole record
        )
        assert final.alive, final.log
        caught_up = time.monotonic() - started
    finally:
        load.cancel()
        await publisher.stop()
    runs = deliveries(record, origin)
    assert len(runs) == kills + 1
    seen: set[int] = set()
    again: list[int] = []
    previous: list[int] = []  # the last run that handled anything (one killed early didn't)
    for run in runs:
        for seq in run:
            if seq in seen:
                # Only the last message the killed run handled may come again.
                assert previous and seq == previous[-1], (seq, previous[-3:], run[:3])
                again.append(seq)
            seen.add(seq)
        previous = run or previous
    assert seen == set(range(1, len(published) + 1)), "a message was never delivered"
    assert len(again) <= kills
    print(
        f"{len(published)} messages, {kills} kills: none missed, {len(again)} delivered "
        f"again (each the last one handled before a kill); the last run took "
        f"{caught_up:.1f} s to have them all"
    )
