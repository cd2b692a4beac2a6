"""The unsigned ``via`` of a gossip message (relay attribution): what a peer may send,
how a message carries it, and the tokens a node makes (attacker36 F2)."""

from __future__ import annotations

import contextlib
import dataclasses
import re

import pytest
from hypothesis import given, strategies as st

from trustp2p.exceptions import GossipError
from trustp2p.identity import Identity
from trustp2p.protocol.gossip import GossipMessage, sign_message
from trustp2p.protocol.gossip.via import (
    MAX_VIA_TOKENS,
    VIA_TOKEN_LENGTH,
    check_via,
    relay_token,
    sub_sources,
)

IDENTITY = Identity.generate()


def signed(via: str = "") -> GossipMessage:
    message = sign_message(IDENTITY, "chat", 1, 1_700_000_000_000, {"n": 1})
    return dataclasses.replace(message, via=via)


@pytest.mark.parametrize("via", ["", "a", "aB3_-", "x" * 16, "a.b.c", ".".join(["t"] * 8)])
def test_a_via_of_base64url_tokens_is_taken(via: str) -> None:
    assert check_via(via) == via


@pytest.mark.parametrize(
    "via",
    [None, 7, ["a"], "a..b", ".a", "a.", "x" * 17, "a b", "a/b", "é", ".".join(["t"] * 9)],
)
def test_anything_else_is_an_invalid_via(via: object) -> None:
    with pytest.raises(GossipError, match=r"^invalid via$"):
        check_via(via)


@given(st.one_of(st.text(max_size=200), st.integers(), st.none()))
def test_check_via_takes_or_refuses_with_gossip_error(value: object) -> None:
    with contextlib.suppress(GossipError):  # (anything else fails the test)
        assert check_via(value) == value


def test_a_message_carries_its_via_unsigned_and_relays_keep_it() -> None:
    message = signed("abc.def")
    body = message.to_body()
    assert body["via"] == "abc.def"
    read = GossipMessage.from_body("chat", body)
    assert read == message and read.via == read.relayed().via == "abc.def"
    other = read.with_via("x")
    assert other.via == "x" and other == read and other.hops == read.hops
    body["via"] = "other"  # not signed: another via reads as the same message
    assert GossipMessage.from_body("chat", body).id == message.id
    assert "via" not in signed().to_body()  # none: not sent (older peers' bodies)


def test_a_bad_via_makes_the_message_invalid_as_bad_hops_do() -> None:
    body = signed().to_body()
    body["via"] = "not a token"
    with pytest.raises(GossipError, match=r"^invalid via$"):
        GossipMessage.from_body("chat", body)
    body["via"] = None
    with pytest.raises(GossipError, match=r"^invalid via$"):
        GossipMessage.from_body("chat", body)


def test_a_token_is_short_stable_and_names_no_address() -> None:
    secret, other = b"s" * 16, b"o" * 16
    token = relay_token(secret, "192.0.2.1")
    assert len(token) == VIA_TOKEN_LENGTH and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert relay_token(secret, "192.0.2.1") == token  # the same for one source
    assert relay_token(secret, "192.0.2.2") != token
    assert relay_token(other, "192.0.2.1") != token  # another node's secret
    assert check_via(".".join([token] * MAX_VIA_TOKENS)) is not None


def test_sub_sources_are_the_first_tokens() -> None:
    assert sub_sources("", 3) == []
    assert sub_sources("a", 3) == ["a"]
    assert sub_sources("a.b.c.d.e", 3) == ["a", "b", "c"]


@pytest.mark.parametrize("text", ["plain", "é" * 10, "a" * 100 + "😀"])
def test_a_message_and_its_copies_carry_their_payloads_size(text: str) -> None:
    """The payload's size is computed once and taken over by a relay's copies (it was
    computed at each bound that counts it, about 11 times a message); other data is
    counted again (review53 L7: dataclasses.replace kept the old size)."""
    from trustp2p.node.gossip_log import from_logged, to_logged
    from trustp2p.protocol.jsontext import text_size

    message = sign_message(Identity.generate(), "chat", 1, 0, {"x": text})
    copies = [
        message,
        message.relayed(),
        message.with_via("token"),
        GossipMessage.from_body("chat", message.to_body()),
        from_logged(to_logged(message)),
        dataclasses.replace(message, hops=3),
    ]
    assert {m.data_size for m in copies} == {text_size(message.data)}
    assert copies[2] == message and copies[1].hops == 1  # (the size isn't compared)
    other = dataclasses.replace(message, data='{"x":"' + "😀" * 50 + '"}')
    assert other.data_size == text_size(other.data) != message.data_size
