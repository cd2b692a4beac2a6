"""
Packages: the one message trustp2p peers exchange, and its wire encoding.

The wire format is the original implementation's (``docs/original-wire-format.md``): one
Protocol Buffers message per binary frame, fields version=1, alt=2, type=3, event=4,
body=5 (a JSON object as text) and tag=6. This module does no I/O.

"""

from __future__ import annotations

__all__ = [
    "DEFAULT_ALT",
    "DEFAULT_MAX_PACKAGE_SIZE",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "RESPONSE_TYPES",
    "Body",
    "Package",
    "PackageType",
    "Tag",
    "body_to_json",
    "build_package",
    "compute_tag",
    "decode",
    "encode",
]

import base64
import enum
import hashlib
import json
from typing import Any, NewType

from google.protobuf.message import DecodeError
from google.protobuf.unknown_fields import UnknownFieldSet

from ..exceptions import PackageError
from .jsontext import dumps as _dumps, loads as _loads
from .package_pb2 import TrustNoteP2p

PROTOCOL_VERSION = "1.0"
"""The protocol version we speak; peers must share its major number."""

DEFAULT_ALT = "1"
"""The default network id ("alt" chain). Peers on different networks don't talk."""

DEFAULT_MAX_PACKAGE_SIZE = 2**20
"""Default limit on the size of one encoded package, in bytes (1 MiB)."""

Tag = NewType("Tag", str)
"""A request correlation id: the content hash of the request (see :func:`compute_tag`)."""

Body = dict[str, Any]
"""A package body: a JSON object."""


class PackageType(enum.IntEnum):
    """Package types, with the original implementation's wire numbers."""

    SYSTEM = 0
    HEARTBEAT_PING = 10
    HEARTBEAT_PONG = 11
    TALK = 20
    REQUEST = 30
    RESPONSE = 31
    GOSSIP = 40  # trustp2p's addition: a signed publish/subscribe message (docs/protocol.md)


REQUEST_TYPES = frozenset({PackageType.HEARTBEAT_PING, PackageType.REQUEST})
"""Types that create a tag and expect an answer."""

RESPONSE_TYPES = frozenset({PackageType.HEARTBEAT_PONG, PackageType.RESPONSE})
"""Types that answer a request and copy its tag."""

# PackageType(value) goes through the enum machinery; a dict lookup is several times
# faster, and decode() runs once per received frame.
_TYPES: dict[int, PackageType] = {member.value: member for member in PackageType}

_TYPE_FIELD_NUMBER = TrustNoteP2p.DESCRIPTOR.fields_by_name["type"].number
_WIRETYPE_VARINT = 0


class Package:
    """
    One package. Treat it as immutable.

    Build packages to send with :func:`build_package`, which computes the tag of a request
    and the JSON text of the body once. Packages received come from :func:`decode`.

    (Not a frozen dataclass: two packages are built per message on the hot path, and a
    frozen dataclass takes 1.6 µs to build where this class takes 0.4 µs.)

    Attributes:
        type: The package type.
        event: The event or subject name, e.g. ``"ping"``.
        body: The body, a JSON object.
        tag: The request correlation id; ``""`` for talks.
        version: The sender's protocol version.
        alt: The sender's network id.
        body_json: The body as JSON text, as it travels on the wire.

    """

    __slots__ = ("alt", "body", "body_json", "event", "tag", "type", "version")

    def __init__(
        self,
        type: PackageType,
        event: str,
        body: Body,
        tag: Tag = Tag(""),
        version: str = PROTOCOL_VERSION,
        alt: str = DEFAULT_ALT,
        body_json: str = "",
    ) -> None:
        self.type = type
        self.event = event
        self.body = body
        self.tag = tag
        self.version = version
        self.alt = alt
        self.body_json = body_json

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Package):
            return NotImplemented
        return (self.type, self.event, self.body, self.tag, self.version, self.alt) == (
            other.type,
            other.event,
            other.body,
            other.tag,
            other.version,
            other.alt,
        )

    __hash__ = None  # type: ignore[assignment]  # the body is a dict

    def __repr__(self) -> str:
        return (
            f"Package(type={self.type!r}, event={self.event!r}, body={self.body!r}, "
            f"tag={self.tag!r}, version={self.version!r}, alt={self.alt!r})"
        )

    def __str__(self) -> str:
        tag = f" tag={self.tag}" if self.tag else ""
        return f"{self.type.name} {self.event!r}{tag} {self.body_json or body_to_json(self.body)}"


def body_to_json(body: Body) -> str:
    """
    Serialize a body as the original does: compact JSON text in the caller's key order,
    non-ASCII characters kept as they are.

    Floats keep Python's notation: ``1.0`` is written ``1.0``, where JavaScript writes
    ``1``. The receiver never recomputes a tag, so this changes nothing on the wire but
    the tag of a request whose body holds such a float.

    Raises:
        TypeError: If ``body`` is not a dict, or holds something JSON can't represent.
        ValueError: If ``body`` holds NaN or an infinity, or a reference cycle.

    """
    if type(body) is not dict:
        raise TypeError(f"body must be a dict, not {type(body).__name__}")
    return _dumps(body)


def compute_tag(
    package_type: PackageType,
    event: str,
    body_json: str,
    *,
    version: str = PROTOCOL_VERSION,
    alt: str = DEFAULT_ALT,
) -> Tag:
    """
    Compute the tag of a request, as the original does (``docs/original-wire-format.md``).

    The tag is ``base64(sha256(S))`` of the "source string" ``S`` of the object
    ``{version, alt, type, event, body}``: keys sorted, each value prefixed with its kind
    (``s`` string, ``n`` number), every part joined by NUL.

    Args:
        package_type: The package type.
        event: The event name.
        body_json: The body as compact JSON text, see :func:`body_to_json`.
        version: The protocol version written in the package.
        alt: The network id written in the package.

    """
    # Hashed in three parts: a large body isn't copied into one source string first.
    digest = hashlib.sha256(f"alt\0s\0{alt}\0body\0s\0".encode())
    digest.update(body_json.encode())
    digest.update(
        f"\0event\0s\0{event}\0type\0n\0{int(package_type)}\0version\0s\0{version}".encode()
    )
    return Tag(base64.b64encode(digest.digest()).decode("ascii"))


def build_package(
    package_type: PackageType,
    event: str,
    body: Body,
    *,
    tag: str | None = None,
    version: str = PROTOCOL_VERSION,
    alt: str = DEFAULT_ALT,
) -> Package:
    """
    Build a package to send.

    A request (``HEARTBEAT_PING`` or ``REQUEST``) gets its content hash as tag unless
    ``tag`` is given. A response must be given the tag of the request it answers.
    Other types carry ``tag`` or ``""``.

    Raises:
        TypeError: If ``body`` is not a JSON-serializable dict, or ``event`` not a str.
        ValueError: If a response is built without a tag.

    """
    if not isinstance(event, str):
        raise TypeError(f"event must be a str, not {event.__class__.__name__}")
    body_json = body_to_json(body)
    if tag is None:
        if package_type in REQUEST_TYPES:
            tag = compute_tag(package_type, event, body_json, version=version, alt=alt)
        elif package_type in RESPONSE_TYPES:
            raise ValueError(
                f"a {package_type.name} package needs the tag of the request it answers"
            )
        else:
            tag = ""
    return Package(package_type, event, body, Tag(tag), version, alt, body_json)


def encode(package: Package) -> bytes:
    """
    Encode a package for the wire.

    Fields are written in number order and version, alt and tag always, as the original
    does, so our pings and pongs are byte for byte the original's.

    Written by hand, not through ``protobuf``: for six fields the bytes are simple, and
    setting a 256 KiB string on a protobuf message costs ten times what copying it
    does. ``tests/protocol/test_package.py`` checks it against ``protobuf`` byte for byte.

    Raises:
        ValueError: If a string holds a lone surrogate (not encodable as UTF-8).

    """
    body = package.body_json or body_to_json(package.body)
    type_key = _TYPE_KEYS.get(package.type)
    if type_key is None:
        raise ValueError(f"unknown package type {package.type!r}")
    try:
        version, alt = package.version.encode(), package.alt.encode()
        event, data, tag = package.event.encode(), body.encode(), package.tag.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"package holds a string that isn't valid Unicode: {exc}") from None
    small = _SMALL_LENGTHS  # lengths below 128 take one byte: no call for them
    return b"".join(
        (
            b"\x0a",
            small[len(version)] if len(version) < 0x80 else _varint(len(version)),
            version,
            b"\x12",
            small[len(alt)] if len(alt) < 0x80 else _varint(len(alt)),
            alt,
            type_key,
            b"\x22",
            small[len(event)] if len(event) < 0x80 else _varint(len(event)),
            event,
            b"\x2a",
            small[len(data)] if len(data) < 0x80 else _varint(len(data)),
            data,
            b"\x32",
            small[len(tag)] if len(tag) < 0x80 else _varint(len(tag)),
            tag,
        )
    )


# The key and value of the type field (field 3, varint), per type: all are below 128.
_TYPE_KEYS = {member: bytes((0x18, member.value)) for member in PackageType}


def _varint(size: int) -> bytes:
    """A length of 128 or more as a protobuf varint."""
    length = bytearray()
    while size >= 0x80:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return bytes(length)


_SMALL_LENGTHS = [bytes((n,)) for n in range(0x80)]


def decode(data: bytes | str, *, max_size: int | None = DEFAULT_MAX_PACKAGE_SIZE) -> Package:
    """
    Decode a package received from a peer.

    Decoding is strict: unlike the original, which drops bad frames silently, every
    problem raises :exc:`~trustp2p.exceptions.PackageError` with a message that says
    what was wrong. Unknown field numbers are ignored, as Protocol Buffers intends.

    Args:
        data: One frame. A text frame (``str``) is refused: packages travel in binary
            frames.
        max_size: Limit on ``len(data)`` in bytes; ``None`` disables it.

    Raises:
        PackageError: If ``data`` is not a valid package. When the frame could be read
            that far, its ``type``, ``event`` and ``tag`` are set on the exception, so
            that a broken request can still be answered.

    """
    message = _parse(data, max_size)
    type_ = _package_type(message)
    # proto2 doesn't validate UTF-8: an invalid string field reads as bytes.
    event, body_json, tag = message.event, message.body, message.tag
    version, alt = message.version, message.alt
    if not isinstance(event, str):
        raise PackageError("event is not valid UTF-8", package_type=type_)
    if not isinstance(tag, str):
        raise PackageError("tag is not valid UTF-8", package_type=type_, event=event)
    if not isinstance(version, str) or not isinstance(alt, str):
        raise PackageError(
            "version or alt is not valid UTF-8", package_type=type_, event=event, tag=tag
        )
    if not tag and type_ in REQUEST_TYPES:
        raise PackageError(
            f"{type_.name} package {event!r} has no tag", package_type=type_, event=event
        )
    if not isinstance(body_json, str):
        raise PackageError("body is not valid UTF-8", package_type=type_, event=event, tag=tag)
    body = _body(body_json, type_, event, tag)
    return Package(type_, event, body, Tag(tag), version, alt, body_json)


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


def _package_type(message: TrustNoteP2p) -> PackageType:
    """
    The message's package type.

    proto2 enums are closed: an unknown value lands in the unknown fields, and the field
    keeps its earlier value or reads as its default, SYSTEM. The original never
    validated the type; we refuse the package.
    """
    for unknown in UnknownFieldSet(message):
        if unknown.field_number == _TYPE_FIELD_NUMBER:
            if unknown.wire_type != _WIRETYPE_VARINT:
                raise PackageError(f"package type has wire type {unknown.wire_type}, not varint")
            value = unknown.data - 2**64 if unknown.data >= 2**63 else unknown.data
            raise PackageError(f"unknown package type {value}")
    return _TYPES[message.type]


def _body(body_json: str, type_: PackageType, event: str, tag: str) -> Body:
    """The body of a package: a JSON object."""
    try:
        body = _loads(body_json)
    except json.JSONDecodeError as exc:
        reason = f"body is not valid JSON: {exc.msg} at position {exc.pos}"
        raise PackageError(reason, package_type=type_, event=event, tag=tag) from None
    except ValueError as exc:  # NaN, Infinity; integers too long to convert
        reason = f"body is not valid JSON: {exc}"
        raise PackageError(reason, package_type=type_, event=event, tag=tag) from None
    except RecursionError:
        raise PackageError(
            "body is nested too deeply", package_type=type_, event=event, tag=tag
        ) from None
    if type(body) is not dict:
        reason = f"body is not a JSON object but {_json_kind(body)}"
        raise PackageError(reason, package_type=type_, event=event, tag=tag)
    return body


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"
