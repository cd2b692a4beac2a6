"""Packages: tag vectors, captured bytes, JSON bodies and strict decoding."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, strategies as st

from trustp2p.exceptions import PackageError
from trustp2p.protocol import package as package_module
from trustp2p.protocol.package import (
    DEFAULT_ALT,
    DEFAULT_MAX_PACKAGE_SIZE,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    RESPONSE_TYPES,
    Package,
    PackageType,
    Tag,
    body_to_json,
    build_package,
    compute_tag,
    decode,
    encode,
)
from trustp2p.protocol.package_pb2 import TrustNoteP2p

from ..compiled import refused_type

# A verbatim copy of shared/protocol/tag-vectors.json, so that tests run on a clean clone.
VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text(encoding="utf-8"))
PING_HEX = VECTORS["captures"]["ping_hex"]
PONG_HEX = VECTORS["captures"]["pong_hex"]
PING_TAG = VECTORS["vectors"][0]["tag"]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string_field(number: int, value: bytes) -> bytes:
    """A length-delimited field; appended to a message, it replaces an earlier value."""
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _wire(
    type_: int | None = PackageType.REQUEST, event: str = "e", body: str = "{}", tag: str = "t"
) -> bytes:
    """A serialized TrustNoteP2p; ``type_=None`` leaves the type field out."""
    message = TrustNoteP2p(event=event, body=body, tag=tag)
    if type_ is not None:
        message.type = type_  # type: ignore[assignment]
    return message.SerializeToString()


def _decode_error(data: bytes | str, **kwargs: Any) -> PackageError:
    with pytest.raises(PackageError) as info:
        decode(data, **kwargs)
    assert type(info.value) is PackageError
    return info.value


# Tag vectors


def _source(vector: dict[str, Any]) -> str:
    """The README's source string S, written out independently of the implementation."""
    parts = [
        ("alt", "s", VECTORS["alt"]),
        ("body", "s", vector["body_json"]),
        ("event", "s", vector["event"]),
        ("type", "n", str(vector["type"])),
        ("version", "s", VECTORS["version"]),
    ]
    return "\0".join("\0".join(part) for part in parts)


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["tag"])
def test_compute_tag_reproduces_vector(vector: dict[str, Any]) -> None:
    tag = compute_tag(
        PackageType(vector["type"]),
        vector["event"],
        vector["body_json"],
        version=VECTORS["version"],
        alt=VECTORS["alt"],
    )
    assert tag == vector["tag"]
    assert len(tag) == 44


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["tag"])
def test_compute_tag_hashes_the_source_string(
    vector: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[bytes] = []  # what was hashed, in the parts it was given
    real_sha256 = hashlib.sha256

    class Spy:
        def __init__(self, data: bytes) -> None:
            self._hash = real_sha256(data)
            hashed.append(data)

        def update(self, data: bytes) -> None:
            hashed.append(data)
            self._hash.update(data)

        def digest(self) -> bytes:
            return self._hash.digest()

    monkeypatch.setattr(package_module.hashlib, "sha256", Spy)
    tag = compute_tag(PackageType(vector["type"]), vector["event"], vector["body_json"])

    source = _source(vector).encode()
    assert b"".join(hashed) == source
    if "source_hex" in vector:
        assert source == bytes.fromhex(vector["source_hex"])
    digest = real_sha256(source).digest()
    if "sha256_hex" in vector:
        assert digest == bytes.fromhex(vector["sha256_hex"])
    assert tag == base64.b64encode(digest).decode()


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["tag"])
def test_build_package_reproduces_vector_from_body(vector: dict[str, Any]) -> None:
    body = json.loads(vector["body_json"])
    package = build_package(PackageType(vector["type"]), vector["event"], body)
    assert package.body_json == vector["body_json"]
    assert package.tag == vector["tag"]


def test_vectors_differ_only_by_key_order() -> None:
    third, fourth = VECTORS["vectors"][2], VECTORS["vectors"][3]
    assert json.loads(third["body_json"]) == json.loads(fourth["body_json"])
    assert third["tag"] != fourth["tag"]


def test_defaults_match_vectors() -> None:
    assert (PROTOCOL_VERSION, DEFAULT_ALT) == (VECTORS["version"], VECTORS["alt"])


def test_compute_tag_depends_on_version_and_alt() -> None:
    tags = {
        compute_tag(PackageType.REQUEST, "e", "{}"),
        compute_tag(PackageType.REQUEST, "e", "{}", version="1.1"),
        compute_tag(PackageType.REQUEST, "e", "{}", alt="2"),
    }
    assert len(tags) == 3


# Captured bytes


def test_encode_ping_reproduces_capture() -> None:
    ping = build_package(PackageType.HEARTBEAT_PING, "ping", {})
    assert ping.tag == PING_TAG
    data = encode(ping)
    assert data.hex() == PING_HEX
    assert len(data) == 66


def test_encode_pong_reproduces_capture() -> None:
    pong = build_package(PackageType.HEARTBEAT_PONG, "pong", {"sleep": False}, tag=PING_TAG)
    data = encode(pong)
    assert data.hex() == PONG_HEX
    assert len(data) == 79


def test_encode_without_body_json_serializes_body() -> None:
    pong = Package(PackageType.HEARTBEAT_PONG, "pong", {"sleep": False}, PING_TAG)
    assert encode(pong).hex() == PONG_HEX


@pytest.mark.parametrize(
    ("hex_", "type_", "event", "body", "body_json"),
    [
        (PING_HEX, PackageType.HEARTBEAT_PING, "ping", {}, "{}"),
        (PONG_HEX, PackageType.HEARTBEAT_PONG, "pong", {"sleep": False}, '{"sleep":false}'),
    ],
    ids=["ping", "pong"],
)
def test_decode_capture(
    hex_: str, type_: PackageType, event: str, body: dict[str, Any], body_json: str
) -> None:
    package = decode(bytes.fromhex(hex_))
    assert package.type is type_
    assert package.event == event
    assert package.body == body
    assert package.tag == PING_TAG
    assert package.version == "1.0"
    assert package.alt == "1"
    assert package.body_json == body_json


def test_str_of_package() -> None:
    assert str(decode(bytes.fromhex(PONG_HEX))) == (
        f"HEARTBEAT_PONG 'pong' tag={PING_TAG} {{\"sleep\":false}}"
    )
    assert str(Package(PackageType.TALK, "hi", {"a": 1})) == "TALK 'hi' {\"a\":1}"


# body_to_json


def test_body_to_json_is_compact_in_caller_order() -> None:
    body = {"z": 1, "a": [1, 2.5, None], "m": {"y": True, "b": "x"}}
    assert body_to_json(body) == '{"z":1,"a":[1,2.5,null],"m":{"y":true,"b":"x"}}'


def test_body_to_json_keeps_non_ascii() -> None:
    assert body_to_json({"u": "héllo €", "e": "😀"}) == '{"u":"héllo €","e":"😀"}'


def test_body_to_json_keeps_integral_floats() -> None:
    # Python writes 1.0 where JavaScript writes 1: such a request gets another tag.
    assert body_to_json({"n": 1.0}) == '{"n":1.0}'
    as_float = build_package(PackageType.REQUEST, "bench", {"n": 1.0})
    as_int = build_package(PackageType.REQUEST, "bench", {"n": 1})
    assert as_int.tag == VECTORS["vectors"][1]["tag"]
    assert as_float.tag != as_int.tag


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_body_to_json_refuses_non_finite_floats(value: float) -> None:
    with pytest.raises(ValueError, match=r"^Out of range float values are not JSON compliant"):
        body_to_json({"n": value})


@pytest.mark.parametrize(
    ("body", "name"), [([], "list"), (None, "NoneType|None"), ("{}", "str"), ((), "tuple")]
)
def test_body_to_json_refuses_non_dict(body: Any, name: str) -> None:
    with pytest.raises(TypeError, match=refused_type("body", "dict", name)):
        body_to_json(body)


def test_body_to_json_refuses_unserializable_value() -> None:
    with pytest.raises(TypeError, match=r"^Object of type set is not JSON serializable$"):
        body_to_json({"s": {1}})


# build_package


@pytest.mark.parametrize("type_", sorted(REQUEST_TYPES))
def test_build_request_computes_tag(type_: PackageType) -> None:
    package = build_package(type_, "e", {"k": "v"})
    assert package.tag == compute_tag(type_, "e", '{"k":"v"}')
    assert package.body_json == '{"k":"v"}'
    assert (package.version, package.alt) == ("1.0", "1")


def test_build_request_with_other_version_and_alt() -> None:
    package = build_package(PackageType.REQUEST, "e", {}, version="1.5", alt="7")
    assert package.tag == compute_tag(PackageType.REQUEST, "e", "{}", version="1.5", alt="7")
    assert (package.version, package.alt) == ("1.5", "7")


def test_build_request_keeps_given_tag() -> None:
    assert build_package(PackageType.REQUEST, "e", {}, tag="mine").tag == "mine"


@pytest.mark.parametrize("type_", sorted(RESPONSE_TYPES))
def test_build_response_needs_tag(type_: PackageType) -> None:
    message = f"a {type_.name} package needs the tag of the request it answers"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_package(type_, "e", {})
    assert build_package(type_, "e", {}, tag="abc").tag == "abc"


@pytest.mark.parametrize("type_", [PackageType.TALK, PackageType.SYSTEM])
def test_build_other_types_get_empty_tag(type_: PackageType) -> None:
    assert build_package(type_, "version", {"a": 1}).tag == ""


def test_build_package_refuses_non_str_event() -> None:
    with pytest.raises(TypeError, match=refused_type("event", "str", "bytes")):
        build_package(PackageType.TALK, b"e", {})  # type: ignore[arg-type]


def test_build_package_refuses_non_dict_body() -> None:
    with pytest.raises(TypeError, match=refused_type("body", "dict", "list")):
        build_package(PackageType.TALK, "e", [1])  # type: ignore[arg-type]


# decode: strictness


def test_decode_refuses_text_frame() -> None:
    error = _decode_error(bytes.fromhex(PING_HEX).decode("latin-1"))
    assert str(error) == "text frame of 66 characters refused: packages travel in binary frames"


def test_decode_refuses_oversize_package() -> None:
    data = bytes.fromhex(PING_HEX)
    error = _decode_error(data, max_size=65)
    assert str(error) == "package of 66 bytes exceeds limit of 65 bytes"
    assert error.reason == str(error)
    assert decode(data, max_size=66).event == "ping"


def test_decode_default_limit_is_one_mib() -> None:
    assert DEFAULT_MAX_PACKAGE_SIZE == 2**20

    def wire(filler: int) -> bytes:
        return _wire(body='{"x":"' + "a" * filler + '"}')

    filler = 2**20 + 1 - (len(wire(2**19)) - 2**19)  # same length prefix size for both
    assert len(wire(filler - 1)) == 2**20
    assert decode(wire(filler - 1)).body == {"x": "a" * (filler - 1)}
    data = wire(filler)
    error = _decode_error(data)
    assert str(error) == "package of 1048577 bytes exceeds limit of 1048576 bytes"
    assert decode(data, max_size=None).body == {"x": "a" * filler}


@pytest.mark.parametrize(
    "data",
    [b"\xff", bytes.fromhex(PING_HEX)[:-1], b"\x22\x05ab", b"\x0b" * 200],
    ids=["bad-varint", "truncated", "short-string", "deep-groups"],
)
def test_decode_refuses_malformed_protobuf(data: bytes) -> None:
    assert str(_decode_error(data)) == f"malformed protobuf message of {len(data)} bytes"


@pytest.mark.parametrize(
    ("data", "missing"),
    [
        (b"", "event, body, tag"),
        (_string_field(4, b"e"), "body, tag"),
        (_string_field(4, b"e") + _string_field(5, b"{}"), "tag"),
        (_string_field(5, b"{}") + _string_field(6, b"t"), "event"),
    ],
)
def test_decode_refuses_missing_required_fields(data: bytes, missing: str) -> None:
    error = _decode_error(data)
    assert str(error) == f"package lacks required field(s): {missing}"
    assert (error.package_type, error.event, error.tag) == (None, None, None)


def test_decode_optional_fields_take_defaults() -> None:
    package = decode(_string_field(4, b"e") + _string_field(5, b"{}") + _string_field(6, b""))
    assert package == Package(PackageType.SYSTEM, "e", {}, "", "1.0", "1")


@pytest.mark.parametrize("value", [1, 9, 12, 32, 2**31 - 1])
def test_decode_refuses_unknown_package_type(value: int) -> None:
    error = _decode_error(_varint_field(3, value) + _wire(type_=None))
    assert str(error) == f"unknown package type {value}"
    assert (error.package_type, error.event, error.tag) == (None, None, None)


def test_decode_refuses_unknown_package_type_before_known_one() -> None:
    # Last-wins decoders would read TALK; a frame that carries any unknown type is refused.
    error = _decode_error(_varint_field(3, 9) + _wire(type_=PackageType.TALK, tag=""))
    assert str(error) == "unknown package type 9"


def test_decode_refuses_unknown_package_type_after_known_one() -> None:
    error = _decode_error(_wire(type_=PackageType.TALK) + _varint_field(3, 9))
    assert str(error) == "unknown package type 9"


@pytest.mark.parametrize(
    ("field", "wire_type"),
    [(_string_field(3, b"x"), 2), (b"\x1b\x1c", 3)],
    ids=["length-delimited", "group"],
)
def test_decode_type_with_wrong_wire_type_has_clean_message(field: bytes, wire_type: int) -> None:
    error = _decode_error(_wire(type_=PackageType.SYSTEM) + field)
    assert str(error) == f"package type has wire type {wire_type}, not varint"


def test_decode_ignores_unknown_fields() -> None:
    data = bytes.fromhex(PING_HEX) + _string_field(8, b"extra") + _varint_field(99, 5)
    assert decode(data) == decode(bytes.fromhex(PING_HEX))


@pytest.mark.parametrize(
    ("number", "message", "attributes"),
    [
        # With the tag, so that a request is answered (found by an attacker's test).
        (4, "event is not valid UTF-8", (PackageType.TALK, None, "t")),
        (6, "tag is not valid UTF-8", (PackageType.TALK, "e", None)),
        (1, "version or alt is not valid UTF-8", (PackageType.TALK, "e", "t")),
        (2, "version or alt is not valid UTF-8", (PackageType.TALK, "e", "t")),
        (5, "body is not valid UTF-8", (PackageType.TALK, "e", "t")),
    ],
    ids=["event", "tag", "version", "alt", "body"],
)
def test_decode_refuses_invalid_utf8(
    number: int, message: str, attributes: tuple[Any, ...]
) -> None:
    data = _wire(type_=PackageType.TALK) + _string_field(number, b"\xc3\x28")
    error = _decode_error(data)
    assert str(error) == message
    assert (error.package_type, error.event, error.tag) == attributes
    assert error.package_type is PackageType.TALK


@pytest.mark.parametrize("type_", sorted(REQUEST_TYPES))
def test_decode_refuses_request_without_tag(type_: PackageType) -> None:
    error = _decode_error(_wire(type_=type_, event="ask", tag=""))
    assert str(error) == f"{type_.name} package 'ask' has no tag"
    assert (error.package_type, error.event, error.tag) == (type_, "ask", None)


@pytest.mark.parametrize("type_", [PackageType.SYSTEM, PackageType.TALK, *RESPONSE_TYPES])
def test_decode_accepts_other_types_without_tag(type_: PackageType) -> None:
    package = decode(_wire(type_=type_, tag=""))
    assert (package.type, package.tag) == (type_, "")


BAD_JSON = "body is not valid JSON: "


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", BAD_JSON + "Expecting property name enclosed in double quotes at position 1"),
        ("", BAD_JSON + "Expecting value at position 0"),
        ("{}x", BAD_JSON + "Extra data at position 2"),
        ("[1,2]", "body is not a JSON object but an array"),
        ('"text"', "body is not a JSON object but a string"),
        ("42", "body is not a JSON object but a number"),
        ("-0.5", "body is not a JSON object but a number"),
        ("null", "body is not a JSON object but null"),
        ("true", "body is not a JSON object but a boolean"),
        ('{"n":NaN}', BAD_JSON + "NaN is not valid JSON"),
        ('{"n":Infinity}', BAD_JSON + "Infinity is not valid JSON"),
        ('{"n":-Infinity}', BAD_JSON + "-Infinity is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "body is nested too deeply"),
        ('{"a":' * 50_000 + "1" + "}" * 50_000, "body is nested too deeply"),
        ('{"a":1e999}', "body can't be written again as JSON: a number out of range"),
    ],
    ids=lambda value: value[:12],
)
def test_decode_refuses_bad_body(body: str, message: str) -> None:
    error = _decode_error(_wire(type_=PackageType.REQUEST, event="ask", body=body, tag="T"))
    assert str(error) == message
    # The frame was read far enough to answer the broken request.
    assert (error.package_type, error.event, error.tag) == (PackageType.REQUEST, "ask", "T")


@pytest.mark.parametrize("digits", [401, 4299, 5000])
def test_decode_refuses_too_long_integer(digits: int) -> None:
    # Past 400 digits (a41 F2: 4,299-digit integers, 126 ms a MiB to read), and past
    # Python's own 4,300, said without its advice on its API.
    error = _decode_error(_wire(body='{"n":' + "9" * digits + "}"))
    assert error.reason == BAD_JSON + f"an integer of {digits} digits (at most 400)"
    assert (error.package_type, error.event, error.tag) == (PackageType.REQUEST, "e", "t")


def test_decode_keeps_body_json_as_received() -> None:
    body_json = '{ "b" : 1 , "a" : "é" }'
    package = decode(_wire(type_=PackageType.TALK, body=body_json, tag=""))
    assert package.body == {"b": 1, "a": "é"}
    assert list(package.body) == ["b", "a"]
    assert package.body_json == body_json


# Round trips


@pytest.mark.parametrize("type_", list(PackageType))
def test_round_trip_every_type(type_: PackageType) -> None:
    tag = "t" * 44 if type_ in RESPONSE_TYPES else None
    package = build_package(type_, "event", {"k": [1, "é", None]}, tag=tag)
    decoded = decode(encode(package))
    assert decoded == package
    assert decoded.type is type_
    assert decoded.body_json == package.body_json


# Property tests

_utf8_text = st.text(alphabet=st.characters(codec="utf-8"))

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _utf8_text,
    # Small containers: unbounded ones overshoot max_leaves and hypothesis retries the
    # draw, which made generating the examples take seconds.
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_utf8_text, children, max_size=4)
    ),
    max_leaves=12,
)
_json_bodies = st.dictionaries(_utf8_text, _json_values, max_size=6)


def _decode_or_error(data: bytes) -> Package | PackageError:
    """Any exception other than PackageError propagates and fails the test."""
    try:
        return decode(data)
    except PackageError as exc:
        return exc


@given(st.binary())
def test_decode_arbitrary_bytes_returns_package_or_raises_package_error(data: bytes) -> None:
    result = _decode_or_error(data)
    if isinstance(result, PackageError):
        assert result.reason
    else:
        assert isinstance(result, Package)
        assert type(result.body) is dict


@st.composite
def _fuzzed_messages(draw: st.DrawFn) -> bytes:
    """Valid or nearly valid TrustNoteP2p messages, with raw fields appended."""
    message = TrustNoteP2p()
    for name in ("version", "alt", "event", "body", "tag"):
        if draw(st.booleans()):
            if name == "body":
                value = draw(st.one_of(_utf8_text, _json_values.map(json.dumps)))
            else:
                value = draw(_utf8_text)
            setattr(message, name, value)
    if draw(st.booleans()):
        message.type = draw(st.sampled_from(list(PackageType)))
    data = message.SerializePartialToString(deterministic=True)
    extras = draw(
        st.lists(
            st.one_of(
                st.builds(_varint_field, st.integers(1, 20), st.integers(0, 2**64 - 1)),
                st.builds(_string_field, st.integers(1, 20), st.binary(max_size=20)),
            ),
            max_size=3,
        )
    )
    return data + b"".join(extras)


@given(_fuzzed_messages())
def test_decode_fuzzed_message_returns_package_or_raises_package_error(data: bytes) -> None:
    result = _decode_or_error(data)
    if isinstance(result, PackageError):
        assert result.reason
    else:
        assert isinstance(result.type, PackageType)
        assert type(result.body) is dict
        assert result.tag or result.type not in REQUEST_TYPES


@given(
    type_=st.sampled_from(list(PackageType)),
    event=_utf8_text,
    body=_json_bodies,
    tag=_utf8_text.filter(bool),
)
def test_round_trip_arbitrary_json_body(
    type_: PackageType, event: str, body: dict[str, Any], tag: str
) -> None:
    package = build_package(type_, event, body, tag=tag if type_ in RESPONSE_TYPES else None)
    decoded = decode(encode(package), max_size=None)
    assert decoded.type is type_
    assert decoded.event == event
    assert decoded.body == body
    assert body_to_json(decoded.body) == package.body_json
    assert decoded.tag == package.tag
    if type_ in REQUEST_TYPES:
        assert decoded.tag == compute_tag(type_, event, package.body_json)


@given(
    type_=st.sampled_from(list(PackageType)),
    version=_utf8_text,
    alt=_utf8_text,
    event=_utf8_text,
    body=_json_bodies,
    tag=_utf8_text,
    padding=st.integers(min_value=0, max_value=20_000),
)
def test_encode_is_protobuf_byte_for_byte(
    type_: PackageType,
    version: str,
    alt: str,
    event: str,
    body: dict[str, Any],
    tag: str,
    padding: int,
) -> None:
    """The hand-written encoder writes what ``protobuf`` writes, lengths of one to three
    varint bytes included."""
    package = Package(type_, event + "x" * padding, body, Tag(tag), version, alt)
    expected = TrustNoteP2p(
        version=version,
        alt=alt,
        type=type_,
        event=package.event,
        body=body_to_json(body),
        tag=tag,
    ).SerializeToString()
    assert encode(package) == expected


def test_encode_refuses_what_utf8_cannot_hold() -> None:
    with pytest.raises(ValueError, match="valid Unicode"):
        encode(Package(PackageType.TALK, "\ud800", {}))
    # (the compiled build refuses the int at Package(): "PackageType object expected")
    with pytest.raises((ValueError, TypeError), match=r"unknown package type|PackageType object"):
        encode(Package(99, "x", {}))  # type: ignore[arg-type]
