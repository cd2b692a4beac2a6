"""
The ``tcp://`` URLs the tcp driver (:mod:`.tcp`) dials.
"""

from __future__ import annotations

__all__ = ["parse_url"]

from urllib.parse import urlsplit

from ..exceptions import DriverError


def parse_url(url: str) -> tuple[str, int]:
    """``url``'s host and port; its path, if any, is ignored.

    Raises:
        DriverError: If it isn't a ``tcp://host:port`` URL.

    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise DriverError(f"invalid TCP URL {url!r}: {exc}") from exc
    if parts.scheme != "tcp":
        problem = "scheme isn't tcp"
    elif not host:
        problem = "no host"
    elif not port:
        problem = "no port"
    elif parts.username is not None or parts.password is not None:
        problem = "credentials aren't allowed"
    elif parts.query or parts.fragment:
        problem = "query or fragment isn't allowed"
    else:
        return host, port
    raise DriverError(f"invalid TCP URL {url!r}: {problem}")
