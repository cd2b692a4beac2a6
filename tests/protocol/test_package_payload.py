"""Packages with a payload (trustp2p's field 7): encoding, decoding and tags."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, strategies as st

from trustp2p.exceptions import PackageError
from trustp2p.protocol.package import (
    DEFAULT_MAX_PACKAGE_SIZE,
    Package,
    PackageType,
    Tag,
    build_package,
    compute_tag,
    decode,
    encode,
    random_tag,
)
from trustp2p.protocol.package_pb2 import TrustNoteP2p

from ..compiled import refused_type

_KIB_256 = bytes(range(256)) * 1024


def _protobuf(package: Package) -> bytes:
    message = TrustNoteP2p(
        version=package.version,
        alt=package.alt,
        type=package.type,  # type: ignore[arg-type]
        event=package.event,
        body=package.body_json,
        tag=package.tag,
    )
    if package.payload:
        message.payload = package.payload
    return message.SerializeToString()


@given(
    type_=st.sampled_from(list(PackageType)),
    event=st.text(max_size=20),
    payload=st.binary(max_size=300),
    padding=st.sampled_from([0, 127, 128, 20_000]),
)
def test_encode_is_protobuf_byte_for_byte(
    type_: PackageType, event: str, payload: bytes, padding: int
) -> None:
    package = build_package(type_, event, {}, tag="t", payload=payload + b"\0" * padding)
    assert encode(package) == _protobuf(package)
    assert decode(encode(package), max_size=None) == package


def test_an_empty_payload_is_no_payload() -> None:
    with_empty = build_package(PackageType.REQUEST, "e", {"a": 1}, payload=b"")
    without = build_package(PackageType.REQUEST, "e", {"a": 1})
    assert encode(with_empty) == encode(without)
    assert with_empty.tag == without.tag == compute_tag(PackageType.REQUEST, "e", '{"a":1}')
    assert decode(encode(without)).payload == b""


@pytest.mark.parametrize("package_type", [PackageType.REQUEST, PackageType.TALK])
def test_a_256_kib_payload_round_trips(package_type: PackageType) -> None:
    package = build_package(package_type, "e", {"k": "v"}, payload=_KIB_256)
    decoded = decode(encode(package))
    assert decoded == package
    assert decoded.payload == _KIB_256
    assert type(decoded.payload) is bytes
    assert decoded.body == {"k": "v"}


def _frame_of_size(size: int) -> bytes:
    """A REQUEST frame of exactly ``size`` bytes, most of it payload."""
    head = encode(build_package(PackageType.REQUEST, "e", {}, payload=b"x"))
    payload = b"x" * (size - len(head) + 1)
    frame = encode(build_package(PackageType.REQUEST, "e", {}, payload=payload))
    payload = payload[: len(payload) - (len(frame) - size)]  # the length's bytes
    frame = encode(build_package(PackageType.REQUEST, "e", {}, payload=payload))
    assert len(frame) == size
    return frame


def test_max_size_bounds_the_whole_frame_payload_included() -> None:
    frame = _frame_of_size(DEFAULT_MAX_PACKAGE_SIZE)
    assert len(decode(frame).payload) > DEFAULT_MAX_PACKAGE_SIZE - 100
    with pytest.raises(PackageError, match="exceeds limit"):
        decode(_frame_of_size(DEFAULT_MAX_PACKAGE_SIZE + 1))
    with pytest.raises(PackageError, match="exceeds limit"):
        decode(frame, max_size=len(frame) - 1)


@pytest.mark.parametrize("package_type", [PackageType.REQUEST, PackageType.HEARTBEAT_PING])
def test_a_request_with_a_payload_gets_a_random_tag(package_type: PackageType) -> None:
    first = build_package(package_type, "e", {}, payload=b"same")
    second = build_package(package_type, "e", {}, payload=b"same")
    assert first.tag != second.tag  # never merged
    assert len(first.tag) == 32
    assert len(base64.b64decode(first.tag, validate=True)) == 24
    assert first.tag != compute_tag(package_type, "e", "{}")


def test_random_tags_differ() -> None:
    assert len({random_tag() for _ in range(100)}) == 100


def test_given_tags_and_other_types_keep_their_tags_with_a_payload() -> None:
    assert build_package(PackageType.REQUEST, "e", {}, tag="x", payload=b"p").tag == "x"
    assert build_package(PackageType.RESPONSE, "e", {}, tag="x", payload=b"p").tag == "x"
    assert build_package(PackageType.TALK, "e", {}, payload=b"p").tag == ""
    with pytest.raises(ValueError, match="needs the tag"):
        build_package(PackageType.RESPONSE, "e", {}, payload=b"p")


@pytest.mark.parametrize("payload", [bytearray(b"p"), memoryview(b"p"), "p"])
def test_build_package_refuses_a_payload_that_is_not_bytes(payload: object) -> None:
    got = type(payload).__name__
    with pytest.raises(TypeError, match=refused_type("payload", "bytes", got)):
        build_package(PackageType.TALK, "e", {}, payload=payload)  # type: ignore[arg-type]


def test_packages_differ_by_payload() -> None:
    package = Package(PackageType.TALK, "e", {}, payload=b"a")
    assert package != Package(PackageType.TALK, "e", {}, payload=b"b")
    assert package == Package(PackageType.TALK, "e", {}, payload=b"a")


def test_str_and_repr_give_the_payload_size_not_its_bytes() -> None:
    package = Package(PackageType.TALK, "e", {}, Tag(""), body_json="{}", payload=b"abc")
    assert str(package) == "TALK 'e' {} +3 bytes"
    assert repr(package).endswith("alt='1', payload=<3 bytes>)")
    assert "payload" not in repr(Package(PackageType.TALK, "e", {}))
