"""
Print the trustp2p Noise interop vector (tests/security/noise-trustp2p-interop.json).

Run ``PYTHONPATH=src python tools/noise_interop_vector.py``. The committed file was made
with the ``noiseprotocol``-based implementation, before it was replaced; the test checks
that the current implementation reproduces it byte for byte, so old and new nodes stay
wire-compatible.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trustp2p.identity import Identity
from trustp2p.security.noise import PROLOGUE, NoiseHandshake

SIDES = ("init", "resp")
NAMES = [f"{side}_{kind}" for side in SIDES for kind in ("identity", "static", "ephemeral")]
PACKAGES = [
    ("init", b"hello"),
    ("resp", b""),
    ("resp", bytes(range(256)) * 3),
    ("init", b"x" * 65518),
    ("init", bytes(range(251)) * 400),
]


def main() -> None:
    keys = {name: hashlib.sha256(f"trustp2p-interop-{name}".encode()).digest() for name in NAMES}
    ids = {s: Identity(Ed25519PrivateKey.from_private_bytes(keys[f"{s}_identity"])) for s in SIDES}
    sides = {
        s: NoiseHandshake(
            ids[s],
            initiator=s == "init",
            static_key=keys[f"{s}_static"],
            ephemeral_key=keys[f"{s}_ephemeral"],
        )
        for s in SIDES
    }
    handshake = []
    for writer in ("init", "resp", "init"):
        reader = "resp" if writer == "init" else "init"
        message = sides[writer].write_message()
        payload = sides[reader].read_message(message)
        handshake.append({"writer": writer, "message": message.hex(), "payload": payload.hex()})
    assert sides["init"].remote_peer_id == ids["resp"].peer_id
    transports = {s: sides[s].transport() for s in SIDES}
    transport = []
    for writer, data in PACKAGES:
        reader = "resp" if writer == "init" else "init"
        messages = transports[writer].seal(data)
        opened = [transports[reader].open(m, max_size=None) for m in messages]
        assert opened[-1] == data
        entry: dict[str, object] = {
            "writer": writer,
            "package_size": len(data),
            "package_sha256": hashlib.sha256(data).hexdigest(),
            "messages_sha256": [hashlib.sha256(m).hexdigest() for m in messages],
        }
        if len(data) < 1000:
            entry["package"] = data.hex()
            entry["messages"] = [m.hex() for m in messages]
        transport.append(entry)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    document = {
        "comment": (
            "Made by tools/noise_interop_vector.py with trustp2p's implementation "
            f"implementation (commit {commit}). Keys are sha256('trustp2p-interop-<name>'): "
            "*_identity Ed25519 private keys, the others X25519. Packages of 1000 bytes or "
            "more are checked by sha256 only (b'x' * 65518, bytes(range(251)) * 400)."
        ),
        "prologue": PROLOGUE.hex(),
        "keys": {name: key.hex() for name, key in keys.items()},
        "init_peer_id": ids["init"].peer_id,
        "resp_peer_id": ids["resp"].peer_id,
        "handshake_hash": sides["init"].handshake_hash.hex(),
        "handshake": handshake,
        "transport": transport,
    }
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
