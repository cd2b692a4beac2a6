"""
The admin listener: a small HTTP/1.1 server (GET and HEAD only, one request per
connection) serving ``/`` (the status page), ``/status.json`` and ``/metrics``. Lines
may end with CRLF or a bare LF (RFC 9112 §2.2: "a recipient MAY recognize a single LF as a
line terminator and ignore any preceding CR"); a bare CR elsewhere and a folded header
line are answered with a 400 (§2.2, §5.2).

It starts and stops with its node (``NodeOptions.admin``), and its request tasks belong
to the node's :class:`~trustp2p.tasks.TaskOwner`. With ``admin_token`` set, every
request must carry it (``Authorization: Bearer <token>`` or ``?token=<token>``);
without it (loopback only), a request's ``Host`` must be ``localhost`` or a loopback
address (421 otherwise: a web page that rebound its name to 127.0.0.1 sends its own).

Connections take slots from accept, before any request or token: at most
:data:`~trustp2p.admin.slots.MAX_CONNECTIONS` (32) at once, at most
:data:`~trustp2p.admin.slots.MAX_PER_ADDRESS` (8) from one address, all of loopback
being one. Past a cap a new connection is let in, and the oldest connection still
sending its request head is dropped for it (:class:`~trustp2p.admin.slots.AdminSlots`
has the rule and why): a scraper sends its head at once, so connections sending
theirs a byte at a time can't keep it out, even from the same address. Each
connection has :data:`REQUEST_TIMEOUT` to send its request and take its answer.

"""

from __future__ import annotations

__all__ = ["AdminServer"]

import asyncio
import hmac
import ipaddress
import itertools
import json
import logging
import re
from importlib import resources
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..drivers import serve_streams
from ..exceptions import DriverError
from ..options import parse_admin_address
from .collector import node_registry
from .logs import WarningLog
from .slots import MAX_CONNECTIONS, MAX_PER_ADDRESS, AdminSlots
from .status import TopicRates, node_status

if TYPE_CHECKING:
    from ..drivers import StreamServer
    from ..node.node import Node

logger = logging.getLogger(__name__)

MAX_REQUEST = 8192
"""Largest request head accepted, in bytes (empty lines before the request line count)."""
REQUEST_TIMEOUT = 10.0
"""Seconds a connection may stay open: to send its request and take its answer."""
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
}

Response = tuple[int, str, bytes]


class AdminServer:
    """
    One node's admin listener. The node makes it when ``options.admin`` is set.

    Attributes:
        url: Where it listens, e.g. ``http://127.0.0.1:9107/``, once started.

    """

    def __init__(self, node: Node) -> None:
        self._node = node
        self._token = node.options.admin_token
        self._registry = node_registry(node)
        self._warnings = WarningLog(node.context_key)
        self._rates = TopicRates(node.metrics.started)
        self._server: StreamServer | None = None
        self._slots = AdminSlots(limit=MAX_CONNECTIONS, per_address=MAX_PER_ADDRESS)
        self._writers: dict[int, asyncio.StreamWriter] = {}  # by connection id, in a slot
        self._ids = itertools.count()
        self.url: str | None = None

    def collect_warnings(self) -> None:
        """Keep the node's warnings from now on (``start()`` does, if not done before):
        a node calls it first thing, so that its start-up warnings are kept too."""
        self._warnings.attach()

    async def start(self) -> None:
        """
        Listen on ``options.admin``.

        Raises:
            DriverError: If it can't (the port is taken, the address isn't ours).

        """
        assert self._node.options.admin is not None
        host, port = parse_admin_address(self._node.options.admin)
        try:
            # Our accept loop, not asyncio's: out of file descriptors, asyncio's logged
            # thousands of tracebacks a second (found by an attacker's test).
            self._server, _ = await serve_streams(self._protocol, host, port)
        except DriverError as exc:
            raise DriverError(f"admin listener {exc}") from exc.__cause__
        self._warnings.attach()
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
        logger.info("= admin listener on %s", self.url)

    async def close(self) -> None:
        """Stop listening; requests in progress end with the node's tasks."""
        self._warnings.detach()
        if self._server is not None:
            self._server.close()
            self._server = None

    def _protocol(self) -> asyncio.BaseProtocol:
        reader = asyncio.StreamReader(limit=MAX_REQUEST)
        return asyncio.StreamReaderProtocol(reader, self._accept)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(self._ids)
        peer = writer.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) else ""
        decision = self._slots.admit(conn, host)
        if decision.evicted is not None:
            logger.debug("! admin connection dropped for a new one: still sending its request")
            self._writers.pop(decision.evicted).transport.abort()
        if not decision.admitted:
            logger.debug("! admin connection from %s refused: every slot it may take answers", host)
            writer.transport.abort()
            return
        self._writers[conn] = writer
        self._node.tasks.spawn(self._serve(conn, reader, writer), "admin request")

    async def _serve(
        self, conn: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            # One deadline for the whole exchange, the answer's sending included: asyncio
            # sends what it holds before it closes, so a client that doesn't read an
            # answer larger than the socket buffers would keep its descriptor for good.
            async with asyncio.timeout(REQUEST_TIMEOUT):
                request = await self._request(reader)
                self._slots.head_read(conn)  # answering: no new connection drops it
                if request is not None:
                    writer.write(_encode(*request))
                    await writer.drain()
                    writer.close()
                    await writer.wait_closed()  # the answer is all sent
        except (ConnectionError, TimeoutError):
            writer.transport.abort()
        finally:
            self._slots.release(conn)
            self._writers.pop(conn, None)
            writer.close()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[bytes, Response] | None:
        """The request's method and the response to it; None if the client left first."""
        try:
            head = await _read_head(reader)
        except ValueError:
            return b"GET", _text(431, "request too large")
        except _MalformedHead as error:
            return b"GET", _text(400, str(error))
        except asyncio.IncompleteReadError:
            return None
        return head.split(b" ", 1)[0], self.respond(head)

    def respond(self, head: bytes) -> Response:
        """The response to one request head (request line and headers, each ending with
        CRLF or LF)."""
        lines = [line.removesuffix("\r") for line in head.decode("latin-1").split("\n")]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(400, "bad request line")
        method, target, _ = parts
        if any(line[:1] in (" ", "\t") for line in lines[1:]):
            # RFC 9112 §5.2: obs-fold is refused with a 400 (or unfolded): read as a
            # header of its own, a folded line could be taken for another field.
            return _text(400, "folded header line")
        if method not in ("GET", "HEAD"):
            return _text(405, "only GET and HEAD")
        try:
            url = urlsplit(target)
        except ValueError:  # e.g. "//[x": found by an attacker's test (a traceback)
            return _text(400, "bad request target")
        if self._token is not None and not self._authorized(lines[1:], url.query):
            return _text(401, "admin token required")
        if self._token is None and not _local_host(lines[1:]):
            return _text(421, "without admin_token, only Host: localhost or a loopback address")
        if url.path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if url.path == "/status.json":
            status = node_status(self._node, self._rates, self._warnings)
            return 200, "application/json", json.dumps(status).encode()
        if url.path in ("/", "/index.html"):
            page = resources.files(__package__).joinpath("page.html").read_bytes()
            return 200, "text/html; charset=utf-8", page
        return _text(404, "not found")

    def _authorized(self, headers: list[str], query: str) -> bool:
        assert self._token is not None
        token = self._token.encode()
        for line in headers:
            name, _, value = line.partition(":")
            if name.strip().lower() == "authorization":
                scheme, _, given = value.strip().partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token):
                    return True
        given_list = parse_qs(query).get("token", [])
        return any(hmac.compare_digest(given.encode(), token) for given in given_list)


def _local_host(headers: list[str]) -> bool:
    """Whether the request's ``Host`` (if any) names this machine: ``localhost`` (or a
    name under it) or a loopback address, whatever the port. Found by an attacker:
    without a token (loopback only), a web page open in the operator's browser could
    rebind its own name to 127.0.0.1 and read the status (peers, addresses, warnings);
    its requests carry its name as their ``Host``."""
    for line in headers:
        name, _, value = line.partition(":")
        if name.strip().lower() != "host":
            continue
        host = value.strip().lower()
        if host.startswith("["):  # [::1]:port
            host = host[1 : host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.partition(":")[0]
        host = host.removesuffix(".")
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False
    return True  # (HTTP/1.0: no Host; a browser always sends one)


class _MalformedHead(Exception):
    """A request head no HTTP/1.1 server may read as it stands."""


_LEADING_EMPTY_LINES = re.compile(rb"\A(?:\r?\n)+")
_HEAD_END = re.compile(rb"\n\r?\n")
_BARE_CR = re.compile(rb"\r[^\n]")


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """
    Read a request head up to the empty line that ends it, without that line.

    A line ends with LF, with or without a CR before it (RFC 9112 §2.2); empty lines
    before the request line are skipped, as RFC 9112 §2.2 advises a server to. A CR
    anywhere else is refused at once (§2.2: a bare CR is invalid), rather than waited
    on until the timeout for a line end that may never come.

    Raises:
        ValueError: If the head is over :data:`MAX_REQUEST` bytes.
        _MalformedHead: If it has a bare CR.
        asyncio.IncompleteReadError: If the client closes first.

    """
    buffer = b""
    while True:
        data = await reader.read(MAX_REQUEST)
        if not data:
            raise asyncio.IncompleteReadError(buffer, None)
        buffer += data
        buffer = _LEADING_EMPTY_LINES.sub(b"", buffer, count=1)
        end = _HEAD_END.search(buffer)
        head = buffer if end is None else buffer[: end.start() + 1]
        if _BARE_CR.search(head):
            raise _MalformedHead("a bare CR in the request head")
        if len(head) > MAX_REQUEST:
            raise ValueError(f"request head over {MAX_REQUEST} bytes")
        if end is not None:
            return head


def _encode(method: bytes, response: Response) -> bytes:
    status, content_type, body = response
    return (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii") + (b"" if method == b"HEAD" else body)


def _text(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", f"{text}\n".encode()
