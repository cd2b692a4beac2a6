"""
What logging a gossip message costs (``MessageLog.add``), in memory, on a topic that is
full (each add drops a message: the share rule picks which) and on one that is not (the
baseline, measured in the same run). 100,000 adds from 50 origins, 10,000 kept.

    PYTHONPATH=src .venv/bin/python benchmarks/msglog_add.py [--rounds 5]

Prints the median µs per add of each, and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from trustp2p.storage.msglog import LoggedMessage, MessageLog

ADDS = 100_000
KEPT = 10_000
ORIGINS = 50


def _messages() -> list[LoggedMessage]:
    return [
        LoggedMessage(
            topic="chat",
            origin=f"tp{seq % ORIGINS}",
            seq=seq,
            timestamp=1_700_000_000.0,
            data='{"n":1}',
            key="k",
            signature="s",
            id=f"id{seq}",
        )
        for seq in range(1, ADDS + 1)
    ]


async def _round(messages: list[LoggedMessage], max_messages: int) -> float:
    """Seconds per add."""
    log = await MessageLog.open(None, clock=time.monotonic, max_messages=max_messages)
    try:
        start = time.perf_counter()
        for message in messages:
            log.add(message)
        return (time.perf_counter() - start) / len(messages)
    finally:
        await log.close()


async def main(rounds: int) -> None:
    messages = _messages()
    full, room = [], []
    for _ in range(rounds):  # interleaved, so that a slow spell hits both
        full.append(await _round(messages, KEPT))
        room.append(await _round(messages, 2 * ADDS))
    f, r = statistics.median(full) * 1e6, statistics.median(room) * 1e6
    print(f"{ADDS:,} adds from {ORIGINS} origins, median of {rounds} rounds")
    print(f"topic with room:      {r:.2f} µs per add")
    print(f"full ({KEPT:,} kept):  {f:.2f} µs per add   {f / r:.2f}x with room")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
