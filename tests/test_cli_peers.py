"""The `trustp2p peers` and `trustp2p id` commands."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import time
from pathlib import Path
from typing import Any

import pytest

from trustp2p import Node, NodeOptions
from trustp2p.cli import main
from trustp2p.identity import KEY_FILE, Identity, is_peer_id
from trustp2p.protocol.peers import peer_key
from trustp2p.storage.peerstore import STORE_PATH, PeerRecord, PeerSource, PeerStore

from .conftest import FakeClock

PEER_ID = "tpmzuhvlpymk6xo3epygfy5h4oeaejofef"


@pytest.mark.parametrize("command", ["peers", "id"])
def test_help_and_log_level(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: trustp2p {command}" in out
    assert "--log-level" in out
    assert "--cwd" in out


def test_no_store_yet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["peers", "--cwd", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no peers known yet\n"
    assert main(["peers", "--cwd", str(tmp_path), "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"
    assert not (tmp_path / "data").exists()  # listing doesn't create a store


def test_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(fill(tmp_path, FakeClock(), []))
    assert main(["peers", "--cwd", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no peers known yet\n"


async def fill(cwd: Path, clock: FakeClock, urls: list[str]) -> None:
    store = await PeerStore.open(cwd / STORE_PATH, clock=clock)
    try:
        await store.add_urls(urls, PeerSource.BOOTSTRAP)
        if urls:
            for _ in range(3):  # (a success counts once an hour: these are one)
                await store.record_connected(peer_id=PEER_ID, url=urls[0], address="10.0.0.1")
            await store.block(peer_id=PEER_ID, reason="test", duration=3600)
    finally:
        await store.close()


def utc(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def now() -> float:
    # Blocks are checked against the real time when listing: use it, in whole seconds.
    return float(int(time.time()))


def test_table(tmp_path: Path, now: float, capsys: pytest.CaptureFixture[str]) -> None:
    clock = FakeClock(now)
    asyncio.run(fill(tmp_path, clock, ["ws://10.0.0.1:1107", "ws://10.0.0.2:1107"]))
    assert main(["peers", "--cwd", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "ws://" in line]
    assert rows == [
        ["ws://10.0.0.1:1107", "tpmzuhvlpy", "1.00", utc(now), utc(now + 3600)],
        ["ws://10.0.0.2:1107", "-", "0.00", utc(now), "-"],
    ]
    assert lines[1].split("┃")[1:-1] == [
        " url                ",
        " peer id    ",
        " score ",
        " last seen            ",
        " blocked until        ",
    ]


def test_a_peer_known_by_its_address_alone_shows_it(
    tmp_path: Path, now: float, capsys: pytest.CaptureFixture[str]
) -> None:
    async def count_an_address() -> None:
        store = await PeerStore.open(tmp_path / STORE_PATH, clock=FakeClock(now))
        try:
            store.record_packages(peer_key(None, "10.0.0.9"), invalid=5)
        finally:
            await store.close()

    asyncio.run(count_an_address())
    assert main(["peers", "--cwd", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "│" in line]
    assert [row[:2] for row in rows] == [["-", "address 10.0.0.9"]]


def test_json(tmp_path: Path, now: float, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(fill(tmp_path, FakeClock(now), ["ws://10.0.0.1:1107"]))
    assert main(["peers", "--cwd", str(tmp_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    fields = [f.name for f in dataclasses.fields(PeerRecord)]
    assert [list(peer) for peer in data] == [[*fields, "score"]]
    assert data == [
        {
            "peer_id": PEER_ID,
            "urls": ["ws://10.0.0.1:1107"],
            "source": "bootstrap",
            "address": "10.0.0.1",
            "first_seen": now,
            "last_seen": now,
            "last_connected": now,
            "successes": 1,
            "failures": 0,
            "good_packages": 0,
            "invalid_packages": 0,
            "blocked_until": now + 3600,
            "score": 1.0,
        }
    ]


def test_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["id", "--cwd", str(tmp_path)]) == 0
    peer_id = capsys.readouterr().out.strip()
    assert is_peer_id(peer_id)
    assert Identity.load_or_create(tmp_path / KEY_FILE).peer_id == peer_id
    assert main(["id", "--cwd", str(tmp_path), "--log-level", "debug"]) == 0
    assert capsys.readouterr().out == f"{peer_id}\n"


def test_id_refuses_an_unsafe_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["id", "--cwd", str(tmp_path)]) == 0
    key = tmp_path / KEY_FILE
    key.chmod(0o644)
    capsys.readouterr()
    assert main(["id", "--cwd", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"trustp2p: error: {key} is accessible by group or others (mode 644); "
        f"run: chmod 600 {key}\n"
    )


async def _two_nodes_in(cwd: Path, **second_options: Any) -> tuple[str, str]:
    """Run two nodes in ``cwd`` at once, the second dialling the first; their peer ids."""
    first = Node(NodeOptions(cwd=cwd, server=True, port=0))
    async with first:
        assert first.url is not None and first.identity is not None
        second = Node(NodeOptions(cwd=cwd, client=True, peers=[first.url], **second_options))
        async with second:
            assert second.client is not None and second.identity is not None
            await second.client.wait_connected(1)
        return first.identity.peer_id, second.identity.peer_id


@pytest.mark.parametrize("name", [None, "relay"])
def test_id_and_peers_of_the_second_node_of_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str | None
) -> None:
    """Found by a tester: the README says a second node started in a directory while the
    first runs is identity/node-2.key with data/node-2/, but `id` and `peers` could only
    show the first. --name node-2 shows the second (or --name NAME, a named one)."""
    first, second = asyncio.run(_two_nodes_in(tmp_path, name=name))
    assert first != second
    cwd = ["--cwd", str(tmp_path)]
    name = name or "node-2"
    assert main(["id", *cwd]) == 0
    assert main(["id", *cwd, "--name", "node"]) == 0
    assert main(["id", *cwd, "--name", name]) == 0
    assert capsys.readouterr().out.split() == [first, first, second]
    assert main(["peers", *cwd, "--json"]) == 0
    assert [peer["peer_id"] for peer in json.loads(capsys.readouterr().out)] == [second]
    assert main(["peers", *cwd, "--name", name, "--json"]) == 0
    assert [peer["peer_id"] for peer in json.loads(capsys.readouterr().out)] == [first]
    # A name with no key where others are: said (a tester's typo read as an empty
    # store, or printed a new, wrong peer id).
    assert main(["peers", *cwd, "--name", "node-3"]) == 1
    known = ", ".join(sorted(["node", name]))
    assert f"no node named 'node-3' in {tmp_path} (known: {known})" in capsys.readouterr().err
    assert main(["id", *cwd, "--name", "node-3"]) == 0
    out, err = capsys.readouterr()
    assert f"no node named 'node-3' in {tmp_path} yet (known: {known}): its key is made" in err
    assert out.strip() not in (first, second)
    assert main(["id", *cwd, "--name", "../x"]) == 2  # click's usage error
    assert "Invalid value for '--name'" in capsys.readouterr().err


def test_an_ipv6_url_is_shown_as_it_is(
    tmp_path: Path, now: float, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by a tester: rich read "[fe80::1]" as markup and printed "ws://:1107".
    asyncio.run(fill(tmp_path, FakeClock(now), ["ws://[fe80::1]:1107"]))
    assert main(["peers", "--cwd", str(tmp_path)]) == 0
    assert "ws://[fe80::1]:1107" in capsys.readouterr().out


def test_forget_removes_a_url_that_never_worked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tester37 F1: a mistyped --connect URL, stored by an earlier version as a bootstrap
    URL (never forgotten for failing), was dialled by every later run; deleting
    data/peers.sqlite, blocks and history with it, was the only way out."""
    from trustp2p.identity import Identity, is_running

    good, typo = "ws://10.0.0.1:1107", "tcp://10.0.0.1:1107"

    async def as_before() -> None:
        store = await PeerStore.open(tmp_path / STORE_PATH)
        await store.add_urls([good, typo], PeerSource.BOOTSTRAP)
        await store.record_connected(peer_id=PEER_ID, url=good, address="10.0.0.1")
        await store.record_failure(typo)
        await store.close()

    asyncio.run(as_before())
    cwd = ["--cwd", str(tmp_path)]
    _, name, lock = Identity.claim(tmp_path)  # what a running node holds
    try:
        assert main(["peers", *cwd, "--forget", typo]) == 1
        assert "is running: stop it first" in capsys.readouterr().err
    finally:
        lock.close()
    assert not is_running(tmp_path, name)
    assert main(["peers", *cwd, "--forget", typo, "--forget", "ws://10.0.0.9:1107"]) == 1
    out, err = capsys.readouterr()
    assert out == f"forgot {typo}\n"
    assert err == "trustp2p: error: ws://10.0.0.9:1107 is not in the peer store\n"
    assert main(["peers", *cwd, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(peer["peer_id"], peer["urls"]) for peer in listed] == [(PEER_ID, [good])]
    # review50 R6: another spelling of a stored URL says which is stored; a URL given
    # twice is forgotten once (it said only "not in the peer store", exit 1)
    assert main(["peers", *cwd, "--forget", f"{good}/"]) == 1
    assert capsys.readouterr().err == (
        f"trustp2p: error: {good}/ is not in the peer store (as {good}? give it as listed)\n"
    )
    assert main(["peers", *cwd, "--forget", good, "--forget", good]) == 0  # its peer stays
    assert capsys.readouterr() == (f"forgot {good}\n", "")
    assert main(["peers", *cwd, "--json"]) == 0
    assert [(p["peer_id"], p["urls"]) for p in json.loads(capsys.readouterr().out)] == [
        (PEER_ID, [])
    ]
