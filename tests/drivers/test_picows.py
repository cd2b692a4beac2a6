"""The conformance suite for :class:`PicowsDriver`, and interop with the ``ws`` driver."""

from __future__ import annotations

import socket as socket_module

import pytest

from tests.drivers.conformance import DriverConformance, DriverFactory

pytest.importorskip("picows", reason="picows isn't installed (pip install 'trustp2p[fast]')")

from trustp2p.drivers.ws_picows import PicowsDriver


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (it was free a moment ago)."""
    with socket_module.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestPicowsConformance(DriverConformance):
    scheme = "ws"

    @pytest.fixture
    def driver_factory(self) -> DriverFactory:
        return PicowsDriver

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"ws://127.0.0.1:{_closed_port()}"

    @pytest.fixture(
        params=[
            "not a url",
            "http://127.0.0.1:1/",
            "memory://127.0.0.1:1",
            "ws://",
            "ws://127.0.0.1:1/#fragment",
            "ws://127.0.0.1:99999/",
            "ws://127.0.0.1:port/",
            "ws://[::1",
        ]
    )
    def invalid_url(self, request: pytest.FixtureRequest) -> str:
        url: str = request.param
        return url
