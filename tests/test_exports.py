"""Every public module lists exactly its public names in __all__ (as websockets checks)."""

from __future__ import annotations

import importlib
import inspect

import pytest

import trustp2p

MODULES = [
    "trustp2p",
    "trustp2p.exceptions",
    "trustp2p.options",
    "trustp2p.node",
    "trustp2p.node.roles",
    "trustp2p.protocol.package",
    "trustp2p.protocol.deliver",
    "trustp2p.protocol.handshake",
    "trustp2p.protocol.backoff",
    "trustp2p.protocol.outbound",
    "trustp2p.node.dialer",
    "trustp2p.node.inbound",
    "trustp2p.node.peer",
    "trustp2p.protocol.admission",
    "trustp2p.protocol.connection",
    "trustp2p.protocol.liveness",
    "trustp2p.node.liveness",
    "trustp2p.drivers",
    "trustp2p.drivers.base",
    "trustp2p.drivers.ws",
    "trustp2p.drivers.memory",
    "trustp2p.drivers.tcp",
    "trustp2p.identity",
    "trustp2p.storage",
    "trustp2p.storage.peerstore",
    "trustp2p.storage.writebehind",
    "trustp2p.protocol.limits",
    "trustp2p.protocol.urls",
    "trustp2p.protocol.peers",
    "trustp2p.protocol.scoring",
    "trustp2p.security.noise",
    "trustp2p.security.channel",
    "trustp2p.security.secure_socket",
    "trustp2p.threads.peer_exchange",
    "trustp2p.storage.msglog",
    "trustp2p.node.gossip",
    "trustp2p.node.gossip_validate",
    "trustp2p.node.lifecycle",
    "trustp2p.node.gossip_thread",
    "trustp2p.protocol.gossip",
    "trustp2p.protocol.gossip.message",
    "trustp2p.protocol.gossip.router",
    "trustp2p.protocol.gossip.control",
    "trustp2p.protocol.gossip.lazy",
    "trustp2p.protocol.gossip.mesh",
    "trustp2p.protocol.gossip.streams",
    "trustp2p.protocol.gossip.catchup",
    "trustp2p.protocol.gossip.catchup_wire",
    "trustp2p.protocol.gossip.pacing",
    "trustp2p.testing",
    "trustp2p.apps",
    "trustp2p.apps.appdir",
    "trustp2p.apps.demo",
    "trustp2p.apps.peers",
    "trustp2p.apps.serve",
    "trustp2p.apps.simulate",
    "trustp2p.apps.simulate.config",
    "trustp2p.apps.simulate.metrics",
    "trustp2p.apps.simulate.plot",
    "trustp2p.apps.simulate.report",
    "trustp2p.apps.simulate.runner",
    "trustp2p.apps.simulate.plan",
    "trustp2p.apps.simulate.worker",
    "trustp2p.apps.simulate.workers",
    "trustp2p.threads.base",
    "trustp2p.threads.loader",
    "trustp2p.tasks",
]


@pytest.mark.parametrize("name", MODULES)
def test_all_names_exist(name: str) -> None:
    module = importlib.import_module(name)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("name", [m for m in MODULES if m != "trustp2p"])
def test_all_lists_the_public_definitions(name: str) -> None:
    """Classes and functions defined in a module and not private are in its __all__."""
    module = importlib.import_module(name)
    defined = {
        n
        for n, obj in vars(module).items()
        if not n.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", None) == name
    }
    assert defined <= set(module.__all__)


def test_top_level_api() -> None:
    for name in (
        "create_server",
        "create_client",
        "create_node",
        "Node",
        "Thread",
        "PackageType",
        "TrustP2PError",
        "PackageError",
        "ConnectionClosed",
        "RequestTimeout",
        "ThreadLoadError",
        "DriverError",
    ):
        assert name in trustp2p.__all__
    assert trustp2p.PackageType.HEARTBEAT_PING == 10


def test_error_tree() -> None:
    for name in (
        "PackageError",
        "ConnectionClosed",
        "RequestTimeout",
        "ThreadLoadError",
        "DriverError",
        "HandshakeError",
    ):
        assert issubclass(getattr(trustp2p, name), trustp2p.TrustP2PError)
    assert issubclass(trustp2p.RequestTimeout, TimeoutError)


def test_a_library_user_who_configures_no_logging_sees_warnings() -> None:
    """Found by a new user: the package's ``NullHandler`` kept Python's last resort
    from printing, so a failing handler (or one that never answered) said nothing."""
    import subprocess
    import sys

    script = (
        "import logging, trustp2p\n"
        "assert not logging.getLogger('trustp2p').handlers\n"
        "logging.getLogger('trustp2p.node.dispatch').error('! a handler failed')\n"
        "logging.getLogger('trustp2p.node.dispatch').info('= quiet')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stderr == "! a handler failed\n"
