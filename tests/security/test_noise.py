"""The Noise XX layer: the published test vector, identity binding, tampering, replay."""

from __future__ import annotations

import json
import sys
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from trustp2p.exceptions import ChannelError, HandshakeError, OversizedPackage, UsageError
from trustp2p.identity import Identity
from trustp2p.security.noise import MAX_NOISE_MESSAGE, NoiseHandshake, NoiseKey, NoiseTransport

HERE = Path(__file__).parent
# The published Noise_XX_25519_ChaChaPoly_SHA256 vectors (cacophony, snow): sources and
# licenses in the file.
VECTORS = json.loads((HERE / "noise-xx-vectors.json").read_text())["vectors"]
# Made with the noiseprotocol-based implementation before it was replaced (see the file).
INTEROP = json.loads((HERE / "noise-trustp2p-interop.json").read_text())


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v["source"])
def test_published_vector(vector: dict[str, Any]) -> None:
    assert vector["protocol_name"] == "Noise_XX_25519_ChaChaPoly_SHA256"

    def side(prefix: str, initiator: bool) -> NoiseHandshake:
        return NoiseHandshake(
            Identity.generate(),  # unused: the vector's payloads replace ours
            initiator=initiator,
            prologue=bytes.fromhex(vector[f"{prefix}_prologue"]),
            static_key=bytes.fromhex(vector[f"{prefix}_static"]),
            ephemeral_key=bytes.fromhex(vector[f"{prefix}_ephemeral"]),
        )

    initiator, responder = side("init", True), side("resp", False)
    messages = vector["messages"]
    for index, message in enumerate(messages[:3]):
        writer, reader = (initiator, responder) if index % 2 == 0 else (responder, initiator)
        payload = bytes.fromhex(message["payload"])
        ciphertext = writer.write_message(payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert reader.read_message(ciphertext, verify_identity=False) == payload
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash == responder.handshake_hash
    if "handshake_hash" in vector:  # cacophony's only
        assert initiator.handshake_hash.hex() == vector["handshake_hash"]
    transports = {True: initiator.transport(), False: responder.transport()}
    for index, message in enumerate(messages[3:], start=3):
        # Senders keep alternating: message 3 is the responder's.
        writer, reader = transports[index % 2 == 0], transports[index % 2 == 1]
        payload = bytes.fromhex(message["payload"])
        ciphertext = writer.encrypt(payload)
        assert ciphertext.hex() == message["ciphertext"]
        assert reader.decrypt(ciphertext) == payload


def test_wire_compatible_with_the_noiseprotocol_implementation() -> None:
    """Fixed keys and identities reproduce, byte for byte, what the previous
    implementation (on ``noiseprotocol``) sent: handshake, identity payloads, packages.
    It negotiated no features: ``features=False`` is a peer of that time."""
    keys = {name: bytes.fromhex(key) for name, key in INTEROP["keys"].items()}
    sides = {
        side: NoiseHandshake(
            Identity(Ed25519PrivateKey.from_private_bytes(keys[f"{side}_identity"])),
            initiator=side == "init",
            prologue=bytes.fromhex(INTEROP["prologue"]),
            static_key=keys[f"{side}_static"],
            ephemeral_key=keys[f"{side}_ephemeral"],
            features=False,
        )
        for side in ("init", "resp")
    }
    other = {"init": "resp", "resp": "init"}
    for step in INTEROP["handshake"]:
        message = sides[step["writer"]].write_message()
        assert message.hex() == step["message"]
        assert sides[other[step["writer"]]].read_message(message).hex() == step["payload"]
    assert sides["init"].remote_peer_id == INTEROP["resp_peer_id"]
    assert sides["resp"].remote_peer_id == INTEROP["init_peer_id"]
    assert sides["init"].handshake_hash.hex() == INTEROP["handshake_hash"]
    transports = {side: sides[side].transport() for side in sides}
    for entry in INTEROP["transport"]:
        data = _interop_package(entry)
        messages = transports[entry["writer"]].seal(data)
        assert [sha256(m).hexdigest() for m in messages] == entry["messages_sha256"]
        if "messages" in entry:
            assert [m.hex() for m in messages] == entry["messages"]
        receiver = transports[other[entry["writer"]]]
        assert [p for m in messages for p in receiver.open(m, max_size=None)] == [data]


def _interop_package(entry: dict[str, Any]) -> bytes:
    if "package" in entry:
        return bytes.fromhex(entry["package"])
    size = entry["package_size"]
    data = b"x" * size if size == 65518 else bytes(range(251)) * (size // 251)
    assert sha256(data).hexdigest() == entry["package_sha256"]
    return data


def handshake(
    a: Identity, b: Identity, *, expected: str | None = None
) -> tuple[NoiseHandshake, NoiseHandshake]:
    initiator = NoiseHandshake(a, initiator=True, expected_peer_id=expected)  # type: ignore[arg-type]
    responder = NoiseHandshake(b, initiator=False)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    return initiator, responder


def test_handshake_proves_both_identities() -> None:
    a, b = Identity.generate(), Identity.generate()
    initiator, responder = handshake(a, b, expected=b.peer_id)
    assert initiator.remote_peer_id == b.peer_id
    assert responder.remote_peer_id == a.peer_id
    assert initiator.remote_public_key == b.public_key
    assert initiator.handshake_hash == responder.handshake_hash


def test_another_key_than_expected_is_refused() -> None:
    a, b, c = Identity.generate(), Identity.generate(), Identity.generate()
    initiator = NoiseHandshake(a, initiator=True, expected_peer_id=c.peer_id)
    responder = NoiseHandshake(b, initiator=False)
    responder.read_message(initiator.write_message())
    with pytest.raises(HandshakeError) as info:
        initiator.read_message(responder.write_message())
    assert str(info.value) == f"peer is {b.peer_id}, not the expected {c.peer_id}"


@pytest.mark.parametrize("index", [1, 2])
def test_tampered_handshake_message_fails(index: int) -> None:
    a, b = Identity.generate(), Identity.generate()
    sides = [NoiseHandshake(a, initiator=True), NoiseHandshake(b, initiator=False)]
    for step in range(index):
        sides[(step + 1) % 2].read_message(sides[step % 2].write_message())
    message = bytearray(sides[index % 2].write_message())
    message[-1] ^= 0x01
    with pytest.raises(HandshakeError, match=f"handshake message {index + 1} is invalid"):
        sides[(index + 1) % 2].read_message(bytes(message))


def test_tampered_first_message_breaks_the_next_one() -> None:
    # Message 1 is a bare ephemeral key: a flipped bit makes another key, and the
    # initiator then can't decrypt message 2.
    initiator = NoiseHandshake(Identity.generate(), initiator=True)
    responder = NoiseHandshake(Identity.generate(), initiator=False)
    message = bytearray(initiator.write_message())
    message[0] ^= 0x01
    responder.read_message(bytes(message))
    reply = responder.write_message()
    with pytest.raises(HandshakeError, match="handshake message 2 is invalid"):
        initiator.read_message(reply)


def test_forged_identity_payload_is_refused() -> None:
    a, b, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    initiator = NoiseHandshake(a, initiator=True)
    responder = NoiseHandshake(b, initiator=False)
    responder.read_message(initiator.write_message())
    # b's static key, but mallory's identity with a signature over something else.
    payload = mallory.public_key + mallory.sign(b"something else")
    with pytest.raises(HandshakeError, match="identity signature doesn't match"):
        initiator.read_message(responder.write_message(payload))


def _dial(key: NoiseKey, responder_key: NoiseKey, payload: bytes | None = None) -> NoiseHandshake:
    """Run a handshake from ``key`` (its message 3 carrying ``payload``, if given) to a
    responder of ``responder_key``; return the responder's side."""
    initiator = NoiseHandshake(key, initiator=True)
    responder = NoiseHandshake(responder_key, initiator=False)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message(payload))
    return responder


def test_a_returning_peers_payload_passes_only_with_its_own_static_key() -> None:
    """A peer that reconnects sends the same identity payload, whose signature the
    responder finds among those it checked lately; the same payload with another Noise
    static key (copied by someone else) is checked, and refused."""
    server, alice = NoiseKey(Identity.generate()), NoiseKey(Identity.generate())
    for _ in range(2):  # the second time, the signature check is found in the cache
        assert _dial(alice, server).remote_peer_id == alice.identity.peer_id
    mallory = NoiseKey(Identity.generate())
    with pytest.raises(HandshakeError, match="identity signature doesn't match"):
        _dial(mallory, server, payload=alice.payload)
    assert _dial(alice, server).remote_peer_id == alice.identity.peer_id


def test_replayed_handshake_fails() -> None:
    """A recorded initiator handshake, replayed to a new responder, can't complete."""
    a, b = Identity.generate(), Identity.generate()
    recorded_initiator = NoiseHandshake(a, initiator=True)
    first = NoiseHandshake(b, initiator=False)
    message1 = recorded_initiator.write_message()
    first.read_message(message1)
    recorded_initiator.read_message(first.write_message())
    message3 = recorded_initiator.write_message()
    first.read_message(message3)
    # An eavesdropper replays messages 1 and 3 to b: b's fresh ephemeral key changes the
    # keys, so message 3 no longer decrypts.
    second = NoiseHandshake(b, initiator=False)
    second.read_message(message1)
    second.write_message()
    with pytest.raises(HandshakeError, match="handshake message 3 is invalid"):
        second.read_message(message3)


def pair() -> tuple[NoiseTransport, NoiseTransport]:
    initiator, responder = handshake(Identity.generate(), Identity.generate())
    return initiator.transport(), responder.transport()


@pytest.mark.parametrize("size", [0, 1, 65518, 65519, 65520, 200_000])
def test_packages_are_split_and_reassembled(size: int) -> None:
    sender, receiver = pair()
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    messages = list(sender.seal(data))
    assert all(len(m) <= MAX_NOISE_MESSAGE for m in messages)
    assert len(messages) == max(1, -(-size // 65518))
    opened = [receiver.open(m, max_size=None) for m in messages]
    assert opened[:-1] == [[]] * (len(messages) - 1)
    assert opened[-1] == [data]


def test_reassembly_is_bounded() -> None:
    sender, receiver = pair()
    first, second, _ = sender.seal(bytes(150_000))
    assert receiver.open(first, max_size=100_000) == []
    with pytest.raises(OversizedPackage, match="exceeds the limit"):
        receiver.open(second, max_size=100_000)


def test_transport_replay_and_tampering_fail() -> None:
    sender, receiver = pair()
    message = sender.seal(b"hello")[0]
    assert receiver.open(message, max_size=None) == [b"hello"]
    with pytest.raises(ChannelError, match="doesn't decrypt"):
        receiver.open(message, max_size=None)  # replayed: the nonce moved on
    sender2, receiver2 = pair()
    tampered = bytearray(sender2.seal(b"hello")[0])
    tampered[0] ^= 1
    with pytest.raises(ChannelError, match="doesn't decrypt"):
        receiver2.open(bytes(tampered), max_size=None)


def test_transport_before_the_handshake_completes_is_a_usage_error() -> None:
    initiator = NoiseHandshake(Identity.generate(), initiator=True)
    initiator.write_message()
    with pytest.raises(UsageError) as info:
        initiator.transport()
    assert str(info.value) == "the handshake is not complete"


def test_handshake_failures_are_handshake_errors_only() -> None:
    # A handshake error is never a channel error: the node blocks on channel errors.
    responder = NoiseHandshake(Identity.generate(), initiator=False)
    with pytest.raises(HandshakeError) as info:
        responder.read_message(b"short")
    assert not isinstance(info.value, ChannelError)
    assert str(info.value).startswith("handshake message 1 is invalid")


@pytest.mark.parametrize(
    ("plaintext", "reason"),
    [
        (b"", "empty transport message"),
        (b"\x03chunk", "invalid chunk flag 3"),
        (b"\x02", "empty batch"),
        (b"\x02\x00\x00\x00", "truncated package length in a batch"),
        (b"\x02\x00\x00\x00\x00x", "empty package in a batch"),
        (b"\x02\x00\x00\x00\x02x", "package of 2 bytes overruns its batch"),
        (b"\x02\x00\x00\x00\x01xy", "truncated package length in a batch"),
        # Found by an attacker: empty chunks were taken without end (26 MB in 25 s from
        # one connection, and each kept a peer that answered no ping alive).
        (b"\x01", "a chunk before the last of 0 bytes, not full"),
        (b"\x01" + bytes(65_517), "a chunk before the last of 65517 bytes, not full"),
    ],
)
def test_malformed_transport_plaintext_is_a_channel_error(plaintext: bytes, reason: str) -> None:
    sender, receiver = pair()
    with pytest.raises(ChannelError) as info:
        receiver.open(sender.encrypt(plaintext), max_size=None)
    assert str(info.value) == reason


def test_oversized_noise_message_is_a_channel_error() -> None:
    _, receiver = pair()
    with pytest.raises(ChannelError) as info:
        receiver.decrypt(bytes(MAX_NOISE_MESSAGE + 1))
    assert str(info.value) == f"Noise message of {MAX_NOISE_MESSAGE + 1} bytes exceeds 65535"


def test_exhausted_nonces_are_a_channel_error() -> None:
    sender, receiver = pair()
    sender._send_nonce = receiver._receive_nonce = 2**64 - 1
    with pytest.raises(ChannelError) as info:
        sender.encrypt(b"x")
    assert str(info.value) == "nonces exhausted: 2**64 - 1 messages sent"
    with pytest.raises(ChannelError) as info:
        receiver.decrypt(bytes(17))
    assert str(info.value) == "nonces exhausted: 2**64 - 1 messages received"


def test_one_noise_key_serves_every_handshake() -> None:
    """A node's static key and signed payload are made once and reused: each handshake
    draws a fresh ephemeral key only."""
    key = NoiseKey(Identity.generate())
    seen = set()
    for _ in range(2):
        initiator = NoiseHandshake(key, initiator=True)
        responder = NoiseHandshake(Identity.generate(), initiator=False)
        message1 = initiator.write_message()
        responder.read_message(message1)
        initiator.read_message(responder.write_message())
        responder.read_message(initiator.write_message())
        assert responder.remote_peer_id == key.identity.peer_id
        seen.add(message1)
    assert len(seen) == 2  # a fresh ephemeral key each time
    with pytest.raises(UsageError, match="static_key goes with an Identity"):
        NoiseHandshake(key, initiator=True, static_key=bytes(32))


def test_noiseprotocol_is_not_used() -> None:
    import trustp2p.security.channel  # noqa: F401

    assert "noise" not in sys.modules  # the noiseprotocol package's top-level module


# Batches: negotiated in the handshake, several packages in one transport message


def test_batches_are_agreed_when_both_sides_offer_them() -> None:
    initiator, responder = handshake(Identity.generate(), Identity.generate())
    assert initiator.batches and responder.batches
    assert initiator.transport().batches and responder.transport().batches


@pytest.mark.parametrize(
    ("initiator_features", "responder_features"), [(True, False), (False, True)]
)
def test_a_peer_from_before_batches_gets_none(
    initiator_features: bool, responder_features: bool
) -> None:
    """A side without features (the previous implementation) completes the handshake
    with one that has them, and neither sends batches: the new side's features byte
    goes where the old one ignores it, and it answers only an offer."""
    initiator = NoiseHandshake(Identity.generate(), initiator=True, features=initiator_features)
    responder = NoiseHandshake(Identity.generate(), initiator=False, features=responder_features)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    assert initiator.complete and responder.complete
    assert not initiator.batches and not responder.batches
    sender, receiver = initiator.transport(), responder.transport()
    messages = sender.seal_all([b"one", b"two"])
    assert len(messages) == 2  # one by one
    assert [p for m in messages for p in receiver.open(m, max_size=None)] == [b"one", b"two"]


def test_a_batch_where_none_was_agreed_is_refused() -> None:
    initiator = NoiseHandshake(Identity.generate(), initiator=True, features=False)
    responder = NoiseHandshake(Identity.generate(), initiator=False, features=False)
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    sender, receiver = initiator.transport(), responder.transport()
    with pytest.raises(ChannelError, match="invalid chunk flag 2"):
        receiver.open(sender.encrypt(b"\x02\x00\x00\x00\x01x"), max_size=None)


def test_packages_written_together_travel_in_one_message() -> None:
    sender, receiver = pair()
    packages = [b"a" * 100, b"b" * 200, b"c"]
    (message,) = sender.seal_all(packages)
    assert len(message) == 1 + 3 * 4 + 301 + 16  # flag, lengths, packages, AEAD tag
    assert receiver.open(message, max_size=None) == packages


def test_a_batch_of_one_is_an_ordinary_message() -> None:
    sender, receiver = pair()
    batched = sender.seal_all([b"alone"])
    other, _ = pair()
    assert len(batched) == 1 and len(batched[0]) == len(other.seal(b"alone")[0])
    assert receiver.open(batched[0], max_size=None) == [b"alone"]


def test_batches_fill_messages_and_large_packages_go_alone_in_order() -> None:
    sender, receiver = pair()
    big = bytes(range(256)) * 400  # 102,400 bytes: two chunks of its own
    packages = [b"x" * 40_000, b"y" * 40_000, big, b"z" * 10, b"w" * 65_510]
    messages = sender.seal_all(packages)
    assert all(len(m) <= MAX_NOISE_MESSAGE for m in messages)
    # x alone (y doesn't fit beside it), y alone, big in two chunks, z alone (w
    # doesn't fit beside it), w alone (its length and it fill a message but for 1 byte).
    assert len(messages) == 6
    assert [p for m in messages for p in receiver.open(m, max_size=None)] == packages


def test_a_package_in_a_batch_is_bounded() -> None:
    sender, receiver = pair()
    (message,) = sender.seal_all([b"small", b"x" * 1000])
    with pytest.raises(OversizedPackage, match="package of more than 999 bytes exceeds the limit"):
        receiver.open(message, max_size=999)


@given(st.lists(st.binary(min_size=1, max_size=70_000), min_size=1, max_size=12))
@settings(max_examples=40, deadline=None)
def test_any_packages_written_together_arrive_whole_and_in_order(packages: list[bytes]) -> None:
    sender, receiver = pair()
    messages = sender.seal_all(packages)
    assert all(len(m) <= MAX_NOISE_MESSAGE for m in messages)
    assert [p for m in messages for p in receiver.open(m, max_size=None)] == packages


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_any_batch_plaintext_opens_or_is_a_channel_error(body: bytes) -> None:
    """Whatever a peer seals as a batch, opening it gives packages or a ChannelError."""
    sender, receiver = pair()
    try:
        packages = receiver.open(sender.encrypt(b"\x02" + body), max_size=100)
    except ChannelError:
        return
    assert all(0 < len(p) <= 100 for p in packages)
    assert sum(len(p) + 4 for p in packages) == len(body)
