"""Node identity: the key file, peer ids, signatures."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PrivateKey

from trustp2p import identity
from trustp2p.identity import (
    KEY_FILE,
    PUBLIC_KEY_SIZE,
    SIGNATURE_SIZE,
    Identity,
    IdentityError,
    IdentityStopping,
    claim_identity,
    is_node_name,
    is_peer_id,
    key_path as key_path_of,
    mark_stopping,
    numbered_name,
    peer_id_from_public_key,
    short_id,
    verify_signature,
)

from .conftest import wait_for


@pytest.fixture
def key_path(tmp_path: Path) -> Path:
    return tmp_path / KEY_FILE


def test_key_is_created_private_and_reloaded(key_path: Path) -> None:
    created = Identity.load_or_create(key_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_path.parent.stat().st_mode) == 0o700
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert not key_path.with_name("node.key.tmp").exists()
    loaded = Identity.load_or_create(key_path)
    assert loaded.peer_id == created.peer_id
    assert loaded.public_key == created.public_key
    assert repr(loaded) == f"<Identity {created.peer_id}>"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o610])
def test_key_readable_by_others_is_refused(key_path: Path, mode: int) -> None:
    Identity.load_or_create(key_path)
    key_path.chmod(mode)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(key_path)
    assert str(info.value) == (
        f"{key_path} is accessible by group or others (mode {mode:o}); run: chmod 600 {key_path}"
    )


def test_corrupt_key_is_refused(key_path: Path) -> None:
    key_path.parent.mkdir(mode=0o700)
    key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    key_path.chmod(0o600)
    try:
        serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        reason = str(exc)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(key_path)
    assert str(info.value) == (
        f"{key_path} is not a valid private key ({reason}); move it away to create a new "
        "identity, which changes this node's peer id"
    )
    assert info.value.__cause__ is None


def test_another_key_type_is_refused(key_path: Path) -> None:
    key_path.parent.mkdir(mode=0o700)
    key_path.write_bytes(
        Ed448PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(key_path)
    assert str(info.value) == f"{key_path} holds a Ed448PrivateKey, not an Ed25519 key"


def test_unreadable_key_is_refused(key_path: Path) -> None:
    key_path.mkdir(mode=0o700, parents=True)  # a directory where the key should be
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(key_path)
    assert str(info.value) == f"can't read {key_path}: Is a directory"


def test_unwritable_key_is_refused(key_path: Path) -> None:
    # The key is written to node.key.tmp first; make that impossible, even for root.
    key_path.with_name("node.key.tmp").mkdir(parents=True)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(key_path)
    assert str(info.value) == f"can't write {key_path}: Is a directory"
    assert not key_path.exists()


def test_key_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "identity").write_text("a file where the directory should be")
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(tmp_path / KEY_FILE)
    assert str(info.value) == f"can't read {tmp_path / KEY_FILE}: Not a directory"


def test_peer_id_format() -> None:
    # "tp" + base32 (lowercase, no padding) of the first 20 bytes of SHA-256(public key).
    assert peer_id_from_public_key(bytes(32)) == "tpmzuhvlpymk6xo3epygfy5h4oeaejofef"
    peer_id = Identity.generate().peer_id
    assert len(peer_id) == 34
    assert peer_id.startswith("tp")
    assert peer_id == peer_id.lower()
    assert is_peer_id(peer_id)
    assert short_id(peer_id) == peer_id[:10]
    assert short_id("tpmzuhvlpymk6xo3epygfy5h4oeaejofef") == "tpmzuhvlpy"


def test_peer_id_of_a_key_met_before() -> None:
    # Remembered by the key's bytes, whatever object carries them.
    key = Identity.generate().public_key
    first = peer_id_from_public_key(key)
    assert peer_id_from_public_key(bytearray(key)) == first
    assert peer_id_from_public_key(memoryview(key)) == first
    assert peer_id_from_public_key(bytes(key)) == first


def test_peer_id_needs_a_32_byte_key() -> None:
    with pytest.raises(ValueError, match=r"^an Ed25519 public key has 32 bytes, not 31$"):
        peer_id_from_public_key(bytes(31))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tp",
        "xxmzuhvlpymk6xo3epygfy5h4oeaejofef",  # prefix
        "tpmzuhvlpymk6xo3epygfy5h4oeaejofe",  # too short
        "tpmzuhvlpymk6xo3epygfy5h4oeaejofeff",  # too long
        "tpmzuhvlpymk6xo3epygfy5h4oeaejofe1",  # 1 is not a base32 digit
        # Not canonical: padding, uppercase.
        "tpmzuhvlpymk6xo3epygfy5h4oeaejofe=",
        "tpmzuhvlpymk6xo3epygfy5h4oeaejo===",
        "tpMZUHVLPYMK6XO3EPYGFY5H4OEAEJOFEF",
        "tpmzuhvlpymk6xo3epygfy5h4oeaejofef\n",  # (a regex's $ takes a final newline)
        "tpmzuhvlpymk6xo3epygfy5h4oeaejofeé",  # not ASCII
    ],
)
def test_not_a_peer_id(text: str) -> None:
    assert not is_peer_id(text)


def test_sign_and_verify() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    assert len(alice.public_key) == PUBLIC_KEY_SIZE
    signature = alice.sign(b"hello")
    assert len(signature) == SIGNATURE_SIZE
    assert verify_signature(alice.public_key, signature, b"hello")
    assert not verify_signature(alice.public_key, signature, b"hellO")
    assert not verify_signature(bob.public_key, signature, b"hello")
    assert not verify_signature(alice.public_key, signature[:-1], b"hello")
    assert not verify_signature(alice.public_key[:-1], signature, b"hello")
    tampered = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(alice.public_key, tampered, b"hello")


def test_a_good_signature_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes of one process share the check of a good signature, and only of that
    exact key, signature and data; big data is checked every time."""
    alice = Identity.generate()
    small, big = b"hello again", b"x" * 5000
    signatures = {data: alice.sign(data) for data in (small, big)}
    checks: list[bytes] = []
    original = identity.Ed25519PublicKey.from_public_bytes

    def counted(key: bytes) -> Any:
        checks.append(key)
        return original(key)

    monkeypatch.setattr(identity.Ed25519PublicKey, "from_public_bytes", counted)
    for _ in range(3):
        assert verify_signature(alice.public_key, signatures[small], small)
    assert len(checks) == 1
    assert not verify_signature(alice.public_key, signatures[small], small + b"!")
    assert len(checks) == 2
    for _ in range(2):
        assert verify_signature(alice.public_key, signatures[big], big)
    assert len(checks) == 4


def test_an_identity_held_by_a_stopping_node_is_not_passed_over(tmp_path: Path) -> None:
    first, name, lock = Identity.claim(tmp_path)
    locks = [lock]
    try:
        assert name == "node"
        _, name, second = Identity.claim(tmp_path, pass_stopping=False)  # running
        locks.append(second)
        assert name == "node-2"
        mark_stopping(lock)
        with pytest.raises(IdentityStopping) as caught:
            Identity.claim(tmp_path, pass_stopping=False)
        assert caught.value.pid == os.getpid()
        assert caught.value.path == tmp_path / KEY_FILE
        # Nodes that share the directory on purpose still get the next one free.
        _, name, third = Identity.claim(tmp_path)
        locks.append(third)
        assert name == "node-3"
    finally:
        for held in locks:
            held.close()
    again, name, lock = Identity.claim(tmp_path, pass_stopping=False)
    lock.close()
    assert (name, again.peer_id) == ("node", first.peer_id)


@pytest.mark.skipif(os.name == "nt", reason="an open file can't be unlinked on Windows")
def test_a_lock_taken_on_a_lock_file_unlinked_meanwhile_is_taken_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed start removes its new key's lock file while holding it (tester48 F9): a
    node that opened that file just before, and took its lock once it was let go,
    would hold a lock on no file while another took the one made there since."""
    path = tmp_path / "identity" / "node.key.lock"
    take = identity._take_lock
    unlinked: list[int] = []

    def unlinked_first(file: Any) -> bool:
        if not unlinked:  # (the failed start's: unlinked, then let go)
            unlinked.append(os.fstat(file.fileno()).st_ino)
            path.unlink()
        return take(file)

    monkeypatch.setattr(identity, "_take_lock", unlinked_first)
    _, name, lock = Identity.claim(tmp_path)
    try:
        assert name == "node" and unlinked
        assert os.path.samestat(os.fstat(lock.fileno()), os.stat(path))  # the file there
    finally:
        lock.close()


def test_a_lock_that_cant_be_opened_is_an_identity_error(tmp_path: Path) -> None:
    """Found by an attacker's test: on a read-only file system the start ended in a
    raw traceback (OSError) where a full disk gave a clear error."""
    (tmp_path / "identity" / "node.key.lock").mkdir(parents=True)  # can't be opened
    with pytest.raises(IdentityError, match=r"^can't open .*node\.key\.lock: Is a directory$"):
        Identity.claim(tmp_path)


def test_a_named_identity_is_that_one_or_none(tmp_path: Path) -> None:
    """Found by a new-user tester: nodes sharing a directory took node.key, node-2.key...
    in the order they started, so two restarted in the other order swapped identities,
    peer stores and message logs. A node with a name takes identity/<name>.key only."""
    relay, name, lock = Identity.claim(tmp_path, name="relay")
    try:
        assert name == "relay"
        assert (tmp_path / "identity" / "relay.key").exists()
        with pytest.raises(IdentityError, match=r"relay\.key is held by another node running in"):
            Identity.claim(tmp_path, name="relay")
        mark_stopping(lock)
        with pytest.raises(IdentityStopping):
            Identity.claim(tmp_path, name="relay", pass_stopping=False)
        first, name, other = Identity.claim(tmp_path)  # an unnamed node: node.key
        other.close()
        assert name == "node" and first.peer_id != relay.peer_id
    finally:
        lock.close()
    again, _, lock = Identity.claim(tmp_path, name="relay")
    lock.close()
    assert again.peer_id == relay.peer_id
    assert key_path_of(tmp_path, "node-2") == tmp_path / "identity" / "node-2.key"
    assert [numbered_name(n) for n in (1, 2, 3)] == ["node", "node-2", "node-3"]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        *[("relay", True), ("node-2", True), ("a_b-9", True), ("x" * 64, True)],
        *[("", False), ("x" * 65, False), ("-a", False), ("_a", False), ("a.b", False)],
        *[("a/b", False), ("..", False), ("a b", False), ("é", False), ("a\n", False)],
        *[("Node", False), ("rElay", False)],
    ],
)
def test_node_names(name: str, valid: bool) -> None:
    assert is_node_name(name) is valid


async def test_claim_identity_waits_for_a_stopping_node(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, _, lock = Identity.claim(tmp_path)
    mark_stopping(lock)
    log = logging.getLogger("test.identity")
    with caplog.at_level(logging.INFO, logger="test.identity"):
        claiming = asyncio.create_task(claim_identity(tmp_path, log))
        await wait_for(lambda: "waiting for the node stopping" in caplog.text)
        assert not claiming.done()
        lock.close()  # the stopping node is gone
        identity, name, held = await claiming
    held.close()
    assert (name, identity.peer_id) == ("node", first.peer_id)


async def test_claim_identity_gives_up_on_a_stuck_node_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "STOPPING_WAIT", 0.2)
    _, _, lock = Identity.claim(tmp_path)
    mark_stopping(lock)
    try:
        with caplog.at_level(logging.INFO, logger="test.identity"):
            _, name, held = await claim_identity(tmp_path, logging.getLogger("test.identity"))
        held.close()
    finally:
        lock.close()
    assert name == "node-2"
    # One WARNING (review51 R5: two, the second saying "another node runs" there)
    (stuck,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "is held by a node that is stopping" in stuck
    assert "after 0.2 s: taking another identity: this one is identity/node-2.key" in stuck
    # (tester37 F4: said at INFO, a client restarted first took the server's identity)
    assert "depends on the order they start in: give each node a name" in stuck
    assert "another node runs" not in stuck


async def test_a_named_node_waits_for_its_stopping_self_then_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(identity, "STOPPING_WAIT", 0.2)
    _, _, lock = Identity.claim(tmp_path, name="relay")
    mark_stopping(lock)
    try:
        with pytest.raises(IdentityError, match=r"held by a node that is stopping .* after 0.2 s"):
            await claim_identity(tmp_path, logging.getLogger("test.identity"), "relay")
    finally:
        lock.close()


def test_a_look_at_the_lock_makes_no_starting_node_take_another_identity(
    tmp_path: Path,
) -> None:
    """Found in review: is_running() holds an identity's lock for a moment to look at
    it, and a node claiming the identity then took node-2 (or, named, failed)."""
    import threading

    from trustp2p.identity import Identity, key_path

    Identity.load_or_create(key_path(tmp_path))
    lock_path = key_path(tmp_path).with_name("node.key.lock")
    looking = open(lock_path, "ab")
    import fcntl

    fcntl.flock(looking, fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(0.002, looking.close).start()
    _, name, lock = Identity.claim(tmp_path)
    try:
        assert name == "node"
    finally:
        lock.close()
