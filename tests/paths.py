"""TCP's view of a path, made up for a test (``trustp2p.drivers._tcp_info``)."""

from __future__ import annotations

import pytest

from trustp2p.drivers import _tcp_info
from trustp2p.protocol.path import PathView


def congested_paths(
    monkeypatch: pytest.MonkeyPatch, *, window_closed: bool = False
) -> list[object]:
    """Make every connection's path look congested (segments resent, the peer heard
    from, its window open unless ``window_closed``); the transports asked about, in
    order."""
    asked: list[object] = []

    def view(transport: object) -> PathView:
        asked.append(transport)
        return PathView(window_closed=window_closed, resending=True, losses=0, heard=0.0)

    monkeypatch.setattr(_tcp_info, "path_view", view)
    return asked
