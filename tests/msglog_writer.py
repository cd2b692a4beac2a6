"""
Writes to a message log as fast as it can; tests/test_msglog.py runs it as a subprocess.

    python tests/msglog_writer.py PATH loop   # forever; prints n once messages 1..n are written
    python tests/msglog_writer.py PATH full   # under a file-size limit: see full()

"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from pathlib import Path

from trustp2p.msglog import LoggedMessage, MessageLog

ORIGIN = "tpwriter"


def message(seq: int, size: int = 20) -> LoggedMessage:
    return LoggedMessage(
        topic="chat",
        origin=ORIGIN,
        seq=seq,
        timestamp=1000.0 + seq,
        data='{"text": "' + "x" * size + '"}',
        key="k" * 44,
        signature="s" * 88,
        id=f"id{seq}",
    )


async def loop(path: Path) -> int:
    log = await MessageLog.open(path, flush_interval=3600)
    last = 0
    while True:
        for _ in range(10):
            seq = log.next_seq(ORIGIN)
            log.add(message(seq))
            log.mark_delivered(ORIGIN, seq)
            last = seq
        if not await log.flush():
            return 2
        print(last, flush=True)


async def full(path: Path) -> int:
    """
    Write until the file-size limit stops the writes, go on in memory, then lift the
    limit (the parent sets only the soft limit) and check that everything gets written.
    """
    log = await MessageLog.open(path, flush_interval=3600)
    seq = 0
    while await log.flush():
        if seq >= 100_000:
            print("the writes never failed", flush=True)
            return 3
        for _ in range(10):
            seq = log.next_seq(ORIGIN)
            log.add(message(seq, size=1000))
    print(f"writes failed after {seq} messages", flush=True)
    for _ in range(100):
        seq = log.next_seq(ORIGIN)
        log.add(message(seq, size=1000))
        log.mark_delivered(ORIGIN, seq)
    if await log.flush():
        print("a flush worked under the limit", flush=True)
        return 4
    found = log.range(ORIGIN, 1, seq, limit=100_000, max_bytes=10**9)
    print(f"in memory {len(log)} {log.high_water()} {len(found)}", flush=True)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print(f"flushed {await log.flush()}", flush=True)
    await log.close()
    log = await MessageLog.open(path)
    print(
        f"stored {len(log)} {log.high_water()} {log.delivered(ORIGIN)} {log.next_seq(ORIGIN)}",
        flush=True,
    )
    await log.close()
    return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    path, mode = Path(sys.argv[1]), sys.argv[2]
    return asyncio.run(loop(path) if mode == "loop" else full(path))


if __name__ == "__main__":
    sys.exit(main())
