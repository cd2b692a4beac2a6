"""The Noise state machines on their own: CipherState, SymmetricState, HandshakeState."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from trustp2p.exceptions import ChannelError, HandshakeError, UsageError
from trustp2p.security.noise_state import (
    MAX_MESSAGE,
    MAX_NONCE,
    CipherState,
    HandshakeState,
    SymmetricState,
    hkdf,
    hmac_sha256,
    pack_nonce,
    x25519_public,
)

KEY = bytes(range(32))


def pair(prologue: bytes = b"p") -> tuple[HandshakeState, HandshakeState]:
    return (
        HandshakeState(initiator=True, static=X25519PrivateKey.generate(), prologue=prologue),
        HandshakeState(initiator=False, static=X25519PrivateKey.generate(), prologue=prologue),
    )


def run(initiator: HandshakeState, responder: HandshakeState) -> None:
    responder.read_message(initiator.write_message(b"one"))
    initiator.read_message(responder.write_message(b"two"))
    responder.read_message(initiator.write_message(b"three"))


# CipherState


def test_cipher_state_without_key_passes_data_through() -> None:
    cipher = CipherState()
    assert not cipher.has_key
    assert cipher.encrypt_with_ad(b"ad", b"data") == b"data"
    assert cipher.decrypt_with_ad(b"ad", b"data") == b"data"
    assert cipher.nonce == 0


def test_cipher_state_round_trip_and_nonces() -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    for index in range(3):
        message = sender.encrypt_with_ad(b"ad", b"hello %d" % index)
        assert len(message) == len(b"hello 0") + 16
        assert receiver.decrypt_with_ad(b"ad", message) == b"hello %d" % index
    assert sender.nonce == receiver.nonce == 3
    assert pack_nonce(3) == bytes(4) + (3).to_bytes(8, "little")


def test_cipher_state_builds_its_aead_on_first_use_and_again_for_a_new_key() -> None:
    cipher = CipherState(KEY)
    assert cipher.has_key and cipher._aead is None  # split()'s keys may never be used here
    first = cipher.encrypt_with_ad(b"ad", b"data")
    assert first == CipherState(KEY).encrypt_with_ad(b"ad", b"data")
    other = bytes(32)
    cipher.initialize_key(other)
    assert cipher.nonce == 0
    assert cipher.encrypt_with_ad(b"ad", b"data") == CipherState(other).encrypt_with_ad(
        b"ad", b"data"
    )
    cipher.initialize_key(None)
    assert not cipher.has_key
    assert cipher.encrypt_with_ad(b"ad", b"data") == b"data"


@pytest.mark.parametrize("change", ["ciphertext", "tag", "ad", "truncated"])
def test_bad_mac_is_a_clear_error_and_keeps_the_nonce(change: str) -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    message, ad = bytearray(sender.encrypt_with_ad(b"ad", b"hello")), b"ad"
    if change == "ciphertext":
        message[0] ^= 1
    elif change == "tag":
        message[-1] ^= 1
    elif change == "ad":
        ad = b"other"
    else:
        message = message[:10]
    with pytest.raises(ChannelError) as info:
        receiver.decrypt_with_ad(ad, bytes(message))
    assert str(info.value) == "bad MAC: the message doesn't decrypt"
    assert receiver.nonce == 0  # §5.1: a failed decryption doesn't move the nonce


def test_nonce_overflow_is_an_error() -> None:
    sender, receiver = CipherState(KEY), CipherState(KEY)
    sender.nonce = receiver.nonce = MAX_NONCE - 1  # the last usable nonce
    assert receiver.decrypt_with_ad(b"", sender.encrypt_with_ad(b"", b"last")) == b"last"
    assert sender.nonce == MAX_NONCE
    with pytest.raises(ChannelError, match="nonces exhausted"):
        sender.encrypt_with_ad(b"", b"one more")
    with pytest.raises(ChannelError, match="nonces exhausted"):
        receiver.decrypt_with_ad(b"", bytes(20))


# SymmetricState


def test_protocol_name_is_padded_or_hashed() -> None:
    assert SymmetricState(b"Noise_XX_25519_ChaChaPoly_SHA256").h == (
        b"Noise_XX_25519_ChaChaPoly_SHA256"
    )
    assert SymmetricState(b"Noise_NN").h == b"Noise_NN" + bytes(24)
    long = b"Noise_XXfallback_25519_ChaChaPoly_SHA256"
    state = SymmetricState(long)
    assert state.h == state.ck == hashlib.sha256(long).digest()


def test_hkdf_is_rfc5869_with_the_chaining_key_as_salt() -> None:
    chaining_key, material = bytes(range(32)), b"input key material"
    expected = HKDF(algorithm=hashes.SHA256(), length=64, salt=chaining_key, info=b"")
    first, second = hkdf(chaining_key, material)
    assert first + second == expected.derive(material)


def test_split_gives_two_keys() -> None:
    state = SymmetricState(b"Noise_XX_25519_ChaChaPoly_SHA256")
    state.mix_key(b"secret")
    first, second = state.split()
    assert first.key is not None and second.key is not None and first.key != second.key
    assert first.nonce == second.nonce == 0


# HandshakeState


def test_xx_handshake_completes_with_matching_keys() -> None:
    initiator, responder = pair()
    message1 = initiator.write_message(b"one")
    assert message1[32:] == b"one"  # no key yet: message 1's payload is in clear
    assert responder.read_message(message1) == b"one"
    assert initiator.read_message(responder.write_message(b"two")) == b"two"
    assert not initiator.complete  # it still has message 3 to write
    assert responder.read_message(initiator.write_message(b"three")) == b"three"
    assert initiator.complete and responder.complete
    assert initiator.handshake_hash == responder.handshake_hash
    assert initiator.remote_static == x25519_public(responder._s)
    assert responder.remote_static == x25519_public(initiator._s)
    assert initiator.transport is not None and responder.transport is not None
    (i_send, i_receive), (r_receive, r_send) = initiator.transport, responder.transport
    assert i_send.key == r_receive.key and i_receive.key == r_send.key
    assert r_receive.decrypt_with_ad(b"", i_send.encrypt_with_ad(b"", b"x")) == b"x"


def test_another_prologue_fails_at_the_first_mac() -> None:
    initiator, _ = pair(b"ours")
    _, responder = pair(b"theirs")
    responder.read_message(initiator.write_message())
    with pytest.raises(HandshakeError, match="handshake message 2 is invalid: bad MAC"):
        initiator.read_message(responder.write_message())


@pytest.mark.parametrize(("step", "size"), [(0, 31), (1, 32), (1, 32 + 48), (1, 95), (2, 47)])
def test_truncated_message_is_a_handshake_error(step: int, size: int) -> None:
    sides = pair()
    for index in range(step):
        sides[(index + 1) % 2].read_message(sides[index % 2].write_message())
    message = sides[step % 2].write_message()
    with pytest.raises(HandshakeError) as info:
        sides[(step + 1) % 2].read_message(message[:size])
    assert str(info.value) == f"handshake message {step + 1} is invalid: truncated: {size} bytes"


def test_tampered_static_key_is_a_bad_mac() -> None:
    initiator, responder = pair()
    responder.read_message(initiator.write_message())
    message = bytearray(responder.write_message())
    message[40] ^= 1  # inside the encrypted static key
    with pytest.raises(HandshakeError, match="handshake message 2 is invalid: bad MAC"):
        initiator.read_message(bytes(message))
    assert initiator.step == 1  # nothing moved on


def test_oversized_message_is_a_handshake_error() -> None:
    _, responder = pair()
    with pytest.raises(HandshakeError, match=f"65536 bytes exceeds {MAX_MESSAGE}"):
        responder.read_message(bytes(MAX_MESSAGE + 1))


def test_low_order_ephemeral_key_is_refused() -> None:
    _, responder = pair()
    responder.read_message(bytes(32))  # an all-zero "public key": every DH gives zeros
    with pytest.raises(HandshakeError) as info:
        responder.write_message()
    assert str(info.value) == "can't write handshake message 2: the peer's public key is invalid"


def test_calls_out_of_turn_are_usage_errors() -> None:
    initiator, responder = pair()
    with pytest.raises(UsageError, match="not our turn to read"):
        initiator.read_message(bytes(32))
    with pytest.raises(UsageError, match="not our turn to write"):
        responder.write_message()
    run(initiator, responder)
    with pytest.raises(UsageError, match="the handshake is complete"):
        initiator.write_message()
    with pytest.raises(UsageError, match="the handshake is complete"):
        responder.read_message(bytes(64))


@pytest.mark.parametrize("key_size", [0, 1, 32, 64])
def test_hmac_sha256_is_the_standard_one(key_size: int) -> None:
    key = bytes(range(key_size))
    for data in (b"", b"\x01", bytes(range(200))):
        assert hmac_sha256(key, data) == hmac.digest(key, data, "sha256")


def test_another_suite_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="only the _25519_ChaChaPoly_SHA256 suite"):
        HandshakeState(
            initiator=True,
            static=X25519PrivateKey.generate(),
            protocol_name=b"Noise_XX_25519_AESGCM_SHA256",
        )
