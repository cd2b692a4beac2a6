"""
The secure channel: Noise XX (``Noise_XX_25519_ChaChaPoly_SHA256``), without I/O.

The Noise state machines are in :mod:`.noise_state`, on ``cryptography``'s primitives;
this module binds them to trustp2p's identities and frames packages.

XX takes three messages, the dialler (initiator) first::

    -> e
    <- e, ee, s, es   + payload: the responder's identity
    -> s, se          + payload: the initiator's identity

Each identity payload binds the sender's Noise static key to its Ed25519 identity, as
libp2p does: ``public key (32 bytes) || signature (64 bytes)`` over
``b"trustp2p-noise-static-key:" + noise static public key``. A node makes its static key
and that signature once (:class:`NoiseKey`), not per connection: a connection costs an
ephemeral key, three DH and one signature check per side. After the handshake, each
package travels as one or more Noise transport messages (at most 65 535 bytes each):
each plaintext starts with one byte, ``0x01`` when more chunks of the same package
follow and ``0x00`` on its last chunk; a chunk before the last is full (else a channel
error: empty ones were taken without end, found by an attacker). Where both sides
support it, packages written together travel as one *batch* message: ``0x02``, then
each package as a 4-byte big-endian length and its bytes (one AEAD call and one frame
for many packages).

Features are negotiated in the handshake, so that peers without them keep working: the
initiator's first message carries a features byte as its payload (a peer without
features ignores that payload), and a responder that read one appends its own to its
identity payload. Bit ``0x01`` is batches; a side sends batches only when both set it.

"""

from __future__ import annotations

__all__ = [
    "MAX_NOISE_MESSAGE",
    "PROLOGUE",
    "PROTOCOL_NAME",
    "NoiseHandshake",
    "NoiseKey",
    "NoiseTransport",
]

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..exceptions import ChannelError, HandshakeError, OversizedPackage, PeerIdMismatch, UsageError
from ..identity import (
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    PeerId,
    peer_id_from_public_key,
    verify_signature,
)
from .noise_state import MAX_MESSAGE, MAX_NONCE, TAGLEN, HandshakeState, pack_nonce, x25519_public

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_SHA256"
PROLOGUE = b"trustp2p/1"
"""Mixed into the handshake hash: both sides must agree on it."""


MAX_NOISE_MESSAGE = MAX_MESSAGE
_MAX_CHUNK = MAX_NOISE_MESSAGE - TAGLEN - 1  # plaintext bytes of a package per message
_MORE, _LAST, _BATCH = b"\x01", b"\x00", b"\x02"
_MORE_FLAG, _LAST_FLAG, _BATCH_FLAG = 1, 0, 2
_LENGTH = 4  # bytes of a package's length in a batch
FEATURE_BATCHES = 0x01
"""Features bit: this side reads batch messages."""
_FEATURES = bytes([FEATURE_BATCHES])
_MAX_FEATURES = 8  # bytes of features a peer may send (later versions may use more)
_SIGNATURE_PREFIX = b"trustp2p-noise-static-key:"
_PAYLOAD_SIZE = PUBLIC_KEY_SIZE + SIGNATURE_SIZE


class NoiseKey:
    """
    A node's Noise static key pair and the identity payload that proves it is ours.

    Made once per node (the :class:`~trustp2p.security.channel.SecureLayer` does), and
    shared by all its handshakes: the X25519 key generation and the Ed25519 signature
    are paid once, not per connection.

    Args:
        identity: The node's long-term identity, which signs the static key.
        private_key: The X25519 private key (32 bytes); a fresh one by default.

    Attributes:
        identity: The identity.
        public_key: The raw 32-byte X25519 public key.
        payload: ``identity public key || signature`` over the static public key.

    """

    __slots__ = ("_private", "identity", "payload", "public_key")

    def __init__(self, identity: Identity, private_key: bytes | None = None) -> None:
        self.identity = identity
        if private_key is None:
            self._private = X25519PrivateKey.generate()
        else:
            self._private = X25519PrivateKey.from_private_bytes(private_key)
        self.public_key = x25519_public(self._private)
        signature = identity.sign(_SIGNATURE_PREFIX + self.public_key)
        self.payload = identity.public_key + signature

    @property
    def private(self) -> X25519PrivateKey:
        """The X25519 private key."""
        return self._private


class NoiseHandshake:
    """
    One side of a Noise XX handshake, with trustp2p's identity payloads.

    Call :meth:`write_message` and :meth:`read_message` in turn (the initiator writes
    first) until :attr:`complete`; then :meth:`transport` gives the ciphers.

    Args:
        key: Our static key and identity payload (:class:`NoiseKey`); an
            :class:`~trustp2p.identity.Identity` makes a fresh one (for tests).
        initiator: True for the side that dialled.
        expected_peer_id: The peer id the remote must prove, when known (from a
            ``/p2p/<peer-id>`` URL); meeting another key raises :exc:`HandshakeError`.
        prologue: Mixed into the handshake hash; both sides must pass the same.
        static_key: Our Noise static private key (32 bytes), with an ``Identity``
            ``key`` only: for test vectors.
        ephemeral_key: Our ephemeral private key, for test vectors only.
        features: Negotiate features (batches); False behaves as a peer from before
            they existed (for tests of that case).

    Attributes:
        batches: True once the handshake agreed on batch messages (both sides set
            :data:`FEATURE_BATCHES`).
        remote_peer_id: The peer's id, once its identity payload is checked.
        remote_public_key: The peer's Ed25519 public key, from then on.
        remote_static_key: The peer's Noise static public key, from then on.

    """

    def __init__(
        self,
        key: NoiseKey | Identity,
        *,
        initiator: bool,
        expected_peer_id: PeerId | None = None,
        prologue: bytes = PROLOGUE,
        static_key: bytes | None = None,
        ephemeral_key: bytes | None = None,
        features: bool = True,
    ) -> None:
        if isinstance(key, Identity):
            key = NoiseKey(key, static_key)
        elif static_key is not None:
            raise UsageError("static_key goes with an Identity, not a NoiseKey")
        self.initiator = initiator
        self.remote_peer_id: PeerId | None = None
        self.remote_public_key: bytes | None = None
        self.remote_static_key: bytes | None = None
        self._key = key
        self._expected = expected_peer_id
        self._features = features
        self._peer_features: int | None = None  # None: the peer sent no features byte
        ephemeral = None
        if ephemeral_key is not None:
            ephemeral = X25519PrivateKey.from_private_bytes(ephemeral_key)
        self._state = HandshakeState(
            initiator=initiator,
            static=key.private,
            static_public=key.public_key,
            prologue=prologue,
            ephemeral=ephemeral,
            protocol_name=PROTOCOL_NAME,
        )

    @property
    def step(self) -> int:
        """How many handshake messages this side has written or read."""
        return self._state.step

    @property
    def complete(self) -> bool:
        return self._state.complete

    @property
    def handshake_hash(self) -> bytes:
        return self._state.handshake_hash

    def write_message(self, payload: bytes | None = None) -> bytes:
        """
        The next handshake message to send.

        Messages 2 (responder) and 3 (initiator) carry our identity payload; pass
        ``payload`` only to reproduce test vectors.

        Raises:
            HandshakeError: If the peer's ephemeral key is invalid.
            UsageError: If it is not our turn to write.

        """
        if payload is None:
            step = self._state.step
            if step == 0:
                payload = _FEATURES if self._features else b""
            elif step == 1 and self._features and self._peer_features is not None:
                payload = self._key.payload + _FEATURES  # an answer to its features
            else:
                payload = self._key.payload
        return self._state.write_message(payload)

    def read_message(self, message: bytes, *, verify_identity: bool = True) -> bytes:
        """
        Process the peer's next handshake message and return its payload.

        ``verify_identity=False`` skips the identity check: for test vectors only.

        Raises:
            HandshakeError: If the message is malformed or tampered with, or the peer's
                identity payload is invalid or not the expected peer id.
            UsageError: If it is not our turn to read.

        """
        payload = self._state.read_message(message)
        step = self._state.step
        if step == 1 and payload and self._features:  # message 1: the initiator's features
            self._peer_features = payload[0]
        elif step >= 2 and verify_identity:
            self._check_payload(payload)
        return payload

    @property
    def batches(self) -> bool:
        """True when both sides set :data:`FEATURE_BATCHES` (known once complete)."""
        return self._features and bool((self._peer_features or 0) & FEATURE_BATCHES)

    def _check_payload(self, payload: bytes) -> None:
        size = len(payload)
        extra = _MAX_FEATURES if self._features else 0
        if not _PAYLOAD_SIZE <= size <= _PAYLOAD_SIZE + extra:
            raise HandshakeError(f"identity payload of {size} bytes, expected {_PAYLOAD_SIZE}")
        if size > _PAYLOAD_SIZE and self.initiator:  # the responder's answer to ours
            self._peer_features = payload[_PAYLOAD_SIZE]
        public_key = payload[:PUBLIC_KEY_SIZE]
        signature = payload[PUBLIC_KEY_SIZE:_PAYLOAD_SIZE]
        remote_static = self._state.remote_static
        assert remote_static is not None  # the s token came before the payload
        if not verify_signature(public_key, signature, _SIGNATURE_PREFIX + remote_static):
            raise HandshakeError("identity signature doesn't match the peer's Noise static key")
        peer_id = peer_id_from_public_key(public_key)
        if self._expected is not None and peer_id != self._expected:
            raise PeerIdMismatch(f"peer is {peer_id}, not the expected {self._expected}")
        self.remote_public_key = public_key
        self.remote_static_key = remote_static
        self.remote_peer_id = peer_id

    def transport(self) -> NoiseTransport:
        """
        The transport ciphers, once the handshake is complete.

        Raises:
            UsageError: If the handshake is not complete yet.

        """
        ciphers = self._state.transport
        if ciphers is None:
            raise UsageError("the handshake is not complete")
        first, second = ciphers
        sending, receiving = (first, second) if self.initiator else (second, first)
        assert sending.key is not None
        assert receiving.key is not None
        return NoiseTransport(sending.key, receiving.key, batches=self.batches)


class NoiseTransport:
    """
    Encrypts and decrypts packages after the handshake; splits large ones.

    One ChaCha20-Poly1305 object per direction, built once, and a nonce counter each
    (§5.1: from 0; on the wire 32 zero bits then 64 bits little-endian): a transport
    message is one AEAD call and no other copy.

    Args:
        send_key: The key of the messages we send.
        receive_key: The key of the messages we receive.
        batches: Both sides agreed on batch messages (:meth:`seal_all` makes them;
            :meth:`open` refuses them otherwise).

    Attributes:
        batches: As the argument.

    """

    __slots__ = (
        *("_chunks", "_decrypt", "_encrypt", "_receive_nonce", "_send_nonce", "_size"),
        "batches",
    )

    def __init__(self, send_key: bytes, receive_key: bytes, *, batches: bool = False) -> None:
        self.batches = batches
        self._encrypt = ChaCha20Poly1305(send_key).encrypt
        self._decrypt = ChaCha20Poly1305(receive_key).decrypt
        self._send_nonce = 0
        self._receive_nonce = 0
        self._chunks: list[bytes] = []
        self._size = 0

    def encrypt(self, plaintext: bytes) -> bytes:
        """
        Encrypt one transport message (at most 65 519 bytes of plaintext).

        Raises:
            ChannelError: If this side sent 2**64 - 1 messages: its nonces are used up.

        """
        nonce = self._send_nonce
        if nonce >= MAX_NONCE:
            raise ChannelError("nonces exhausted: 2**64 - 1 messages sent")
        self._send_nonce = nonce + 1
        return self._encrypt(pack_nonce(nonce), plaintext, None)

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
        if nonce >= MAX_NONCE:
            raise ChannelError("nonces exhausted: 2**64 - 1 messages received")
        try:
            plaintext = self._decrypt(pack_nonce(nonce), message, None)
        except InvalidTag:
            raise ChannelError("transport message doesn't decrypt") from None
        self._receive_nonce = nonce + 1
        return plaintext

    @property
    def exhausted(self) -> bool:
        """True once this side's nonces are used up: nothing more can be sent."""
        return self._send_nonce >= MAX_NONCE

    def seal(self, data: bytes) -> list[bytes]:
        """
        Encrypt one package into Noise messages of at most 65 535 bytes.

        Raises:
            ChannelError: If the nonces are used up (see :meth:`encrypt`).

        """
        if len(data) > _MAX_CHUNK:
            return self._seal_chunks(data)
        nonce = self._send_nonce  # encrypt(), inlined: most packages are one message
        if nonce >= MAX_NONCE:
            raise ChannelError("nonces exhausted: 2**64 - 1 messages sent")
        self._send_nonce = nonce + 1
        return [self._encrypt(pack_nonce(nonce), _LAST + data, None)]

    def _seal_chunks(self, data: bytes) -> list[bytes]:
        messages = []
        view = memoryview(data)
        while len(view) > _MAX_CHUNK:
            messages.append(self.encrypt(_MORE + view[:_MAX_CHUNK]))
            view = view[_MAX_CHUNK:]
        messages.append(self.encrypt(_LAST + view))
        return messages

    def seal_all(self, packages: list[bytes]) -> list[bytes]:
        """
        Encrypt packages written together, in order: where :attr:`batches`, as few
        batch messages as hold them (a package too large for one goes on its own, as
        :meth:`seal` makes it, and so does an empty one, which a batch can't hold; a
        batch of one is an ordinary message); else one by one.

        Raises:
            ChannelError: If the nonces are used up (see :meth:`encrypt`).

        """
        if len(packages) == 1:
            return self.seal(packages[0])
        if not self.batches:
            return [message for data in packages for message in self.seal(data)]
        messages: list[bytes] = []
        batch: list[bytes] = []  # lengths and packages, in turn
        room = _MAX_CHUNK
        for data in packages:
            need = _LENGTH + len(data)
            if need > room and batch:
                messages.append(self._seal_batch(batch))
                batch = []
                room = _MAX_CHUNK
            if need > room or not data:
                messages += self.seal(data)
                continue
            batch += (len(data).to_bytes(_LENGTH, "big"), data)
            room -= need
        if batch:
            messages.append(self._seal_batch(batch))
        return messages

    def _seal_batch(self, batch: list[bytes]) -> bytes:
        if len(batch) == 2:
            return self.encrypt(_LAST + batch[1])
        return self.encrypt(b"".join((_BATCH, *batch)))

    def open(self, message: bytes, *, max_size: int | None) -> list[bytes]:
        """
        Decrypt one Noise message; return the packages it completes: none while a
        package's chunks arrive, one on its last chunk, those of a batch.

        Raises:
            ChannelError: If the message doesn't decrypt (tampered, replayed, out of
                order), is empty, is a chunk before the last that isn't full, has an
                invalid chunk flag (a batch where
                :attr:`batches` is false, or between the chunks of a package), is a
                malformed batch (empty, a truncated length, a package empty or beyond
                the batch's end), or a package grows beyond ``max_size`` bytes.

        """
        if len(message) > MAX_NOISE_MESSAGE:  # decrypt(), inlined
            raise ChannelError(f"Noise message of {len(message)} bytes exceeds {MAX_NOISE_MESSAGE}")
        nonce = self._receive_nonce
        if nonce >= MAX_NONCE:
            raise ChannelError("nonces exhausted: 2**64 - 1 messages received")
        try:
            plaintext = self._decrypt(pack_nonce(nonce), message, None)
        except InvalidTag:
            raise ChannelError("transport message doesn't decrypt") from None
        self._receive_nonce = nonce + 1
        flag = plaintext[:1]
        if flag == _LAST and not self._chunks:  # a whole package: most are
            if max_size is not None and len(plaintext) - 1 > max_size:
                raise OversizedPackage(f"package of more than {max_size} bytes exceeds the limit")
            return [plaintext[1:]]
        if flag == _BATCH and self.batches and not self._chunks:
            return _unbatch(plaintext, max_size)
        package = self._reassemble(plaintext, max_size)
        return [] if package is None else [package]

    def _reassemble(self, plaintext: bytes, max_size: int | None) -> bytes | None:
        if not plaintext:
            raise ChannelError("empty transport message")
        flag, chunk = plaintext[0], plaintext[1:]
        self._size += len(chunk)
        if max_size is not None and self._size > max_size:
            raise OversizedPackage(f"package of more than {max_size} bytes exceeds the limit")
        if flag == _MORE_FLAG:
            if len(chunk) != _MAX_CHUNK:  # (as seal() writes them: see the module)
                raise ChannelError(f"a chunk before the last of {len(chunk)} bytes, not full")
            self._chunks.append(chunk)
            return None
        if flag != _LAST_FLAG:
            raise ChannelError(f"invalid chunk flag {flag}")
        self._chunks.append(chunk)
        package = b"".join(self._chunks)
        self._chunks = []
        self._size = 0
        return package


def _unbatch(plaintext: bytes, max_size: int | None) -> list[bytes]:
    """The packages of a batch message's plaintext (its flag first)."""
    end = len(plaintext)
    if end == 1:
        raise ChannelError("empty batch")
    packages = []
    start = 1
    while start < end:
        if end - start < _LENGTH:
            raise ChannelError("truncated package length in a batch")
        size = int.from_bytes(plaintext[start : start + _LENGTH], "big")
        start += _LENGTH
        if size == 0:
            raise ChannelError("empty package in a batch")
        if size > end - start:
            raise ChannelError(f"package of {size} bytes overruns its batch")
        if max_size is not None and size > max_size:
            raise OversizedPackage(f"package of more than {max_size} bytes exceeds the limit")
        packages.append(plaintext[start : start + size])
        start += size
    return packages
