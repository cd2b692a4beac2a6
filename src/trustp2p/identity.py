"""
Node identity: a long-term Ed25519 key and the peer id derived from it.

The key lives in ``<cwd>/identity/node.key`` (PKCS #8 PEM, mode 0600), created on first
start. The **peer id** is ``"tp"`` followed by the lowercase base32 (no padding) of the
first 20 bytes of the SHA-256 of the raw 32-byte public key: 34 characters, e.g.
``tpmfrggzdfmztwq2lkn5wxk3djmvzgk5lt``. Nothing here does network I/O.

"""

from __future__ import annotations

__all__ = [
    "KEY_FILE",
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "STOPPING_WAIT",
    "Identity",
    "IdentityStopping",
    "PeerId",
    "claim_identity",
    "is_node_name",
    "is_peer_id",
    "is_running",
    "key_path",
    "lock_path",
    "mark_stopping",
    "name_to_claim",
    "numbered_name",
    "peer_id_from_public_key",
    "short_id",
    "verify_signature",
]

import asyncio
import base64
import hashlib
import logging
import os
import re
import stat
import sys
import time
from pathlib import Path
from typing import IO, NewType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .exceptions import IdentityError

PeerId = NewType("PeerId", str)

KEY_FILE = Path("identity") / "node.key"
"""Where the key lives, relative to the node's cwd."""

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_PEER_ID_PREFIX = "tp"


# Peer ids of keys met lately: every message received carries its origin's key, whose
# id is checked against its origin (base64.b32encode is pure Python: 5 us a message).
_PEER_IDS_MAX = 4096
_peer_ids: dict[bytes, PeerId] = {}


def peer_id_from_public_key(public_key: bytes) -> PeerId:
    """The peer id of a raw 32-byte Ed25519 public key."""
    peer_id = _peer_ids.get(public_key) if type(public_key) is bytes else None
    if peer_id is not None:
        return peer_id
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(public_key)}")
    digest = hashlib.sha256(public_key).digest()[:20]
    peer_id = PeerId(_PEER_ID_PREFIX + base64.b32encode(digest).decode("ascii").lower())
    if len(_peer_ids) >= _PEER_IDS_MAX:
        del _peer_ids[next(iter(_peer_ids))]
    _peer_ids[bytes(public_key)] = peer_id
    return peer_id


def short_id(peer_id: str) -> str:
    """A short form of a peer id, for logs and tables."""
    return peer_id[: len(_PEER_ID_PREFIX) + 8]


_PEER_ID = re.compile(_PEER_ID_PREFIX + "[a-z2-7]{32}")


def is_peer_id(text: str) -> bool:
    """True if ``text`` is a peer id in its canonical form (lowercase, no padding)."""
    return _PEER_ID.fullmatch(text) is not None


# Signatures checked good lately, by a digest of (key, signature, data): many nodes in
# one process (a simulation) receive the same message, and check it once between them.
# Only small data: for a big message, hashing costs about as much as checking.
_VERIFIED_MAX = 4096
_VERIFIED_DATA_MAX = 4096
_verified: dict[bytes, None] = {}


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Check an Ed25519 signature; False for a bad key or signature.

    A signature found good is remembered (the last 4096, by a SHA-256 digest of key,
    signature and data up to 4 KiB), so that the nodes of one process check each
    message once."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    digest = None
    if len(data) <= _VERIFIED_DATA_MAX:
        digest = hashlib.sha256(public_key + signature + data).digest()
        if digest in _verified:
            return True
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    if digest is not None:
        if len(_verified) >= _VERIFIED_MAX:
            del _verified[next(iter(_verified))]
        _verified[digest] = None
    return True


class Identity:
    """
    A node's Ed25519 key pair.

    Attributes:
        public_key: The raw 32-byte public key.
        peer_id: The peer id derived from it.

    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id = peer_id_from_public_key(self.public_key)

    def __repr__(self) -> str:
        return f"<Identity {self.peer_id}>"

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity, kept in memory only."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """
        Load the key at ``path``, or create it (mode 0600) if the file doesn't exist.

        Raises:
            IdentityError: If the file is readable by group or others, or not a valid
                Ed25519 private key in PKCS #8 PEM. The message says what to do.

        """
        try:
            info = path.stat()
        except FileNotFoundError:
            return cls._create(path)
        except OSError as exc:
            raise IdentityError(f"can't read {path}: {exc.strerror or exc}") from exc
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise IdentityError(
                f"{path} is accessible by group or others (mode {stat.S_IMODE(info.st_mode):o}); "
                f"run: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise IdentityError(
                f"{path} is not a valid private key ({exc}); move it away to create a new "
                f"identity, which changes this node's peer id"
            ) from None
        except OSError as exc:
            raise IdentityError(f"can't read {path}: {exc.strerror or exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    @classmethod
    def _create(cls, path: Path) -> Identity:
        key = Ed25519PrivateKey.generate()
        data = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise IdentityError(f"can't write {path}: {exc.strerror or exc}") from exc
        return cls(key)

    @classmethod
    def claim(
        cls, cwd: Path, *, name: str | None = None, limit: int = 64, pass_stopping: bool = True
    ) -> tuple[Identity, str, IO[bytes]]:
        """
        Load or create the identity of a node running in ``cwd``, and lock it.

        The first node of a directory takes ``identity/node.key``. Nodes started in the
        same directory while it runs (e.g. a server and a client of one application) get
        ``identity/node-2.key``, ``node-3.key``..., so that each has its own identity:
        which one depends on the order they start in. A node with a ``name`` takes
        ``identity/<name>.key`` and no other (``node-2`` names the second's).
        With ``pass_stopping=False``, an identity held by a node that is stopping
        (:func:`mark_stopping`) raises :exc:`IdentityStopping` instead of being passed
        over: a node restarted at once gets its identity back (:func:`claim_identity`).

        Returns:
            The identity, its name (``node``, ``node-2``..., or ``name``), and the open
            lock file, to close when the node stops.

        Raises:
            IdentityError: See :meth:`load_or_create`; or the identity ``name`` is held
                by another node running in ``cwd``.
            IdentityStopping: See ``pass_stopping``.

        """
        directory = cwd / KEY_FILE.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise IdentityError(f"can't create {directory}: {exc.strerror or exc}") from exc
        names = [name] if name is not None else [numbered_name(n) for n in range(1, limit + 1)]
        for candidate in names:
            path = key_path(cwd, candidate)
            lock, taken = _open_locked(lock_path(path))  # kept open: the lock
            if not taken:
                lock.close()
                holder = None if pass_stopping else _stopping_holder(path)
                if holder is not None:
                    raise IdentityStopping(path, holder)
                if name is not None:
                    raise IdentityError(f"{path} is held by another node running in {cwd}")
                continue  # another running node has it
            try:
                identity = cls.load_or_create(path)
                _write_state(lock, "running")
            except BaseException:
                lock.close()
                raise
            return identity, candidate, lock
        raise IdentityError(f"{limit} nodes already run in {cwd}")

    def sign(self, data: bytes) -> bytes:
        """Sign ``data``; 64 bytes."""
        signature: bytes = self._private_key.sign(data)
        return signature


def numbered_name(number: int) -> str:
    """The name of the ``number``-th node running in a directory that has no name of its
    own: ``node``, ``node-2``, ``node-3``..."""
    return KEY_FILE.stem if number == 1 else f"{KEY_FILE.stem}-{number}"


def is_node_name(name: str) -> bool:
    """Whether ``name`` may name a node in its directory (``NodeOptions.name``): 1 to 64
    lowercase letters, digits, ``-`` and ``_``, starting with a letter or digit (lowercase:
    on a case-insensitive file system ``Node`` would be ``node``'s key, found in review)."""
    return _NAME.fullmatch(name) is not None


_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def key_path(cwd: Path, name: str = "node") -> Path:
    """The key of the node called ``name`` in ``cwd`` (see :meth:`Identity.claim`):
    ``identity/<name>.key``."""
    return cwd / KEY_FILE.parent / f"{name}{KEY_FILE.suffix}"


def lock_path(path: Path) -> Path:
    """The lock file of the key at ``path`` (held open by the node that runs with it)."""
    return path.with_name(path.name + ".lock")


def _open_locked(path: Path) -> tuple[IO[bytes], bool]:
    """Open the lock file ``path`` and take its lock (:func:`_take_lock`): the file, and
    whether it was taken. A lock taken on a file unlinked meanwhile (a failed start
    removes its new identity's lock file while holding it, tester48 F9) holds nothing:
    let go, and the file there now tried."""
    for _ in range(_LOCK_TRIES):
        try:
            lock = open(path, "ab")
        except OSError as exc:  # e.g. a read-only file system (found by a tester)
            raise IdentityError(f"can't open {path}: {exc.strerror or exc}") from exc
        if not _take_lock(lock):
            return lock, False
        try:
            if os.path.samestat(os.fstat(lock.fileno()), os.stat(path)):
                return lock, True
        except OSError:  # (unlinked: tried again)
            pass
        lock.close()
    return open(path, "ab"), False


class IdentityStopping(IdentityError):
    """The identity at ``path`` is held by a node that is stopping, in process ``pid``."""

    def __init__(self, path: Path, pid: int) -> None:
        super().__init__(f"{path} is held by a node that is stopping (process {pid})")
        self.path = path
        self.pid = pid


STOPPING_WAIT = 30.0
"""Seconds a starting node waits for a stopping one to release its identity."""


async def claim_identity(
    cwd: Path,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    name: str | None = None,
) -> tuple[Identity, str, IO[bytes]]:
    """
    :meth:`Identity.claim`, waiting up to :data:`STOPPING_WAIT` seconds for a node that
    is stopping in ``cwd`` to release its identity (a restart: the node stopping is the
    one starting again), and then taking the next identity free with a warning (or, for
    a node with a ``name``, raising :exc:`IdentityError`). A node without a name that
    gets another identity than ``node`` (another node runs in ``cwd``) is told so, at
    WARNING: which node is which then depends on the order they start in.
    """
    claimed, stuck = await _claim_waiting(cwd, log, name)
    if name is None and claimed[1] != "node":
        log.warning(  # (a tester: restarted client first, a client took the server's)
            "! %s: this one is identity/%s.key, its peer store and message log; unnamed,"
            " which node is which depends on the order they start in: give each node a"
            " name (--name, TRUSTP2P_NAME)",
            stuck or f"another node runs in {cwd}",
            claimed[1],
        )
    return claimed


async def _claim_waiting(
    cwd: Path,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    name: str | None,
) -> tuple[tuple[Identity, str, IO[bytes]], str | None]:
    """The identity claimed, and why it is another one (a node stuck stopping holds
    the one it would have taken: said in the one WARNING, review51 R5), if so."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STOPPING_WAIT
    waiting: IdentityStopping | None = None
    while loop.time() < deadline:
        try:
            return Identity.claim(cwd, name=name, pass_stopping=False), None
        except IdentityStopping as exc:
            if waiting is None:
                log.info(
                    "= waiting for the node stopping in process %d to release %s", exc.pid, exc.path
                )
            waiting = exc
        await asyncio.sleep(0.05)
    if name is not None:
        raise IdentityError(f"{waiting} after {STOPPING_WAIT:g} s")
    return Identity.claim(cwd), f"{waiting} after {STOPPING_WAIT:g} s: taking another identity"


def is_running(cwd: Path, name: str = "node") -> bool:
    """Whether a node runs now with the identity ``name`` of ``cwd``: whether another
    process holds its lock (:meth:`Identity.claim`)."""
    path = key_path(cwd, name)
    try:
        with open(lock_path(path), "rb") as file:
            return not _try_lock(file)  # (closing the file lets go of the lock)
    except OSError:  # no lock file: no node ever ran there
        return False


def name_to_claim(cwd: Path, limit: int = 64) -> str:
    """The identity a node without a name would take if it started in ``cwd`` now
    (:meth:`Identity.claim`): the first not held by a running node, or one held by a
    node that is stopping (:func:`claim_identity` waits for it to let go)."""
    for number in range(1, limit + 1):
        name = numbered_name(number)
        if not is_running(cwd, name) or _stopping_holder(key_path(cwd, name)) is not None:
            return name
    return numbered_name(limit)


def mark_stopping(lock: IO[bytes]) -> None:
    """Say in the lock file of this node's identity that the node is stopping: a node
    that starts meanwhile waits for it (:func:`claim_identity`)."""
    _write_state(lock, "stopping")


def _write_state(lock: IO[bytes], state: str) -> None:
    try:
        lock.truncate(0)
        lock.write(f"{os.getpid()} {state}\n".encode())
        lock.flush()
    except OSError:  # a full disk: the lock still holds, the note is lost
        pass


def _stopping_holder(path: Path) -> int | None:
    """The process id that holds ``path``'s lock, if its note says it is stopping."""
    try:
        words = lock_path(path).read_text(encoding="ascii").split()
    except (OSError, ValueError):  # Windows: the locked byte can't be read
        return None
    if len(words) == 2 and words[1] == "stopping" and words[0].isdigit():
        return int(words[0])
    return None


def _take_lock(file: IO[bytes]) -> bool:
    """:func:`_try_lock`, tried again a moment later: :func:`is_running` holds a lock
    for microseconds to look at it, and a node starting then would take another
    identity (found in review)."""
    for _ in range(_LOCK_TRIES - 1):
        if _try_lock(file):
            return True
        time.sleep(_LOCK_RETRY)
    return _try_lock(file)


_LOCK_TRIES = 3
_LOCK_RETRY = 0.005  # seconds


def _try_lock(file: IO[bytes]) -> bool:
    """Take an exclusive lock on an open file without waiting; False if another process
    holds it. ``fcntl.flock`` on POSIX, ``msvcrt.locking`` (its first byte) on Windows."""
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
