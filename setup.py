"""
Build hook for setuptools: trustp2p installs as pure Python; with ``TRUSTP2P_COMPILE=1``
in the environment its hot modules are also compiled to C extensions with mypyc.

The compiled build runs the same source (mypyc compiles the type-annotated Python as it
is), about twice as fast per message (BENCHMARKS.md, "Compiled with mypyc"). It needs a C
compiler and Python's headers; ``tools/build_backend.py`` adds mypy to the build's
requirements when it is asked for. ``make compiled`` builds it in place in a checkout.
"""

from __future__ import annotations

import os

from setuptools import setup

COMPILED = [
    # the sans-I/O core, on every package sent and received
    "protocol/package.py",
    "protocol/package_reader.py",
    "protocol/jsontext.py",
    "protocol/connection.py",
    "protocol/actions.py",
    "protocol/deliver.py",
    "protocol/limits.py",
    "protocol/costs.py",
    # the node's per-message paths
    "node/node.py",
    "node/connections.py",
    "node/requests.py",
    "node/dispatch.py",
    "node/workers.py",
    "node/roles.py",
    "node/handlers.py",
    "admin/counters.py",
    # the tcp driver's loop over the messages of a read (not the driver: its classes have
    # Python bases, which mypyc compiles to slower code or none; BENCHMARKS.md)
    "drivers/_tcp_frames.py",
    # the Noise handshake (not security/secure_socket.py: mypyc builds SecureSocket without
    # ABCMeta.__new__, so the class would share the abc caches of Socket, its base, and
    # isinstance(socket, Socket) would turn false for a plain socket once it was checked
    # against SecureSocket; tests/test_compiled.py checks that)
    "security/noise.py",
    "security/noise_state.py",
]
"""The modules compiled, relative to ``src/trustp2p``."""

ext_modules = []
# (TRUSTP2P_BUILD_REQUIRES: the build backend is only asking what the build needs)
if os.environ.get("TRUSTP2P_COMPILE") == "1" and not os.environ.get("TRUSTP2P_BUILD_REQUIRES"):
    from mypyc.build import mypycify

    ext_modules = mypycify(
        [os.path.join("src", "trustp2p", path) for path in COMPILED],
        opt_level="3",
        group_name="trustp2p",
    )

setup(ext_modules=ext_modules)
