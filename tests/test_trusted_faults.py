"""
Faults at node level: a node subprocess (``python -m trustp2p server``) killed with
``kill -9`` while peers come and go, run under a file-size limit (a full disk), and
started on a corrupt peer store. Clients run in the test process.

"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import resource
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from trustp2p import Node, RemoteError
from trustp2p.identity import KEY_FILE, Identity
from trustp2p.storage.peerstore import STORE_PATH, PeerStore

from .conftest import MS, wait_for
from .nodes import FAST

CLIENT: dict[str, Any] = {**FAST, "client": True}

# Generous: a loaded CI machine starts Python slowly.
START_TIMEOUT = 20.0


class NodeProcess:
    """A ``python -m trustp2p`` subprocess and the log lines it wrote to stderr."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(
        cls, command: str, cwd: Path, *args: str, preexec_fn: Callable[[], Any] | None = None
    ) -> NodeProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trustp2p",
            command,
            "--cwd",
            str(cwd),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=preexec_fn,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.lines.append(line.decode().rstrip("\n"))
            self._changed.set()
        self._changed.set()

    async def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT) -> re.Match[str]:
        """The first log line matching ``pattern`` (a regex), waiting for it if needed."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines:
                    if match := regex.search(line):
                        return match
                if self._reader.done():
                    raise AssertionError(f"exited without {pattern!r}:\n" + self.log)
                self._changed.clear()
                await self._changed.wait()

    async def started(self) -> str:
        """Wait until the node runs; its URL."""
        return (await self.wait_for_line(r"= node started on (\S+)"))[1]

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def warnings(self) -> list[str]:
        return [line for line in self.lines if " WARNING " in line]

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signum)
        async with asyncio.timeout(START_TIMEOUT):
            code = await self.process.wait()
            await self._reader
        return code


@pytest.fixture
async def processes() -> AsyncIterator[list[NodeProcess]]:
    """Node subprocesses to kill at the end, whatever happened."""
    started: list[NodeProcess] = []
    yield started
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            await process.stop(signal.SIGKILL)


def peer_id_of(cwd: Path) -> str:
    """The peer id of the node in ``cwd``, read from its key file (``trustp2p id`` has
    tests of its own; a subprocess here would only cost a Python start)."""
    return Identity.load_or_create(cwd / KEY_FILE).peer_id


def stored_peer_ids(path: Path) -> set[str]:
    """Peer ids committed to a store that a running node is writing to."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=1)) as db:
            rows = db.execute("SELECT peer_id FROM peers WHERE peer_id IS NOT NULL").fetchall()
    except sqlite3.OperationalError:  # not created yet
        return set()
    return {row[0] for row in rows}


async def visit(url: str, n: int) -> str:
    """A client connects to ``url``, announces a listen URL (the server stores it),
    asks for peers, and leaves; its peer id."""
    client = Node(**CLIENT, peers=[url], listen_urls=[f"ws://127.0.0.1:{20000 + n}"])
    await client.start()
    try:
        assert client.client is not None and client.peer_id is not None
        async with asyncio.timeout(START_TIMEOUT):
            await client.client.wait_connected()
        answer = await client.client.request(client.client.sockets[0], "get_peers", {}, timeout=5)
        assert isinstance(answer.get("peers"), list)
        return client.peer_id
    finally:
        await stop_even_if_cancelled(client)


async def stop_even_if_cancelled(node: Node) -> None:
    """Stop a node; if the caller is cancelled meanwhile, finish stopping first."""
    stopping = asyncio.ensure_future(node.stop())
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        await stopping
        raise


# kill -9


async def test_store_survives_kill_9_of_a_node_mid_run(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    cwd = tmp_path / "node"
    cwd.mkdir()
    path = cwd / STORE_PATH
    node = await NodeProcess.start("server", cwd, "--port", "0")
    processes.append(node)
    url = await node.started()
    node_id = peer_id_of(cwd)
    visited: list[str] = []

    async def churn() -> None:
        # Clients come and go until the node is killed under them.
        for n in itertools.count():
            visited.append(await visit(f"{url}/p2p/{node_id}", n))

    task = asyncio.create_task(churn())
    try:
        await wait_for(
            lambda: len(stored_peer_ids(path) & set(visited)) >= 5, 10.0, interval=10 * MS
        )
        recorded = stored_peer_ids(path) & set(visited)
        # Mid-run: a client is connecting or talking. One signal only: a second one
        # would reap the process behind asyncio's back (Popen.send_signal polls first).
        assert await node.stop(signal.SIGKILL) == -signal.SIGKILL
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    # A restart on the same cwd: same identity, same peers.
    restarted = await NodeProcess.start("server", cwd, "--port", "0")
    processes.append(restarted)
    url = await restarted.started()
    assert peer_id_of(cwd) == node_id
    # Clients that dial it by its id still get in: it proves the same key.
    visited.append(await visit(f"{url}/p2p/{node_id}", 999))
    assert await restarted.stop() == 0
    assert "corrupt" not in restarted.log, restarted.log
    assert not list(path.parent.glob("*.corrupt-*"))

    store = await PeerStore.open(path)
    try:
        records = {record.peer_id: record for record in await store.peers()}
    finally:
        await store.close()
    for peer_id in recorded:
        assert peer_id in records
        (announced,) = records[peer_id].urls
        assert re.fullmatch(r"ws://127\.0\.0\.1:2\d{4}", announced)
    assert visited[-1] in records


# Full disk


async def test_full_disk_does_not_stop_the_node(
    tmp_path: Path, processes: list[NodeProcess]
) -> None:
    cwd = tmp_path / "node"
    (cwd / "threads-enabled").mkdir(parents=True)  # no warning about it
    path = cwd / STORE_PATH
    # The identity and a store with a peer in it, as a first run leaves them.
    node_id = peer_id_of(cwd)
    store = await PeerStore.open(path)
    await store.record_connected(
        peer_id=Identity.generate().peer_id, url="ws://127.0.0.1:20000", address="127.0.0.1"
    )
    await store.close()

    # Then a run where files can't grow past what they are: the store's first writes
    # fail. (CPython ignores SIGXFSZ: the write fails with EFBIG.)
    limit = path.stat().st_size
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))

    node = await NodeProcess.start("server", cwd, "--port", "0", preexec_fn=limit_file_size)
    processes.append(node)
    url = await node.started()
    n = 1
    async with asyncio.timeout(START_TIMEOUT):
        while not any("peer store" in line for line in node.warnings()):
            await visit(f"{url}/p2p/{node_id}", n)
            n += 1
    # The node goes on: more clients connect and get answers; no other warning.
    for _ in range(3):
        await visit(f"{url}/p2p/{node_id}", n)
        n += 1
    (warning,) = [line for line in node.warnings() if "peer store" in line]
    assert re.search(
        rf"WARNING trustp2p\.storage\.peerstore: can't (write|open) peer store "
        rf"{re.escape(str(path))}: .+; keeping peer stats in memory and retrying in 5 s, "
        r"then less often while it fails \(every 5 s at most\)$",
        warning,
    ), warning
    assert node.warnings() == [warning]
    # Stopping says what couldn't be written, and is still a clean stop.
    assert await node.stop() == 0
    assert "Traceback" not in node.log, node.log
    (closing,) = node.warnings()[1:]
    assert re.search(
        rf"WARNING trustp2p\.storage\.peerstore: closed peer store {re.escape(str(path))} "
        r"with \d+ unsaved changes$",
        closing,
    ), closing


# Corrupt database


async def test_node_starts_on_a_corrupt_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cwd = tmp_path / "node"
    path = cwd / STORE_PATH
    path.parent.mkdir(parents=True)
    garbage = b"this is not an SQLite database\n" * 200
    path.write_bytes(garbage)
    server = Node(server=True, cwd=cwd, port=0, peer_exchange=False, heartbeat_interval=60.0)
    caplog.set_level(logging.INFO)
    await server.start()
    try:
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "trustp2p.storage.peerstore"
        ]
        (moved,) = list(path.parent.glob("peers.sqlite.corrupt-*"))
        assert warnings == [
            f"peer store {path} is corrupt (file is not a database); "
            f"moved it to {moved.name} and started an empty one"
        ]
        assert re.fullmatch(r"peers\.sqlite\.corrupt-\d+", moved.name)
        assert moved.read_bytes() == garbage
        # It works: a client connects, is answered, and lands in the new store.
        assert server.url is not None
        client_id = await visit_echo(server.url)
        assert server.store is not None
        assert client_id in {record.peer_id for record in await server.store.peers()}
    finally:
        await server.stop()
    assert client_id in stored_peer_ids(path)


async def visit_echo(url: str) -> str:
    client = Node(**CLIENT, peers=[url], listen_urls=["ws://127.0.0.1:20001"])
    await client.start()
    try:
        assert client.client is not None and client.peer_id is not None
        async with asyncio.timeout(START_TIMEOUT):
            await client.client.wait_connected()
        with pytest.raises(RemoteError) as caught:
            await client.client.request(client.client.sockets[0], "anything", {}, timeout=5)
        assert caught.value.body == {"error": "no handler for REQUEST 'anything'"}
        return client.peer_id
    finally:
        await client.stop()
