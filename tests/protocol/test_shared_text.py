"""The process's table of shared texts: bounded, and no text from a peer interned
(review55 R2: CPython 3.12 never frees an interned string)."""

from __future__ import annotations

import secrets
import sys

from trustp2p.identity import Identity
from trustp2p.node.gossip_log import to_logged
from trustp2p.protocol.gossip import GossipMessage, sign_message
from trustp2p.protocol.shared_text import SharedText


def _copy(text: str) -> str:
    return "".join(list(text))  # equal, another object


def test_equal_texts_get_one_copy() -> None:
    table = SharedText()
    first = table.share(_copy("chat"))
    again = _copy("chat")
    assert again is not first and table.share(again) is first
    assert len(table) == 1


def test_a_long_text_is_not_kept() -> None:
    table = SharedText(max_text=8)
    long = "x" * 9
    assert table.share(long) is long and len(table) == 0


def test_the_table_starts_afresh_when_full_by_entries_or_characters() -> None:
    table = SharedText(max_entries=3, max_characters=10)
    for text in ("a", "b", "c"):
        table.share(text)
    assert len(table) == 3
    table.share("d")  # (a fourth entry: afresh, then d)
    assert len(table) == 1
    table.share("0123456789")  # (11 characters with d's)
    assert len(table) == 1
    kept = table.share(_copy("0123456789"))
    assert len(table) == 1 and kept == "0123456789"


def test_a_flood_of_distinct_texts_stays_bounded() -> None:
    table = SharedText(max_entries=100, max_characters=1_000)
    for _ in range(10_000):
        table.share(secrets.token_hex(8))
    assert len(table) <= 100


def test_a_peers_message_is_not_interned() -> None:
    """The payload, topic, origin and id of a message read from a peer, and its log
    record's key and signature, are shared through the table, not sys.intern."""
    payload = {"n": secrets.token_hex(16)}
    message = sign_message(Identity.generate(), "topic " + secrets.token_hex(8), 1, 1, payload)
    read = GossipMessage.from_body(message.topic, message.to_body())
    logged = to_logged(read)
    for text in (read.data, read.topic, read.origin, read.id, logged.key, logged.signature):
        copy = _copy(text)
        assert sys.intern(copy) is copy, text  # (interned before: the table's copy back)
