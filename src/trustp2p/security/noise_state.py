"""
The Noise protocol framework's state machines, without I/O (revision 34 of the
specification, §5): :class:`CipherState`, :class:`SymmetricState`, :class:`HandshakeState`.

Only what trustp2p speaks is here: DH 25519, cipher ChaChaPoly, hash SHA256 (so
``Noise_XX_25519_ChaChaPoly_SHA256``), handshake patterns without pre-messages or PSKs.
The primitives come from ``cryptography`` (X25519, ChaCha20-Poly1305) and from the
standard library's OpenSSL-backed ``hashlib`` (SHA-256, and HMAC-SHA256 over it for the
specification's HKDF, §4.3). The published cacophony and snow test vectors check it
(``tests/security/noise-xx-vectors.json``).

Errors: a message that is truncated or doesn't decrypt raises
:exc:`~trustp2p.exceptions.HandshakeError` from :class:`HandshakeState` and
:exc:`~trustp2p.exceptions.ChannelError` from a :class:`CipherState` used on its own;
calling out of turn is a :exc:`~trustp2p.exceptions.UsageError`.

"""

from __future__ import annotations

__all__ = [
    "DHLEN",
    "MAX_MESSAGE",
    "MAX_NONCE",
    "PATTERN_XX",
    "SUITE",
    "TAGLEN",
    "CipherState",
    "HandshakeState",
    "SymmetricState",
    "hkdf",
    "hmac_sha256",
    "pack_nonce",
    "x25519_public",
]

import hashlib
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..exceptions import ChannelError, HandshakeError, UsageError

DHLEN = 32
HASHLEN = 32
TAGLEN = 16
MAX_MESSAGE = 65535
"""The longest Noise message, handshake or transport (§3)."""
MAX_NONCE = 2**64 - 1
"""Reserved by the specification (§5.1): a cipher state that reaches it is used up."""
SUITE = b"_25519_ChaChaPoly_SHA256"
"""The DH, cipher and hash functions implemented here, as a protocol name ends."""
PATTERN_XX: tuple[tuple[str, ...], ...] = (("e",), ("e", "ee", "s", "es"), ("s", "se"))
"""The XX pattern (§7.5): initiator first, then alternating."""

pack_nonce = struct.Struct("<4xQ").pack
"""ChaChaPoly's nonce (§12.3): 32 zero bits, then the 64-bit counter little-endian."""


def x25519_public(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``private``."""
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_sha256 = hashlib.sha256


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) of ``data`` under a key of at most 64 bytes: the
    construction written out over ``hashlib``, which costs less than ``hmac.digest``
    for the short inputs of a handshake."""
    key = key.ljust(64, b"\x00")
    return _sha256(key.translate(_OPAD) + _sha256(key.translate(_IPAD) + data).digest()).digest()


def hkdf(chaining_key: bytes, input_key_material: bytes) -> tuple[bytes, bytes]:
    """The specification's ``HKDF(ck, ikm, 2)`` (§4.3) on HMAC-SHA256."""
    temp_key = hmac_sha256(chaining_key, input_key_material)
    output1 = hmac_sha256(temp_key, b"\x01")
    return output1, hmac_sha256(temp_key, output1 + b"\x02")


class CipherState:
    """
    A key (or none yet) and its nonce counter (§5.1).

    Without a key, encryption and decryption return the data unchanged, as the
    specification says. The ChaCha20-Poly1305 object is built once per key, when the
    key is first used: the transport keys of :meth:`SymmetricState.split` usually go to
    a :class:`~trustp2p.security.noise.NoiseTransport`, which builds its own.

    """

    __slots__ = ("_aead", "key", "nonce")

    def __init__(self, key: bytes | None = None) -> None:
        self.key: bytes | None = None
        self.nonce = 0
        self._aead: ChaCha20Poly1305 | None = None
        self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        """Use ``key`` from now on, with the nonce back at 0."""
        self.key = key
        self.nonce = 0
        self._aead = None

    @property
    def has_key(self) -> bool:
        return self.key is not None

    def _cipher(self, key: bytes) -> ChaCha20Poly1305:
        aead = self._aead
        if aead is None:
            aead = self._aead = ChaCha20Poly1305(key)
        return aead

    def _next_nonce(self) -> bytes:
        if self.nonce >= MAX_NONCE:
            raise ChannelError("nonces exhausted: 2**64 - 1 messages")
        return pack_nonce(self.nonce)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """
        Encrypt ``plaintext`` with associated data ``ad``; the nonce moves on.

        Raises:
            ChannelError: If the nonces are used up.

        """
        if self.key is None:
            return bytes(plaintext)
        ciphertext = self._cipher(self.key).encrypt(self._next_nonce(), plaintext, ad)
        self.nonce += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """
        Decrypt ``ciphertext``; the nonce moves on only if it authenticates.

        Raises:
            ChannelError: If the MAC doesn't match (bad MAC: tampered, truncated,
                another key or nonce), or the nonces are used up.

        """
        if self.key is None:
            return bytes(ciphertext)
        try:
            plaintext = self._cipher(self.key).decrypt(self._next_nonce(), ciphertext, ad)
        except InvalidTag:
            raise ChannelError("bad MAC: the message doesn't decrypt") from None
        self.nonce += 1
        return plaintext


class SymmetricState:
    """The chaining key, the handshake hash and the handshake's cipher state (§5.2)."""

    __slots__ = ("cipher", "ck", "h")

    def __init__(self, protocol_name: bytes) -> None:
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = hashlib.sha256(protocol_name).digest()
        self.ck = self.h
        self.cipher = CipherState()

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_key = hkdf(self.ck, input_key_material)
        self.cipher.initialize_key(temp_key)

    def mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """The two transport cipher states: initiator to responder, then back."""
        key1, key2 = hkdf(self.ck, b"")
        return CipherState(key1), CipherState(key2)


class HandshakeState:
    """
    One side of a handshake (§5.3), message by message.

    Args:
        initiator: True for the side that writes the first message.
        static: Our static key pair.
        prologue: Data both sides must agree on, mixed into the handshake hash.
        ephemeral: Our ephemeral key pair; a fresh one when the pattern asks for it,
            by default (a fixed one is for test vectors only).
        protocol_name: The full protocol name; its suite must be 25519_ChaChaPoly_SHA256.
        pattern: The message patterns, without pre-messages (XX by default).
        static_public: The public key of ``static``, if known already (saves a
            derivation per handshake).

    Raises:
        UsageError: If ``protocol_name`` names another suite.

    """

    def __init__(
        self,
        *,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = b"",
        ephemeral: X25519PrivateKey | None = None,
        protocol_name: bytes = b"Noise_XX_25519_ChaChaPoly_SHA256",
        pattern: tuple[tuple[str, ...], ...] = PATTERN_XX,
        static_public: bytes | None = None,
    ) -> None:
        if not protocol_name.endswith(SUITE):
            raise UsageError(f"only the {SUITE.decode()} suite is implemented")
        self.initiator = initiator
        self.symmetric = SymmetricState(protocol_name)
        self.symmetric.mix_hash(prologue)
        self._s = static
        self._s_public = static_public if static_public is not None else x25519_public(static)
        self._e = ephemeral
        self.remote_static: bytes | None = None
        self.remote_ephemeral: bytes | None = None
        # The peer's keys as X25519 objects, each parsed once: XX uses its "e" twice.
        self._remote_keys: dict[str, X25519PublicKey] = {}
        self._pattern = pattern
        self.step = 0
        """Messages written or read so far."""
        self.transport: tuple[CipherState, CipherState] | None = None
        """Once complete: the cipher states initiator to responder, then back."""

    @property
    def complete(self) -> bool:
        return self.transport is not None

    @property
    def handshake_hash(self) -> bytes:
        return self.symmetric.h

    def _tokens(self, writing: bool) -> tuple[str, ...]:
        if self.transport is not None:
            raise UsageError("the handshake is complete")
        if writing != (self.initiator == (self.step % 2 == 0)):
            raise UsageError(f"not our turn to {'write' if writing else 'read'}")
        return self._pattern[self.step]

    def _done(self) -> None:
        self.step += 1
        if self.step == len(self._pattern):
            self.transport = self.symmetric.split()

    def write_message(self, payload: bytes = b"") -> bytes:
        """
        Our next handshake message, carrying ``payload`` (encrypted once keys exist).

        Raises:
            HandshakeError: If the peer's public key is invalid (a low-order point).
            UsageError: If it is the peer's turn, the handshake is complete, or the
                message would exceed 65 535 bytes.

        """
        tokens = self._tokens(writing=True)
        try:
            message = self._write(tokens, payload)
        except ValueError as exc:
            raise HandshakeError(f"can't write handshake message {self.step + 1}: {exc}") from None
        self._done()
        return message

    def _write(self, tokens: tuple[str, ...], payload: bytes) -> bytes:
        symmetric = self.symmetric
        parts = []
        for token in tokens:
            if token == "e":
                if self._e is None:
                    self._e = X25519PrivateKey.generate()
                public = x25519_public(self._e)
                symmetric.mix_hash(public)
                parts.append(public)
            elif token == "s":
                parts.append(symmetric.encrypt_and_hash(self._s_public))
            else:
                symmetric.mix_key(self._dh(token))
        parts.append(symmetric.encrypt_and_hash(payload))
        message = b"".join(parts)
        if len(message) > MAX_MESSAGE:
            raise UsageError(f"handshake message of {len(message)} bytes exceeds {MAX_MESSAGE}")
        return message

    def read_message(self, message: bytes) -> bytes:
        """
        Process the peer's next handshake message and return its payload.

        Raises:
            HandshakeError: If the message is truncated, too long, or doesn't decrypt.
            UsageError: If it is our turn to write, or the handshake is complete.

        """
        tokens = self._tokens(writing=False)
        number = self.step + 1
        try:
            payload = self._read(tokens, message)
        except (ChannelError, ValueError) as exc:
            raise HandshakeError(f"handshake message {number} is invalid: {exc}") from None
        self._done()
        return payload

    def _read(self, tokens: tuple[str, ...], message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE:
            raise ValueError(f"{len(message)} bytes exceeds {MAX_MESSAGE}")
        symmetric = self.symmetric
        offset = 0
        for token in tokens:
            if token in ("e", "s"):
                size = DHLEN + (TAGLEN if token == "s" and symmetric.cipher.has_key else 0)
                if len(message) < offset + size:
                    raise ValueError(f"truncated: {len(message)} bytes")
                field = message[offset : offset + size]
                offset += size
                if token == "e":
                    self.remote_ephemeral = field
                    symmetric.mix_hash(field)
                else:
                    self.remote_static = symmetric.decrypt_and_hash(field)
            else:
                symmetric.mix_key(self._dh(token))
        if symmetric.cipher.has_key and len(message) < offset + TAGLEN:
            raise ValueError(f"truncated: {len(message)} bytes")
        return symmetric.decrypt_and_hash(message[offset:])

    def _dh(self, token: str) -> bytes:
        """DH for ``ee``, ``es``, ``se`` or ``ss``: the first letter is the initiator's key."""
        ours, theirs = (token[0], token[1]) if self.initiator else (token[1], token[0])
        local = self._e if ours == "e" else self._s
        remote = self.remote_ephemeral if theirs == "e" else self.remote_static
        if local is None or remote is None:
            raise UsageError(f"token {token} before the keys it needs")
        try:
            public = self._remote_keys.get(theirs)
            if public is None:
                public = self._remote_keys[theirs] = X25519PublicKey.from_public_bytes(remote)
            return local.exchange(public)
        except ValueError:  # an all-zero result: a low-order point (§12.1 allows refusing)
            raise ValueError("the peer's public key is invalid") from None
