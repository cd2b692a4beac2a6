"""
The two readers of a frame agree: the hand-written one for the canonical layout and
``protobuf`` for everything else (``package_reader.canonical_fields`` and
``package_reader.protobuf_fields``). Whatever the first one reads, the second reads the
same, payload (field 7) included.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, strategies as st

from trustp2p.exceptions import PackageError
from trustp2p.protocol.package import (
    Package,
    PackageType,
    Tag,
    build_package,
    decode,
    encode,
)
from trustp2p.protocol.package_reader import MAX_UNKNOWN_BYTES, canonical_fields, protobuf_fields

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
# Absent, small, and past one, two and three varint bytes of length.
_payloads = st.one_of(
    st.just(b""),
    st.binary(max_size=40),
    st.builds(bytes, st.sampled_from([127, 128, 16_383, 16_384, 70_000])),
)


def _protobuf_or_error(data: bytes) -> object:
    try:
        return protobuf_fields(data, None)
    except PackageError as exc:
        return exc


def _assert_agree(data: bytes) -> bool:
    """Both readers read the same, if the hand-written one reads anything; returns
    whether it did."""
    fields = canonical_fields(data)
    if fields is not None:
        assert fields == _protobuf_or_error(data)
    return fields is not None


@st.composite
def _packages(draw: st.DrawFn) -> Package:
    return Package(
        draw(st.sampled_from(list(PackageType))),
        draw(_text),
        {},
        Tag(draw(_text)),
        draw(_text),
        draw(_text),
        body_json=draw(_text) + "x" * draw(st.sampled_from([0, 100, 200, 5000, 20_000])),
        payload=draw(_payloads),
    )


@given(_packages())
def test_every_encoded_package_is_read_by_hand_as_protobuf_reads_it(package: Package) -> None:
    assert _assert_agree(encode(package))


@given(_packages(), st.data())
def test_a_changed_byte_is_read_the_same_or_left_to_protobuf(
    package: Package, data: st.DataObject
) -> None:
    frame = bytearray(encode(package))
    index = data.draw(st.integers(0, len(frame) - 1))
    frame[index] = data.draw(st.integers(0, 255))
    _assert_agree(bytes(frame))


@given(_packages(), st.binary(min_size=1, max_size=8), st.data())
def test_inserted_or_cut_bytes_are_read_the_same_or_left_to_protobuf(
    package: Package, extra: bytes, data: st.DataObject
) -> None:
    frame = encode(package)
    index = data.draw(st.integers(0, len(frame)))
    _assert_agree(frame[:index] + extra + frame[index:])
    _assert_agree(frame[:index])
    _assert_agree(frame + extra)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_read_the_same_or_left_to_protobuf(data: bytes) -> None:
    _assert_agree(data)


@pytest.mark.parametrize(
    "sequence",
    [
        b"\xf4\x8f\xbf\xbf",  # U+10FFFF, the last code point
        b"\xef\xbf\xbe",  # U+FFFE, a noncharacter: valid UTF-8
        b"\xf4\x90\x80\x80",  # past U+10FFFF
        b"\xed\xa0\x80",  # a surrogate
        b"\xc0\x80",  # an overlong NUL
        b"\xe0\x80\xaf",  # an overlong slash
        b"\x80",  # a lone continuation byte
        b"\xc3",  # a truncated sequence
    ],
)
@pytest.mark.parametrize("field", ["event", "body", "tag", "version", "alt"])
def test_utf8_edge_cases_are_read_as_protobuf_reads_them(sequence: bytes, field: str) -> None:
    values: dict[str, Any] = {"event": b"e", "body": b"{}", "tag": b"t", "version": b"1.0"}
    values["alt"] = b"1"
    values[field] = values[field] + sequence
    frame = b"".join(
        (
            b"\x0a" + bytes((len(values["version"]),)) + values["version"],
            b"\x12" + bytes((len(values["alt"]),)) + values["alt"],
            b"\x18\x14",
            b"\x22" + bytes((len(values["event"]),)) + values["event"],
            b"\x2a" + bytes((len(values["body"]),)) + values["body"],
            b"\x32" + bytes((len(values["tag"]),)) + values["tag"],
        )
    )
    _assert_agree(frame)


@pytest.mark.parametrize(
    "frame",
    [
        # A length of 2 written in two bytes: protobuf reads it; the hand reader leaves it.
        b"\x0a\x031.0\x12\x011\x18\x14\x22\x01e\x2a\x82\x00{}\x32\x01t",
        # The type twice: protobuf keeps the last value.
        b"\x0a\x031.0\x12\x011\x18\x14\x18\x1e\x22\x01e\x2a\x02{}\x32\x01t",
        # The tag before the body.
        b"\x0a\x031.0\x12\x011\x18\x14\x22\x01e\x32\x01t\x2a\x02{}",
    ],
    ids=["long-length", "type-twice", "out-of-order"],
)
def test_other_layouts_are_left_to_protobuf_and_still_read(frame: bytes) -> None:
    assert canonical_fields(frame) is None
    assert decode(frame).event == "e"


def test_a_large_body_is_read_by_hand() -> None:
    package = build_package(PackageType.TALK, "big", {"data": "x" * 300_000})
    frame = encode(package)
    assert _assert_agree(frame)
    assert decode(frame, max_size=None) == package


@pytest.mark.parametrize(
    "frame",
    [
        # The payload before the tag.
        b"\x0a\x031.0\x12\x011\x18\x14\x22\x01e\x2a\x02{}\x3a\x01p\x32\x01t",
        # Something after the payload.
        b"\x0a\x031.0\x12\x011\x18\x14\x22\x01e\x2a\x02{}\x32\x01t\x3a\x01p\x40\x01",
        # The payload twice: protobuf keeps the last value.
        b"\x0a\x031.0\x12\x011\x18\x14\x22\x01e\x2a\x02{}\x32\x01t\x3a\x01p\x3a\x01q",
        # The payload's length in two bytes where one would do.
        b"\x0a\x031.0\x12\x011\x18\x14\x22\x01e\x2a\x02{}\x32\x01t\x3a\x81\x00p",
    ],
    ids=["before-tag", "field-after", "twice", "long-length"],
)
def test_other_payload_layouts_are_left_to_protobuf_and_still_read(frame: bytes) -> None:
    assert canonical_fields(frame) is None
    assert decode(frame).payload in (b"p", b"q")


def test_a_large_payload_is_read_by_hand() -> None:
    package = build_package(PackageType.REQUEST, "big", {}, payload=bytes(range(256)) * 1024)
    frame = encode(package)
    assert _assert_agree(frame)
    decoded = decode(frame)
    assert decoded == package
    assert type(decoded.payload) is bytes


_FRAME = b"\x0a\x031.0\x12\x011\x18\x1e\x22\x04echo\x2a\x02{}\x32\x01t"  # a REQUEST


def _varint_fields(count: int) -> bytes:
    return b"\x48\x01" * count  # field 9, varint 1: two bytes each


@pytest.mark.parametrize(
    "unknown",
    [
        _varint_fields(MAX_UNKNOWN_BYTES // 2 + 1),  # many small fields
        _varint_fields(400_000),  # an attacker's: 0.35-0.5 s to read, one object a field
        b"\x52\x82\x02" + b"x" * 258,  # one field 10 of 258 bytes
    ],
    ids=["just-over", "flood", "one-large"],
)
def test_unknown_fields_past_their_bound_are_refused_unread(unknown: bytes) -> None:
    with pytest.raises(PackageError, match=r"bytes of unknown fields \(at most 256\)") as caught:
        decode(_FRAME + unknown)
    # What it claims to be, so that a request is answered (review66 A4).
    error = caught.value
    assert (error.package_type, error.event, error.tag) == (PackageType.REQUEST, "echo", "t")


def test_unknown_fields_within_their_bound_are_ignored() -> None:
    package = decode(_FRAME + _varint_fields(MAX_UNKNOWN_BYTES // 2))
    assert (package.type, package.event, package.tag) == (PackageType.REQUEST, "echo", "t")


def test_an_unknown_type_within_the_bound_is_still_refused() -> None:
    with pytest.raises(PackageError, match="unknown package type 99"):
        decode(_FRAME + b"\x18\x63")
