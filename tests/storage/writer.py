"""
Writes to a store as fast as it can; the fault suite (tests/storage/faults.py) runs it as
a subprocess, with the store's adapter (tests/storage/adapters.py):

    python -m tests.storage.writer STORE PATH loop  # forever; prints what is committed
    python -m tests.storage.writer STORE PATH full  # under a file-size limit: see full()

STORE is ``peerstore`` or ``msglog``.

"""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
import sys
from pathlib import Path

from tests.storage.adapters import ADAPTERS, StoreAdapter


async def loop(adapter: StoreAdapter, path: Path) -> int:
    store = await adapter.open(path, flush_interval=3600)
    for step in itertools.count():
        print(await adapter.commit(store, step), flush=True)
    return 1  # pragma: no cover - killed before


async def full(adapter: StoreAdapter, path: Path) -> int:
    """
    Write until the file-size limit stops the writes, go on in memory, then lift the
    limit (the parent sets only the soft limit) and check that everything gets written.
    """
    store = await adapter.open(path, flush_interval=3600)
    step = 0
    while await store.flush():
        if step == 100_000:
            print("the writes never failed", flush=True)
            return 3
        await adapter.fill(store, step)
        step += 1
    print(f"writes failed after {step} steps", flush=True)
    for i in range(step, step + 100):
        await adapter.change_more(store, i)
    if await store.flush():
        print("a flush worked under the limit", flush=True)
        return 4
    print(f"in memory: {await adapter.summary(store)}", flush=True)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    print(f"flushed {await store.flush()}", flush=True)
    await store.close()
    store = await adapter.open(path)
    print(f"stored: {await adapter.summary(store)}", flush=True)
    await store.close()
    return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    adapter, path, mode = ADAPTERS[sys.argv[1]], Path(sys.argv[2]), sys.argv[3]
    return asyncio.run(loop(adapter, path) if mode == "loop" else full(adapter, path))


if __name__ == "__main__":
    sys.exit(main())
