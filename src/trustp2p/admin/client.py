"""
``trustp2p status``: fetch a running node's ``/status.json`` from its admin listener
(standard library only) and show it as tables.

"""

from __future__ import annotations

__all__ = ["add_plain_row", "fetch_status", "status_tables", "status_url"]

import json
import re
import time
import urllib.parse
import urllib.request
from typing import Any

from rich.table import Table
from rich.text import Text

from ..identity import short_id


def status_url(admin: str) -> str:
    """The ``/status.json`` URL of an admin listener given as a URL or ``HOST:PORT``
    (with or without ``/status.json``: a tester gave it and got a 404; a browser's URL
    with its ``?token=``, the query and fragment dropped: see :func:`url_token`). A bare
    ``PORT`` (or ``:PORT``) is on 127.0.0.1: a tester's ``--admin 1331`` was read as the
    host 0.0.5.51. An IPv6 address may come without its brackets (``::1:9107``)."""
    if admin.removeprefix(":").isdigit():
        admin = f"127.0.0.1:{admin.removeprefix(':')}"
    if "://" not in admin:
        netloc = re.split(r"[/?#]", admin, maxsplit=1)[0]
        host, _, port = netloc.rpartition(":")
        if ":" in host and not host.startswith("["):  # ::1:9107 (tester37 F7: a 421)
            admin = f"[{host}]:{port}{admin[len(netloc) :]}"
        admin = f"http://{admin}"
    parts = urllib.parse.urlsplit(admin)
    path = parts.path.rstrip("/").removesuffix("/status.json") + "/status.json"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def url_token(admin: str) -> str | None:
    """The ``token`` of a browser's admin URL (``http://HOST:PORT/?token=T``), if any:
    pasted into ``trustp2p status``, it fetched the page instead (a tester)."""
    tokens = urllib.parse.parse_qs(urllib.parse.urlsplit(admin).query).get("token")
    return tokens[0] if tokens else None


MAX_STATUS_BYTES = 16 * 1024 * 1024
"""The most :func:`fetch_status` reads (an answer of another program may be endless)."""


def fetch_status(admin: str, *, token: str | None = None, timeout: float = 5.0) -> Any:
    """
    The status of the node whose admin listener is at ``admin``.

    Raises:
        OSError: If it can't be reached (``urllib.error.URLError``), or answers with an
            HTTP error (``urllib.error.HTTPError``, e.g. 401 without the right token).
        ValueError: If the URL is not http(s), or the answer is not JSON.

    """
    url = status_url(admin)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http URL: {admin}")
    token = url_token(admin) if token is None else token
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = response.read(MAX_STATUS_BYTES + 1)
    if len(answer) > MAX_STATUS_BYTES:
        raise ValueError(f"the answer exceeds {MAX_STATUS_BYTES} bytes: not a node's status")
    try:
        return json.loads(answer)
    except RecursionError:  # nested too deep: no node's status (review33)
        raise ValueError("the answer's JSON is nested too deep: not a node's status") from None


def add_plain_row(table: Table, *cells: str) -> None:
    """A row of plain text: rich would read ``[...]`` in a cell (``ws://[fe80::1]:1107``,
    a peer's words in a warning) as markup, and a terminal the control characters a peer
    put there (escape sequences) as commands: they are shown escaped."""
    table.add_row(*(Text(_printable(cell)) for cell in cells))


def _printable(text: str) -> str:
    """``text`` with its control characters escaped, line breaks kept."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode() for c in text
    )


def _number(value: Any, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _peers_table(peers: list[dict[str, Any]]) -> Table:
    columns = ("peer", "address", "runs", "role", "since", "RTT ms", "in", "out", "score", "state")
    table = Table(*columns)
    table.title = f"{len(peers)} peer(s)"
    for p in peers:
        peer_id = p.get("peer_id")
        add_plain_row(
            table,
            short_id(peer_id) if peer_id else "-",
            str(p["address"]),
            str(p.get("runs") or "-"),
            f"{p['role']} {'<-' if p['direction'] == 'inbound' else '->'}",
            time.strftime("%H:%M:%S", time.localtime(p["connected_since"])),
            _number(p.get("rtt_s"), 1000.0),
            str(p["packages_in"]),
            str(p["packages_out"]),
            _number(p.get("score")),
            str(p["state"]),
        )
    return table


def status_tables(status: dict[str, Any]) -> list[Table]:
    """The node, its peers, its topics and its latest warnings, as rich tables."""
    node = status["node"]
    about = Table("node", "", show_header=False)
    add_plain_row(about, "peer id", str(node.get("peer_id") or "-"))
    add_plain_row(about, "version", str(node["version"]))
    add_plain_row(about, "mode", f"{node['mode']} ({'secure' if node['secure'] else 'plain'})")
    add_plain_row(about, "uptime", f"{node['uptime_s']:.0f} s")
    add_plain_row(about, "listening", " ".join(node["listen_urls"]) or "-")
    if (offset := node.get("clock_offset_s")) is not None:  # (peers' clocks minus ours)
        add_plain_row(about, "clock", f"{-offset:+.1f} s from its peers' median")
    for name, store in node.get("stores", {}).items():  # (tester41 F2)
        state = "writes failing: in memory" if store["failing"] else "ok"
        add_plain_row(about, f"{name} store", f"{state} ({store['write_failures']} failed)")
    tables = [about, _peers_table(status["peers"])]
    if status["topics"]:
        topics = Table("topic", "subscribed", "published", "delivered", "per s", "too old")
        for t in status["topics"]:
            add_plain_row(
                topics,
                t["topic"],
                "yes" if t["subscribed"] else "no",
                str(t["published"]),
                str(t["delivered"]),
                f"{t['rate_per_s']:.2f}",
                str(t.get("too_old", 0)),  # (tester41 F5)
            )
        tables.append(topics)
    if status["warnings"]:
        warnings = Table("time", "level", "message", title="latest warnings")
        for w in status["warnings"][-10:]:
            moment = time.strftime("%H:%M:%S", time.localtime(w["time"]))
            add_plain_row(warnings, moment, w["level"], w["message"])
        tables.append(warnings)
    return tables
