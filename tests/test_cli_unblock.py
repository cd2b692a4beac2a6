"""Lifting blocks by hand: `PeerStore.unblock` and the `trustp2p unblock` command
(tester33 F10: a node's own bug blocked an honest peer, and nothing could lift it)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from trustp2p.apps.peers import pick_blocks
from trustp2p.cli import main
from trustp2p.identity import Identity, is_running
from trustp2p.protocol.scoring import Block
from trustp2p.storage.peerstore import STORE_PATH, PeerStore

from .conftest import FakeClock

ONE = "tpmzuhvlpymk6xo3epygfy5h4oeaejofef"
TWO = "tpmzuhvlpyaaaaaaaaaaaaaaaaaaaaaaaa"  # the same first ten characters as ONE
OTHER = "tp7777777777777777777777777777777q"


async def block_some(path: Path, clock: FakeClock) -> None:
    store = await PeerStore.open(path, clock=clock)
    try:
        await store.block(peer_id=ONE, reason="invalid packages", duration=3600)
        await store.block(peer_id=TWO, reason="two", duration=3600)
        await store.block(peer_id=OTHER, reason="other", duration=3600)
        await store.block(address="2001:db8::1", reason="handshakes", duration=3600)
        await store.block(address="10.0.0.9", reason="handshakes", duration=3600)
    finally:
        await store.close()


async def test_unblock_lifts_a_peer_and_an_address_and_writes_it_down(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    path = tmp_path / "peers.sqlite"
    await block_some(path, clock)
    store = await PeerStore.open(path, clock=clock)
    try:
        assert store.active_blocks() == 5
        assert await store.unblock(peer_id=ONE, address="2001:db8::ffff") == 2  # its /64
        assert not store.is_blocked(peer_id=ONE)
        assert not store.is_blocked(address="2001:db8::1")
        assert store.is_blocked(peer_id=TWO) and store.is_blocked(address="10.0.0.9")
        assert await store.unblock(peer_id=ONE) == 0  # not blocked any more
        assert await store.unblock(address="10.0.0.10") == 0  # never blocked
        with pytest.raises(ValueError, match=r"unblock\(\) needs a peer_id"):
            await store.unblock()
    finally:
        await store.close()
    reopened = await PeerStore.open(path, clock=clock)
    try:
        assert [key for _, key, _ in reopened.blocks()] == [OTHER, TWO, "10.0.0.9"]
    finally:
        await reopened.close()


async def test_a_block_over_already_is_not_counted_as_lifted(tmp_path: Path) -> None:
    clock = FakeClock(1000.0)
    store = await PeerStore.open(None, clock=clock)
    try:
        await store.block(peer_id=ONE, reason="r", duration=10)
        clock.advance(10)  # it ends at 1010, exclusive
        assert store.blocks() == []
        assert await store.unblock(peer_id=ONE) == 0
    finally:
        await store.close()


def test_keys_name_blocks_by_id_prefix_or_address() -> None:
    block = Block(2000.0, "r")
    rows = [("peer", ONE, block), ("peer", TWO, block), ("peer", OTHER, block)]
    rows += [("address", "10.0.0.9", block), ("address", "2001:db8::/64", block)]
    assert pick_blocks(rows, [ONE, "tp77", "2001:db8::42", "10.0.0.9"]) == (
        [rows[0], rows[2], rows[4], rows[3]],
        [],
    )
    assert pick_blocks(rows, ["2001:db8::/64"]) == ([rows[4]], [])
    chosen, errors = pick_blocks(rows, ["tpmzuhvlpy", "10.0.0.1", "", ONE, ONE])
    assert chosen == [rows[0]]  # named twice, lifted once
    assert errors == [
        "'tpmzuhvlpy' starts 2 blocked peer ids: give more of it",
        "'10.0.0.1' is not blocked",  # an address is no prefix of another
        "'' is not blocked",
    ]


def test_the_command_lists_then_lifts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(block_some(tmp_path / STORE_PATH, FakeClock(time.time())))
    assert main(["unblock", "--cwd", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    for key in (ONE, TWO, OTHER, "10.0.0.9", "2001:db8::/64"):
        assert key in listed
    assert main(["unblock", "--cwd", str(tmp_path), "tpmzuhvlpym", "2001:db8::7", "nobody"]) == 1
    out, err = capsys.readouterr()
    assert f"unblocked peer {ONE} (blocked until " in out and "invalid packages)" in out
    assert "unblocked address 2001:db8::/64" in out
    assert err == "trustp2p: error: 'nobody' is not blocked\n"
    assert main(["unblock", "--cwd", str(tmp_path), "--all"]) == 0
    assert capsys.readouterr().out.count("unblocked ") == 3
    assert main(["unblock", "--cwd", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no blocks in force\n"
    # Found by a tester: --all with nothing to lift said nothing; with keys, it took them
    # without a word.
    assert main(["unblock", "--cwd", str(tmp_path), "--all"]) == 0
    assert capsys.readouterr().out == "no blocks in force\n"
    assert main(["unblock", "--cwd", str(tmp_path), "--all", ONE]) == 2
    assert capsys.readouterr().err == "trustp2p: error: give KEYS or --all, not both\n"


def test_the_command_refuses_while_the_node_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(block_some(tmp_path / STORE_PATH, FakeClock(time.time())))
    assert not is_running(tmp_path)
    _, name, lock = Identity.claim(tmp_path)  # what a running node holds
    try:
        assert is_running(tmp_path, name)
        assert main(["unblock", "--cwd", str(tmp_path), ONE]) == 1
        assert "is running: stop it first" in capsys.readouterr().err
        assert main(["unblock", "--cwd", str(tmp_path)]) == 0  # listing is fine
        assert ONE in capsys.readouterr().out
    finally:
        lock.close()
    assert not is_running(tmp_path, name)
    assert main(["unblock", "--cwd", str(tmp_path), ONE]) == 0


def test_no_store_and_an_unknown_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["unblock", "--cwd", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "no blocks in force\n"
    assert main(["unblock", "--cwd", str(tmp_path), ONE]) == 1
    assert "is not blocked (no peer store yet)" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # nothing made
    Identity.load_or_create(tmp_path / "identity" / "node.key")
    assert main(["unblock", "--cwd", str(tmp_path), "--name", "other", ONE]) == 1
    assert "no node named 'other'" in capsys.readouterr().err
