"""
The secure channel: Noise XX (``Noise_XX_25519_ChaChaPoly_SHA256``), without I/O.

The cryptography comes from the ``noiseprotocol`` package; this module is the small
interface trustp2p uses, so that the implementation can be replaced.

XX takes three messages, the dialler (initiator) first::

    -> e
    <- e, ee, s, es   + payload: the responder's identity
    -> s, se          + payload: the initiator's identity

Each identity payload binds the sender's Noise static key to its Ed25519 identity, as
libp2p does: ``public key (32 bytes) || signature (64 bytes)`` over
``b"trustp2p-noise-static-key:" + noise static public key``. After the handshake, each
package travels as one or more Noise transport messages (at most 65 535 bytes each):
each plaintext starts with one byte, ``0x01`` when more chunks of the same package
follow and ``0x00`` on its last chunk.

"""

from __future__ import annotations

__all__ = [
    "MAX_NOISE_MESSAGE",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "NoiseHandshake",
    "NoiseTransport",
]

import struct
import warnings
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from noise.connection import Keypair, NoiseConnection
from noise.exceptions import NoiseInvalidMessage, NoiseValueError

from ..exceptions import ChannelError, HandshakeError, UsageError
from ..identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    PeerId,
    peer_id_from_public_key,
    verify_signature,
)

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
PROLOGUE = b"trustp2p/1"
"""Mixed into the handshake hash: both sides must agree on it."""


MAX_NOISE_MESSAGE = 65535
_TAG_SIZE = 16
_MAX_CHUNK = MAX_NOISE_MESSAGE - _TAG_SIZE - 1  # plaintext bytes of a package per message
_MORE, _LAST = b"\x01", b"\x00"
_MAX_NONCE = 2**64 - 1  # reserved by the Noise specification
_pack_nonce = struct.Struct("<4xQ").pack  # 32 zero bits, then the counter little-endian
_SIGNATURE_PREFIX = b"trustp2p-noise-static-key:"
_PAYLOAD_SIZE = PUBLIC_KEY_SIZE + SIGNATURE_SIZE


def _static_public(private: bytes) -> bytes:
    return (
        X25519PrivateKey.from_private_bytes(private)
        .public_key()
        .public_bytes(Encoding.Raw, PublicFormat.Raw)
    )


class NoiseHandshake:
    """
    One side of a Noise XX handshake.

    Call :meth:`write_message` and :meth:`read_message` in turn (the initiator writes
    first) until :attr:`complete`; then :meth:`transport` gives the ciphers.

    Args:
        identity: Our long-term identity, proven to the peer in our payload.
        initiator: True for the side that dialled.
        expected_peer_id: The peer id the remote must prove, when known (from a
            ``/p2p/<peer-id>`` URL); meeting another key raises :exc:`HandshakeError`.
        static_key: Our Noise static private key (32 bytes); a fresh one by default.
        ephemeral_key: Our ephemeral private key, for test vectors only.

    """

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        expected_peer_id: PeerId | None = None,
        prologue: bytes = PROLOGUE,
        static_key: bytes | None = None,
        ephemeral_key: bytes | None = None,
    ) -> None:
        self.initiator = initiator
        self.remote_peer_id: PeerId | None = None
        self.remote_public_key: bytes | None = None
        self._identity = identity
        self._expected = expected_peer_id
        if static_key is None:
            static_key = X25519PrivateKey.generate().private_bytes(
                Encoding.Raw, PrivateFormat.Raw, NoEncryption()
            )
        self._static_public = _static_public(static_key)
        connection = NoiseConnection.from_name(PROTOCOL_NAME)
        if initiator:
            connection.set_as_initiator()
        else:
            connection.set_as_responder()
        connection.set_prologue(prologue)
        connection.set_keypair_from_private_bytes(Keypair.STATIC, static_key)
        if ephemeral_key is not None:
            connection.set_keypair_from_private_bytes(Keypair.EPHEMERAL, ephemeral_key)
            with warnings.catch_warnings():
                # noiseprotocol warns that a fixed ephemeral key is for tests only.
                warnings.simplefilter("ignore", UserWarning)
                connection.start_handshake()
        else:
            connection.start_handshake()
        self._connection = connection
        self._step = 0  # messages processed so far
        self._state: Any = None

    @property
    def step(self) -> int:
        """How many handshake messages this side has written or read."""
        return self._step

    @property
    def complete(self) -> bool:
        return bool(self._connection.handshake_finished)

    @property
    def handshake_hash(self) -> bytes:
        return bytes(self._connection.get_handshake_hash())

    def _our_payload(self) -> bytes:
        signature = self._identity.sign(_SIGNATURE_PREFIX + self._static_public)
        return self._identity.public_key + signature

    def write_message(self, payload: bytes | None = None) -> bytes:
        """
        The next handshake message to send.

        Messages 2 (responder) and 3 (initiator) carry our identity payload; pass
        ``payload`` only to reproduce test vectors.

        Raises:
            HandshakeError: If the handshake state doesn't allow writing now.

        """
        if payload is None:
            payload = b"" if self._step == 0 else self._our_payload()
        try:
            message = bytes(self._connection.write_message(payload))
        except (NoiseValueError, NoiseInvalidMessage) as exc:
            raise HandshakeError(f"can't write handshake message {self._step + 1}: {exc}") from exc
        self._step += 1
        return message

    def read_message(self, message: bytes, *, verify_identity: bool = True) -> bytes:
        """
        Process the peer's next handshake message and return its payload.

        ``verify_identity=False`` skips the identity check: for test vectors only.

        Raises:
            HandshakeError: If the message is malformed or tampered with, or the peer's
                identity payload is invalid or not the expected peer id.

        """
        # noiseprotocol drops its handshake state once the handshake completes, and the
        # peer's static key with it: keep a reference to read the key afterwards.
        self._state = self._connection.noise_protocol.handshake_state
        try:
            payload = bytes(self._connection.read_message(message))
        except Exception as exc:  # noiseprotocol raises a mix of types on bad input
            raise HandshakeError(
                f"handshake message {self._step + 1} is invalid: "
                f"{type(exc).__name__}{': ' + str(exc) if str(exc) else ''}"
            ) from exc
        self._step += 1
        if self._step >= 2 and verify_identity:
            self._check_payload(payload)
        self._state = None
        return payload

    def _check_payload(self, payload: bytes) -> None:
        if len(payload) != _PAYLOAD_SIZE:
            raise HandshakeError(
                f"identity payload of {len(payload)} bytes, expected {_PAYLOAD_SIZE}"
            )
        public_key, signature = payload[:PUBLIC_KEY_SIZE], payload[PUBLIC_KEY_SIZE:]
        remote_static = bytes(self._state.rs.public_bytes)
        if not verify_signature(public_key, signature, _SIGNATURE_PREFIX + remote_static):
            raise HandshakeError("identity signature doesn't match the peer's Noise static key")
        peer_id = peer_id_from_public_key(public_key)
        if self._expected is not None and peer_id != self._expected:
            raise HandshakeError(f"peer is {peer_id}, not the expected {self._expected}")
        self.remote_public_key = public_key
        self.remote_peer_id = peer_id

    def transport(self) -> NoiseTransport:
        """
        The transport ciphers, once the handshake is complete.

        Raises:
            UsageError: If the handshake is not complete yet.

        """
        if not self.complete:
            raise UsageError("the handshake is not complete")
        return NoiseTransport(self._connection)


class NoiseTransport:
    """
    Encrypts and decrypts packages after the handshake; splits large ones.

    The handshake runs in ``noiseprotocol``; the transport messages, one AEAD call each,
    are sealed here with the two ChaCha20-Poly1305 keys it derived and the nonces of
    the Noise specification (§5.1: a counter from 0, as 32 zero bits then 64 bits
    little-endian). Per message that saves the layers of ``noiseprotocol`` around the
    call, which cost as much again as the cipher on small packages.
    """

    def __init__(self, connection: NoiseConnection) -> None:
        protocol = connection.noise_protocol
        sending, receiving = protocol.cipher_state_encrypt, protocol.cipher_state_decrypt
        self._send_cipher = ChaCha20Poly1305(bytes(sending.k))
        self._receive_cipher = ChaCha20Poly1305(bytes(receiving.k))
        self._send_nonce: int = sending.n
        self._receive_nonce: int = receiving.n
        self._chunks: list[bytes] = []
        self._size = 0

    def encrypt(self, plaintext: bytes) -> bytes:
        """
        Encrypt one transport message (at most 65 519 bytes of plaintext).

        Raises:
            ChannelError: If this side sent 2**64 - 1 messages: its nonces are used up.

        """
        nonce = self._send_nonce
        if nonce >= _MAX_NONCE:
            raise ChannelError("nonces exhausted: 2**64 - 1 messages sent")
        self._send_nonce = nonce + 1
        return self._send_cipher.encrypt(_pack_nonce(nonce), plaintext, None)

    def decrypt(self, message: bytes) -> bytes:
        """
        Decrypt one transport message.

        Raises:
            ChannelError: If it doesn't decrypt (tampered, replayed or out of order), is
                longer than 65 535 bytes, or the nonces are used up.

        """
        if len(message) > MAX_NOISE_MESSAGE:
            raise ChannelError(f"Noise message of {len(message)} bytes exceeds {MAX_NOISE_MESSAGE}")
        nonce = self._receive_nonce
        if nonce >= _MAX_NONCE:
            raise ChannelError("nonces exhausted: 2**64 - 1 messages received")
        try:
            plaintext = self._receive_cipher.decrypt(_pack_nonce(nonce), message, None)
        except InvalidTag:
            raise ChannelError("transport message doesn't decrypt") from None
        self._receive_nonce = nonce + 1
        return plaintext

    def seal(self, data: bytes) -> list[bytes]:
        """
        Encrypt one package into Noise messages of at most 65 535 bytes.

        Raises:
            ChannelError: If the nonces are used up (see :meth:`encrypt`).

        """
        if len(data) <= _MAX_CHUNK:
            return [self.encrypt(_LAST + data)]
        messages = []
        view = memoryview(data)
        while len(view) > _MAX_CHUNK:
            messages.append(self.encrypt(_MORE + view[:_MAX_CHUNK]))
            view = view[_MAX_CHUNK:]
        messages.append(self.encrypt(_LAST + view))
        return messages

    def open(self, message: bytes, *, max_size: int | None) -> bytes | None:
        """
        Decrypt one Noise message; return the package once its last chunk arrived.

        Raises:
            ChannelError: If the message doesn't decrypt (tampered, replayed, out of
                order), is empty or has an invalid chunk flag, or the package grows
                beyond ``max_size`` bytes.

        """
        plaintext = self.decrypt(message)
        if not plaintext:
            raise ChannelError("empty transport message")
        flag, chunk = plaintext[0], plaintext[1:]
        self._size += len(chunk)
        if max_size is not None and self._size > max_size:
            raise ChannelError(f"package of more than {max_size} bytes exceeds the limit")
        if flag == _MORE[0]:
            self._chunks.append(chunk)
            return None
        if flag != _LAST[0]:
            raise ChannelError(f"invalid chunk flag {flag}")
        if self._chunks:
            self._chunks.append(chunk)
            chunk = b"".join(self._chunks)
            self._chunks = []
        self._size = 0
        return chunk
