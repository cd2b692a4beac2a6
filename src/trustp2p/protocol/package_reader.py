"""
Reading a frame's fields: by hand for the canonical layout, by ``protobuf`` for any other.

:func:`~trustp2p.protocol.package.decode` tries :func:`canonical_fields` first and falls
back on :func:`protobuf_fields`, which reads any frame and explains what is wrong with a
bad one. ``tests/protocol/test_package_reader.py`` checks that the two agree on arbitrary
bytes. This module does no I/O.

"""

from __future__ import annotations

__all__ = ["MAX_UNKNOWN_BYTES", "Fields", "canonical_fields", "protobuf_fields"]

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from ..exceptions import PackageError
from .package_pb2 import TrustNoteP2p

Fields = tuple[int, str, "str | bytes", str, str, str, bytes]
"""A package's type number (a known one), event, body text (bytes if not UTF-8), tag,
version, alt and payload (``b""`` when absent)."""

_KNOWN_TYPES = frozenset(TrustNoteP2p.PackageType.values())
_TYPE_FIELD_NUMBER = TrustNoteP2p.DESCRIPTOR.fields_by_name["type"].number
_WIRETYPE_VARINT = 0
_COPY_LIMIT = 4096  # past this, a body is decoded from a view of the frame, not a copy

MAX_UNKNOWN_BYTES = 256
"""Most bytes of fields a package may hold beyond the known ones (a later version's
additions); past it, the package is refused before they are read, one Python object a
field: found by an attacker, 1 MiB of two-byte unknown fields took 0.35-0.5 s to read
(the parse itself 1.5 ms), and 2 such packages a second from one peer, 2 % of its
request budget, took 65-85 % of the node's core."""


def canonical_fields(data: bytes) -> Fields | None:
    """
    The fields of a frame in the layout both the original and ``encode`` write, read
    without ``protobuf``; ``None`` for any other frame, which :func:`protobuf_fields`
    then reads (and explains, if it is wrong).

    The layout: the six fields once each, in number order, the type a known one, each
    length a minimal varint (one byte but the body's and the payload's), the strings
    valid UTF-8, then at most one payload (field 7) and nothing after it. Such a frame
    can hold no unknown field and no second value of a field, so ``protobuf`` would read
    the same values. A third of the cost of a ``protobuf`` message for a small package,
    and one copy of a large body or payload instead of two.
    """
    try:
        if data[0] != 0x0A:
            return None
        size = data[1]
        end = 2 + size
        if size >= 0x80 or data[end] != 0x12:
            return None
        version = data[2:end]
        size = data[end + 1]
        start, end = end + 2, end + 2 + size
        if size >= 0x80 or data[end] != 0x18:
            return None
        alt = data[start:end]
        package_type = data[end + 1]
        size = data[end + 3]
        start, end = end + 4, end + 4 + size
        if (
            package_type not in _KNOWN_TYPES
            or data[start - 2] != 0x22
            or size >= 0x80
            or data[end] != 0x2A
        ):
            return None
        event = data[start:end]
        size = data[end + 1]
        start, size = (end + 2, size) if size < 0x80 else _read_varint(data, end + 1)
        end = start + size
        if size < 0 or data[end] != 0x32:
            return None
        body = data[start:end] if size < _COPY_LIMIT else memoryview(data)[start:end]
        size = data[end + 1]
        tag_end = end + 2 + size
        payload = b"" if tag_end == len(data) else _payload(data, tag_end)
        if size >= 0x80 or payload is None:
            return None
        return (
            package_type,
            event.decode(),
            str(body, "utf-8"),
            data[end + 2 : tag_end].decode(),
            version.decode(),
            alt.decode(),
            payload,
        )
    except (IndexError, UnicodeDecodeError):
        return None


def _payload(data: bytes, start: int) -> bytes | None:
    """The payload field at ``start``, the last of the frame; ``None`` if that isn't
    what is there. One copy, from the frame to the result."""
    if data[start] != 0x3A:
        return None
    start, size = _read_varint(data, start + 1)
    if size < 0 or start + size != len(data):
        return None
    return data[start:]


def _read_varint(data: bytes, start: int) -> tuple[int, int]:
    """The minimal varint at ``start``, up to 4 bytes: (where its value's bytes start,
    the value); the value is -1 if the varint isn't one of those."""
    value = data[start]
    if value < 0x80:
        return start + 1, value
    value &= 0x7F
    for index in range(1, 4):
        byte = data[start + index]
        value |= (byte & 0x7F) << (7 * index)
        if byte < 0x80:
            return start + index + 1, (value if byte else -1)  # a 0 last byte: not minimal
    return start, -1


def protobuf_fields(data: bytes | str, max_size: int | None) -> Fields:
    """
    The fields of any frame, read by ``protobuf``.

    Raises:
        PackageError: If the frame is text, too large, not a valid message, lacks a
            required field, has an unknown type, or a string that isn't UTF-8.

    """
    message = _parse(data, max_size)
    type_ = _package_type(message)
    # proto2 doesn't validate UTF-8: an invalid string field reads as bytes.
    event, body_json, tag = message.event, message.body, message.tag
    version, alt = message.version, message.alt
    if not isinstance(event, str):
        # With the tag if it reads: a request is answered, not left to time out (found
        # by an attacker's test: the requester waited its whole response_timeout).
        readable = tag if isinstance(tag, str) else None
        raise PackageError("event is not valid UTF-8", package_type=type_, tag=readable)
    if not isinstance(tag, str):
        raise PackageError("tag is not valid UTF-8", package_type=type_, event=event)
    if not isinstance(version, str) or not isinstance(alt, str):
        raise PackageError(
            "version or alt is not valid UTF-8", package_type=type_, event=event, tag=tag
        )
    return type_, event, body_json, tag, version, alt, message.payload


def _parse(data: bytes | str, max_size: int | None) -> TrustNoteP2p:
    """The protobuf message in a frame, with its required fields."""
    if isinstance(data, str):
        raise PackageError(
            f"text frame of {len(data)} characters refused: packages travel in binary frames"
        )
    size = len(data)
    if max_size is not None and size > max_size:
        raise PackageError(f"package of {size} bytes exceeds limit of {max_size} bytes")
    message = TrustNoteP2p()
    try:
        message.ParseFromString(data)
    except DecodeError:
        raise PackageError(f"malformed protobuf message of {size} bytes") from None
    if not message.IsInitialized():
        missing = ", ".join(message.FindInitializationErrors())
        raise PackageError(f"package lacks required field(s): {missing}")
    return message


def _package_type(message: TrustNoteP2p) -> int:
    """
    The message's package type number.

    proto2 enums are closed: an unknown value lands in the unknown fields, and the field
    keeps its earlier value or reads as its default, SYSTEM. The original never
    validated the type; we refuse the package. So is one whose unknown fields take more
    than :data:`MAX_UNKNOWN_BYTES`, before they are read one by one.
    """
    known = TrustNoteP2p()
    known.CopyFrom(message)
    known.DiscardUnknownFields()  # (in C: a copy and two sizes, 0.5 ms a MiB)
    unknown_size = message.ByteSize() - known.ByteSize()
    if unknown_size == 0:
        return int(message.type)
    if unknown_size > MAX_UNKNOWN_BYTES:
        # With what it claims to be, if it reads: a later version's request is answered
        # (review66 A4), not left to time out.
        event, tag = message.event, message.tag
        raise PackageError(
            f"package has {unknown_size} bytes of unknown fields (at most {MAX_UNKNOWN_BYTES})",
            package_type=int(message.type) if message.HasField("type") else None,
            event=event if isinstance(event, str) else None,
            tag=tag if isinstance(tag, str) else None,
        )
    for unknown in UnknownFieldSet(message):
        if unknown.field_number == _TYPE_FIELD_NUMBER:
            if unknown.wire_type != _WIRETYPE_VARINT:
                raise PackageError(f"package type has wire type {unknown.wire_type}, not varint")
            value = unknown.data - 2**64 if unknown.data >= 2**63 else unknown.data
            raise PackageError(f"unknown package type {value}")
    number: int = message.type
    return number
