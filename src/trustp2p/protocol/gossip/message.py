"""
Signed gossip messages, free of I/O: their ids, their signatures, and decoding what a
peer sent with every number bounded.

A **message** is published once by its origin, with a per-origin sequence number, a
timestamp and the origin's Ed25519 signature; relays verify it before they forward it
and can't alter it. Its id is a hash of (origin, seq, topic, payload). On the wire it is
a ``GOSSIP`` package whose event is the topic (``docs/protocol.md``).

Every number a peer sends is checked against a bound when decoded (:data:`MAX_SEQ`,
:data:`MAX_TIMESTAMP`, :data:`MAX_HOPS`): the message log stores them as SQLite
integers (signed 64 bits) and reals (53-bit integers exactly), and a number past those
would make every later write of the log fail.

"""

from __future__ import annotations

__all__ = [
    "MAX_HOPS",
    "MAX_SEQ",
    "MAX_TIMESTAMP",
    "MAX_TOPIC_LENGTH",
    "GossipMessage",
    "check_int",
    "check_own_topic",
    "check_topic",
    "message_id",
    "payload_text",
    "sign_message",
]

import base64
import binascii
import gc
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ...exceptions import GossipError
from ...identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    is_peer_id,
    peer_id_from_public_key,
    verify_signature,
)
from ..jsontext import GC_PAUSE_CHARS, read_json, text_size
from ..shared_text import share
from .via import check_via

MAX_TOPIC_LENGTH = 256
"""Longest topic, in characters."""

MAX_SEQ = 2**63 - 1
"""Highest sequence number: the message log stores it as a signed 64-bit integer."""

MAX_TIMESTAMP = 2**53 - 1
"""Latest timestamp, in milliseconds since 1970 (year 285,000 or so): the message log
stores it as a double, which holds integers up to 2**53 exactly. The earliest is 0."""

MAX_HOPS = 255
"""Most relays a message may carry in its ``hops``; a router's ``max_hops`` is at most
this, so that honest relays never send more."""

_SIGNATURE_PREFIX = b"trustp2p-gossip/1\0"


def message_id(origin: str, seq: int, topic: str, data: str) -> str:
    """The id of a message: 16 bytes of SHA-256 over (origin, seq, topic, payload),
    in base64url without padding (22 characters), shared
    (:func:`~trustp2p.protocol.shared_text.share`): the router, the log and the streams
    keep it, and the nodes of one process (a simulation) share it."""
    digest = hashlib.sha256(f"{origin}\0{seq}\0{topic}\0{data}".encode()).digest()[:16]
    return share(base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))


def _signed_bytes(topic: str, origin: str, seq: int, timestamp: int, data: str) -> bytes:
    return _SIGNATURE_PREFIX + f"{topic}\0{origin}\0{seq}\0{timestamp}\0{data}".encode()


def check_topic(topic: object) -> str:
    """
    Return ``topic`` if it is a topic a peer may send: a string of 1 to
    :data:`MAX_TOPIC_LENGTH` characters.

    Raises:
        GossipError: If it isn't.

    """
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC_LENGTH:
        raise GossipError("invalid topic")
    return topic


def check_own_topic(topic: object) -> str:
    """
    Return ``topic`` if this node may publish or subscribe to it (what peers accept).

    Raises:
        ValueError: If it is not a string of 1 to :data:`MAX_TOPIC_LENGTH` characters.

    """
    if not isinstance(topic, str) or not 0 < len(topic) <= MAX_TOPIC_LENGTH:
        raise ValueError(f"a topic is a string of 1 to {MAX_TOPIC_LENGTH} characters")
    return topic


def check_int(value: object, name: str, low: int, high: int) -> int:
    """
    Return ``value`` if it is an int (not a bool) from ``low`` to ``high``.

    Raises:
        GossipError: ``"invalid <name>"`` if it isn't an int, ``"<name> outside
            <low>..<high>"`` if it is out of bounds.

    """
    if type(value) is not int:
        raise GossipError(f"invalid {name}")
    if not low <= value <= high:
        raise GossipError(f"{name} outside {low}..{high}")
    return value


@dataclass(frozen=True, slots=True)
class GossipMessage:
    """
    One signed message.

    Attributes:
        topic: What it is about; subscribers of the topic receive it.
        origin: The peer id of its publisher.
        seq: The publisher's sequence number, from 1 to :data:`MAX_SEQ`.
        timestamp: The publisher's wall clock, in milliseconds since 1970 (0 to
            :data:`MAX_TIMESTAMP`).
        data: The payload as JSON text (a JSON object), exactly as signed.
        key: The publisher's Ed25519 public key (32 bytes).
        signature: The publisher's signature (64 bytes).
        id: The message id, see :func:`message_id`.
        hops: Relays it went through (0 to :data:`MAX_HOPS`); not signed.
        via: Whose it is, as the last relay counted it (see :mod:`.via`): ``""`` (none)
            or ``.``-separated tokens; not signed, and not compared: a node that takes
            the message in gives it its own (the node's gossip), and a message
            delivered equals the one published.
        data_size: What :attr:`data` weighs in the bounds that say bytes (the message
            log's, held messages', the recent cache's):
            :func:`~trustp2p.protocol.jsontext.text_size`, computed once (a relay's
            copy, :meth:`relayed` or :meth:`with_via`, takes it over).

    """

    topic: str
    origin: str
    seq: int
    timestamp: int
    data: str
    key: bytes
    signature: bytes
    id: str
    hops: int = 0
    via: str = field(default="", compare=False)  # (a relay's word, not the message)
    data_size: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Once a message, not at each bound that counts it (found in review: about 11
        # times, two encodings of a non-ASCII payload each); not an argument, so that
        # dataclasses.replace() with other data counts that (review53 L7).
        object.__setattr__(self, "data_size", text_size(self.data))

    @property
    def body(self) -> dict[str, Any]:
        """
        The payload, parsed from :attr:`data` at each access: bind it to a name to use
        it twice. A message doesn't hold its parse, so those a node keeps to announce
        and serve cost their text alone (found by an attacker: messages of 80,000 empty
        lists each held 600 MB in the recent cache, and every garbage collection walked
        them).
        """
        parsed: dict[str, Any] = _read_data(self.data)  # (a JSON object: checked)
        return parsed

    def to_body(self, *, hops: int | None = None) -> dict[str, Any]:
        """The package body that carries it (its topic is the package's event); its
        ``via`` if it has one."""
        body: dict[str, Any] = {
            "origin": self.origin,
            "seq": self.seq,
            "ts": self.timestamp,
            "data": self.data,
            "key": base64.b64encode(self.key).decode("ascii"),
            "sig": base64.b64encode(self.signature).decode("ascii"),
            "hops": self.hops if hops is None else hops,
        }
        if self.via:
            body["via"] = self.via
        return body

    def relayed(self) -> GossipMessage:
        """The same message with one more hop, as a relay sends it on."""
        return self._sent_on(self.hops + 1, self.via)

    def with_via(self, via: str) -> GossipMessage:
        """The same message with ``via`` (as a node sends it on: see :mod:`.via`)."""
        return self._sent_on(self.hops, via)

    def _sent_on(self, hops: int, via: str) -> GossipMessage:
        # (not dataclasses.replace: 8 us a message; the slots set as __init__ sets
        # them, the payload's size taken over, not computed again)
        copy = object.__new__(GossipMessage)
        for name, value in (
            ("topic", self.topic), ("origin", self.origin), ("seq", self.seq),
            ("timestamp", self.timestamp), ("data", self.data), ("key", self.key),
            ("signature", self.signature), ("id", self.id), ("hops", hops), ("via", via),
            ("data_size", self.data_size),
        ):  # fmt: skip
            object.__setattr__(copy, name, value)
        return copy

    @staticmethod
    def peek_id(topic: str, body: dict[str, Any]) -> str | None:
        """
        The id of the message a body carries, without verifying it (cheap: no
        signature check), or ``None`` if the body is too malformed to tell.

        A router drops copies of messages it has seen by this id before spending a
        signature check on them.
        """
        origin, seq, data = body.get("origin"), body.get("seq"), body.get("data")
        if not (isinstance(origin, str) and type(seq) is int and isinstance(data, str)):
            return None
        if not 0 < seq <= MAX_SEQ:
            return None
        return message_id(origin, seq, topic, data)

    @classmethod
    def from_body(
        cls,
        topic: str,
        body: dict[str, Any],
        *,
        max_data: int | None = None,
        peeked_id: str | None = None,
    ) -> GossipMessage:
        """
        Read and verify a message received from a peer.

        Args:
            topic: The package's event.
            body: The package's body.
            max_data: Most characters of payload (``data``); checked before the
                signature, so that an oversized forgery costs no verification. None: no
                limit.
            peeked_id: What :meth:`peek_id` returned for this topic and body, if the
                caller asked it first (the router drops duplicates by id): the id isn't
                hashed twice.

        Raises:
            GossipError: If it is malformed, a number in it is out of bounds, or its key
                or signature doesn't check out (forged or altered). The message says
                which.

        """
        check_topic(topic)
        origin, data = body.get("origin"), body.get("data")
        if not isinstance(origin, str) or not is_peer_id(origin):
            raise GossipError("invalid origin")
        seq = check_int(body.get("seq"), "seq", 1, MAX_SEQ)
        timestamp = check_int(body.get("ts"), "ts", 0, MAX_TIMESTAMP)
        hops = check_int(body.get("hops", 0), "hops", 0, MAX_HOPS)
        via = check_via(body.get("via", ""))
        if not isinstance(data, str):
            raise GossipError("data is not JSON text")
        if max_data is not None and len(data) > max_data:
            raise GossipError(f"data of {len(data)} characters exceeds {max_data}")
        key, signature = _key_and_signature(body)
        if peer_id_from_public_key(key) != origin:
            raise GossipError("forged: the key is not the origin's")
        if not verify_signature(key, signature, _signed_bytes(topic, origin, seq, timestamp, data)):
            raise GossipError("forged or altered: the signature doesn't match")
        _check_data(data)
        message_key = peeked_id or message_id(origin, seq, topic, data)
        # Shared, like the id: the nodes of one process (a simulation) share them.
        topic, origin, data = share(topic), share(origin), share(data)
        return cls(topic, origin, seq, timestamp, data, key, signature, message_key, hops, via)


def _key_and_signature(body: dict[str, Any]) -> tuple[bytes, bytes]:
    try:
        key = base64.b64decode(body.get("key", ""), validate=True)
        signature = base64.b64decode(body.get("sig", ""), validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise GossipError("key or signature is not base64") from None
    if len(key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        raise GossipError("key or signature has the wrong size")
    return key, signature


def payload_text(topic: str, data: dict[str, Any]) -> str:
    """
    Check a topic and a payload to publish; return the payload as the JSON text a
    message carries.

    Raises:
        ValueError: If the topic is empty or too long, or ``data`` holds NaN or a string
            that isn't valid Unicode, or nests too deeply.
        TypeError: If ``data`` is not a JSON-serializable dict.

    """
    check_own_topic(topic)
    if type(data) is not dict:
        raise TypeError(f"data must be a dict, not {type(data).__name__}")
    try:
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise ValueError("data is nested too deeply to be JSON") from None
    try:
        text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: not text any peer can read
        raise ValueError(f"data holds a string that isn't valid Unicode: {exc.reason}") from None
    return text


def sign_message(
    identity: Identity, topic: str, seq: int, timestamp: int, data: dict[str, Any]
) -> GossipMessage:
    """
    Build and sign a message as its origin.

    Args:
        identity: The origin's identity.
        topic: The topic.
        seq: The origin's sequence number on the topic, 1 to :data:`MAX_SEQ`.
        timestamp: Milliseconds since 1970 (the origin's wall clock), 0 to
            :data:`MAX_TIMESTAMP`.
        data: The payload, a JSON object.

    Raises:
        ValueError: If ``seq`` or ``timestamp`` is out of bounds (peers would refuse the
            message), or see :func:`payload_text`.
        TypeError: See :func:`payload_text`.

    """
    if not 1 <= seq <= MAX_SEQ:
        raise ValueError(f"seq {seq} outside 1..{MAX_SEQ}")
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"timestamp {timestamp} outside 0..{MAX_TIMESTAMP}")
    text = payload_text(topic, data)
    origin = identity.peer_id
    signature = identity.sign(_signed_bytes(topic, origin, seq, timestamp, text))
    return GossipMessage(
        topic,
        origin,
        seq,
        timestamp,
        text,
        identity.public_key,
        signature,
        message_id(origin, seq, topic, text),
        0,
    )


def _read_data(data: str) -> Any:
    """``json.loads(data)``, with the cyclic garbage collector paused for a long text
    (:data:`~trustp2p.protocol.jsontext.GC_PAUSE_CHARS`): a message of many small lists
    set off a collection every few hundred (found by an attacker). What the standard
    library's reader takes (NaN included) stays what every node takes, read by orjson
    where it reads the same (:func:`~trustp2p.protocol.jsontext.read_json`)."""
    if len(data) < GC_PAUSE_CHARS or not gc.isenabled():
        return read_json(data)
    gc.disable()
    try:
        return read_json(data)
    finally:
        gc.enable()


def _check_data(data: str) -> None:
    """Raise :class:`GossipError` unless ``data`` is the JSON text of an object. Read
    as :func:`_read_data` reads it, and let go of with the collector still paused: a
    parse of many containers, dropped at once, leaves it nothing to walk."""
    paused = len(data) >= GC_PAUSE_CHARS and gc.isenabled()
    if paused:
        gc.disable()
    try:
        is_object = type(read_json(data)) is dict
    except (ValueError, RecursionError):
        raise GossipError("data is not valid JSON") from None
    finally:
        if paused:
            gc.enable()
    if not is_object:
        raise GossipError("data is not a JSON object")
