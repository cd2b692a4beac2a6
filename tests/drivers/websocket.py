"""What the conformance suites of the WebSocket drivers (``ws``, ``picows``) share."""

from __future__ import annotations

import pytest

from ..processes import free_port


class WebSocketUrls:
    """The URL fixtures of :class:`~tests.drivers.conformance.DriverConformance` for a
    ``ws://`` driver: mix in before it."""

    scheme = "ws"

    @pytest.fixture
    def unreachable_url(self) -> str:
        return f"ws://127.0.0.1:{free_port()}"  # free a moment ago: nothing listens

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
