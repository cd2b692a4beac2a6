"""Peer keys: built and read in one place."""

from __future__ import annotations

from trustp2p.protocol.peers import PeerKey, address_of_key, is_address_key, peer_key


def test_a_peer_with_an_id_is_known_by_it() -> None:
    key = peer_key("tpABC", "10.0.0.1")
    assert key == "tpABC"
    assert not is_address_key(key)
    assert address_of_key(key) is None


def test_a_peer_without_an_id_is_known_by_its_address() -> None:
    for address in ("10.0.0.1", "::1", "localhost"):
        key = peer_key(None, address)
        assert key == f"address:{address}"
        assert is_address_key(key)
        assert address_of_key(key) == address


def test_an_empty_id_is_no_id() -> None:
    assert peer_key("", "10.0.0.1") == PeerKey("address:10.0.0.1")
