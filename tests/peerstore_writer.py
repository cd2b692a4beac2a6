"""
Writes to a peer store as fast as it can; tests/test_peerstore.py runs it as a subprocess.

    python tests/peerstore_writer.py PATH loop   # forever; prints i once peer i is written
    python tests/peerstore_writer.py PATH full   # under a file-size limit: see full()

"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
from pathlib import Path

from trustp2p.peerstore import PeerSource, PeerStore


def url(i: int) -> str:
    return f"ws://10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}:1107"


async def loop(path: Path) -> int:
    store = await PeerStore.open(path, flush_interval=3600)
    i = 0
    while True:
        await store.add_urls([url(i)], PeerSource.EXCHANGE)
        await store.record_connected(peer_id=f"peer{i}", url=url(i), address="10.0.0.1")
        print(i, flush=True)
        i += 1


async def full(path: Path) -> int:
    """
    Write until the file-size limit stops the writes, go on in memory, then lift the
    limit (the parent sets only the soft limit) and check that everything gets written.
    """
    store = await PeerStore.open(path, flush_interval=3600)
    i = 0
    while await store.flush():
        if i == 100_000:
            print("the writes never failed", flush=True)
            return 3
        await store.add_urls([url(i)], PeerSource.EXCHANGE)
        i += 1
    print(f"writes failed after {i} peers", flush=True)
    for _ in range(100):
        await store.add_urls([url(i)], PeerSource.EXCHANGE)
        await store.record_connected(peer_id=f"peer{i}", url=url(i), address=None)
        store.count_packages(f"peer{i}", good=3)
        i += 1
    if await store.flush():
        print("a flush worked under the limit", flush=True)
        return 4
    print(f"in memory {len(await store.peers())}", flush=True)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print(f"flushed {await store.flush()}", flush=True)
    await store.close()
    store = await PeerStore.open(path)
    records = await store.peers()
    print(f"stored {len(records)} {sum(r.good_packages for r in records)}", flush=True)
    await store.close()
    return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    path, mode = Path(sys.argv[1]), sys.argv[2]
    return asyncio.run(loop(path) if mode == "loop" else full(path))


if __name__ == "__main__":
    sys.exit(main())
