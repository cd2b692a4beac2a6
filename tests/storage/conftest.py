from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import FakeClock
from trustp2p.storage.peerstore import PeerStore

# The shared checks live in helper modules: rewrite their asserts to show values.
pytest.register_assert_rewrite("tests.storage.faults", "tests.storage.adapters")


@pytest.fixture
async def store(clock: FakeClock) -> AsyncIterator[PeerStore]:
    store = await PeerStore.open(None, clock=clock)
    yield store
    await store.close()


"""A peer store in memory, on the test's fake clock (a test module may make its own)."""


async def url_owners(store: PeerStore) -> dict[str, str | None]:
    """URL -> the peer id of the record holding it (None: id unknown)."""
    return {url: record.peer_id for record in await store.peers() for url in record.urls}
