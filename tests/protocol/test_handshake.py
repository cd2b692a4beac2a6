"""The version talk and its compatibility check."""

from __future__ import annotations

from typing import Any

import pytest

from trustp2p.exceptions import HandshakeError, TrustP2PError
from trustp2p.protocol.handshake import (
    LEAST_PACKAGE_LIMIT,
    LIBRARY_NAME,
    MAX_PACKAGE_SIZE_KEY,
    PLAIN_PEER,
    SECURE_PEER,
    VERSION_EVENT,
    check_version,
    is_mode_mismatch,
    is_secure_mismatch,
    major_version,
    peer_package_limit,
    version_body,
)
from trustp2p.protocol.package import PackageType, body_to_json, build_package


def _refused(body: dict[str, Any], **kwargs: str) -> str:
    with pytest.raises(HandshakeError) as info:
        check_version(body, **kwargs)
    assert isinstance(info.value, TrustP2PError)
    return str(info.value)


def test_version_body_has_the_original_keys() -> None:
    body = version_body(library_version="1.0.0")
    assert list(body) == [
        "protocol_version",
        "alt",
        "library",
        "library_version",
        "program",
        "program_version",
    ]
    assert body == {
        "protocol_version": "1.0",
        "alt": "1",
        "library": "trustp2p",
        "library_version": "1.0.0",
        "program": None,
        "program_version": None,
    }
    assert LIBRARY_NAME == "trustp2p"


def test_the_version_body_says_the_largest_package_the_node_takes() -> None:
    body = version_body(library_version="1.0.0", max_package_size=65536)
    assert body == {**version_body(library_version="1.0.0"), MAX_PACKAGE_SIZE_KEY: 65536}
    assert peer_package_limit(body) == 65536
    assert MAX_PACKAGE_SIZE_KEY not in version_body(library_version="1.0.0", max_package_size=None)


@pytest.mark.parametrize(
    ("said", "taken"),
    [
        (None, None),  # not said: the original, an older trustp2p, no limit
        ("65536", None),
        (65536.0, None),
        (True, None),
        (2**20, 2**20),
        (10, LEAST_PACKAGE_LIMIT),  # no less than an introduction needs
        (-1, LEAST_PACKAGE_LIMIT),
    ],
)
def test_a_peers_limit_is_a_whole_number_of_at_least_1024(said: Any, taken: int | None) -> None:
    body = version_body(library_version="1.0.0")
    if said is not None:
        body[MAX_PACKAGE_SIZE_KEY] = said
    assert peer_package_limit(body) == taken


def test_version_talk_as_readme_describes() -> None:
    body = version_body(library_version="1.0.0", program="demo", program_version="2.1")
    talk = build_package(PackageType.TALK, VERSION_EVENT, body)
    assert (talk.type, talk.event, talk.tag) == (PackageType.TALK, "version", "")
    assert talk.body_json == (
        '{"protocol_version":"1.0","alt":"1","library":"trustp2p","library_version":"1.0.0",'
        '"program":"demo","program_version":"2.1"}'
    )


def test_version_body_options() -> None:
    body = version_body(library_version="0.1", alt="7", protocol_version="2.3")
    assert (body["alt"], body["protocol_version"]) == ("7", "2.3")
    assert body_to_json(body).startswith('{"protocol_version":"2.3","alt":"7",')


@pytest.mark.parametrize("theirs", ["1.0", "1.9", "1", "1.0.7"])
def test_same_major_version_is_accepted(theirs: str) -> None:
    assert check_version({"protocol_version": theirs, "alt": "1"}) is None


def test_own_version_body_is_accepted() -> None:
    assert check_version(version_body(library_version="1.0.0")) is None
    body = version_body(library_version="1.0.0", alt="5", protocol_version="3.1")
    assert check_version(body, alt="5", protocol_version="3.0") is None


@pytest.mark.parametrize(
    ("theirs", "message"),
    [
        (
            "2.0",
            "protocol version 2.0 is incompatible: the closing node speaks major"
            " version 1, the other 2",
        ),
        (
            "0.9",
            "protocol version 0.9 is incompatible: the closing node speaks major"
            " version 1, the other 0",
        ),
        (
            "10.0",
            "protocol version 10.0 is incompatible: the closing node speaks major"
            " version 1, the other 10",
        ),
    ],
)
def test_other_major_version_is_refused(theirs: str, message: str) -> None:
    assert _refused({"protocol_version": theirs, "alt": "1"}) == message


def test_major_version_is_compared_with_ours() -> None:
    message = _refused({"protocol_version": "1.0", "alt": "1"}, protocol_version="2.0")
    assert message == (
        "protocol version 1.0 is incompatible: the closing node speaks major version 2, the other 1"
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"alt": "1"},
        {"protocol_version": ""},
        {"protocol_version": 1.0},
        {"protocol_version": None},
    ],
    ids=["empty", "missing", "blank", "number", "null"],
)
def test_missing_protocol_version_is_refused(body: dict[str, Any]) -> None:
    assert _refused(body) == "version talk lacks protocol_version"


@pytest.mark.parametrize(
    ("alt", "message"),
    [
        ("2", "network alt '2' is another network: the closing node runs on '1'"),
        (1, "network alt 1 is another network: the closing node runs on '1'"),
        (None, "network alt None is another network: the closing node runs on '1'"),
    ],
)
def test_other_alt_is_refused(alt: Any, message: str) -> None:
    assert _refused({"protocol_version": "1.0", "alt": alt}) == message


def test_missing_alt_is_refused() -> None:
    refusal = "network alt None is another network: the closing node runs on '1'"
    assert _refused({"protocol_version": "1.0"}) == refusal


def test_alt_is_compared_with_ours() -> None:
    message = _refused({"protocol_version": "1.0", "alt": "1"}, alt="3")
    assert message == "network alt '1' is another network: the closing node runs on '3'"


def test_version_is_checked_before_alt() -> None:
    message = _refused({"protocol_version": "2.0", "alt": "9"})
    assert message.startswith("protocol version 2.0 is incompatible")


@pytest.mark.parametrize(
    ("version", "major"), [("1.0", "1"), ("1", "1"), ("12.3.4", "12"), ("", "")]
)
def test_major_version(version: str, major: str) -> None:
    assert major_version(version) == major


def test_mode_mismatch_reasons_name_the_sides_and_the_old_ones_still_count() -> None:
    """Both ends log the close reason: it says "the closing node" and "the other", not
    "this node", which the node that received it read as itself (found by a tester).
    0.1.0's reasons still count as a mismatch (a dial not retried soon)."""
    for reason in (PLAIN_PEER, SECURE_PEER):
        assert "the closing node" in reason and "this node" not in reason
        assert len(reason.encode()) <= 123  # a WebSocket close reason's limit
    for reason in (
        PLAIN_PEER,
        SECURE_PEER,
        "peer speaks plain trustp2p (secure=False); this node requires the secure channel",
        "peer speaks the secure channel; this node runs with secure=False",
        f"secure handshake failed: {PLAIN_PEER}",
    ):
        assert is_mode_mismatch(reason)
    assert not is_mode_mismatch("invalid handshake") and not is_mode_mismatch(None)
    for reason in (
        _refused({**version_body(library_version="1.0.0"), "alt": "2"}),
        _refused({**version_body(library_version="1.0.0"), "protocol_version": "2.0"}),
    ):
        assert is_mode_mismatch(reason) and not is_secure_mismatch(reason)
    assert is_secure_mismatch(PLAIN_PEER) and not is_secure_mismatch(None)
