"""
The admin listener's address, as ``--admin`` and ``trustp2p status --admin`` read it,
and the checks of it a node makes before it starts. No I/O.

"""

from __future__ import annotations

__all__ = ["check_admin", "parse_admin_address"]

import ipaddress

from .exceptions import ConfigError
from .protocol.limits import is_loopback

_EVERY: dict[object, str] = {4: "0.0.0.0", 6: "::"}  # family -> its every-interface address


def _binds(host: str) -> set[tuple[object, str]]:
    """The (family, address) pairs listening on ``host`` takes (asyncio listens on an
    IPv6 socket for IPv6 only); a name other than localhost: itself."""
    if host == "":
        return {(4, _EVERY[4]), (6, _EVERY[6])}
    if host.lower() == "localhost":
        return {(4, "127.0.0.1"), (6, "::1")}
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return {("name", host.lower())}
    return {(address.version, str(address))}


def _overlap(a: str, b: str) -> bool:
    """Whether listeners on hosts ``a`` and ``b`` would take one port twice (review53
    L2: ``--host :: --admin 127.0.0.1:P`` works; ``--host localhost`` with
    ``--admin 127.0.0.1:P`` doesn't); a name resolves to some address of either
    family, which every interface's takes too (review55 R5)."""
    every = set(_EVERY.values())
    return any(
        (family == other and (x == y or _EVERY.get(family) in (x, y)))
        or (family == "name" and y in every)
        or (other == "name" and x in every)
        for family, x in _binds(a)
        for other, y in _binds(b)
    )


def parse_admin_address(address: str) -> tuple[str, int]:
    """
    ``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6) as ``(host, port)``; a bare ``PORT``
    (or ``:PORT``) is on 127.0.0.1, and ``http://HOST:PORT/`` is HOST:PORT, as ``trustp2p
    status --admin`` reads them (testers: the one flag was read two ways).

    Raises:
        ConfigError: If it isn't of that form, or the port is out of range.

    """
    address = address.removeprefix("http://").removesuffix("/")  # (tester37 F10)
    if address.removeprefix(":").isdigit():
        address = f"127.0.0.1:{address.removeprefix(':')}"
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or "/" in host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"admin address must be HOST:PORT, e.g. 127.0.0.1:9107, not {address!r}")
    return host, int(port_text)


def check_admin(admin: str, token: str | None, listen: tuple[str, int] | None) -> None:
    """
    Check the admin listener's options: a valid address, loopback unless a token is
    set, not the port the node listens on (``listen``, its host and port; None for a
    node that doesn't listen).

    Raises:
        ConfigError: If they are not.

    """
    host, port = parse_admin_address(admin)
    if listen is not None and port == listen[1] != 0 and _overlap(host, listen[0]):
        # (tester37 F10: found only once the node listened, its key and data made)
        raise ConfigError(f"admin: port {port} is the node's port too: give each its own")
    if token is not None and not token:
        raise ConfigError("admin_token must not be empty")
    if token is not None and not (token.isascii() and token.isprintable() and " " not in token):
        # It travels in an HTTP header, where clients send other characters as
        # they see fit (found by a tester: a non-ASCII token never matched).
        raise ConfigError("admin_token must be printable ASCII, without spaces")
    if not is_loopback(host) and token is None:
        raise ConfigError(
            f"admin: the listener would be reachable from other machines ({admin}): "
            "set an admin token (--admin-token) or listen on 127.0.0.1"
        )
