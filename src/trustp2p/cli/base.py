"""The ``trustp2p`` command: the group, shared options and running a node."""

from __future__ import annotations

__all__ = [
    "DEFAULT_PORT",
    "LOG_LEVELS",
    "F",
    "GroupedCommand",
    "cli",
    "cwd_option",
    "dir_option",
    "fast_options",
    "given_flags",
    "listen_options",
    "log_options",
    "node_options",
    "resolve_options",
    "run_node",
    "run_on_loop",
    "setup_cli_logging",
    "tuning_options",
]

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from .._build import build_name
from .._version import __version__
from ..exceptions import TrustP2PError
from ..logs import count_of, setup_logging
from ..loop import LOOPS, loop_factory, run
from ..options import DEFAULT_PORT, NodeOptions

if TYPE_CHECKING:
    from ..config import Setting

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

LOG_LEVELS = ["debug", "info", "warning", "error"]


def setup_cli_logging(level: str) -> None:
    context = click.get_current_context(silent=True)
    log_format = context.meta.get(_LOG_FORMAT, "text") if context is not None else "text"
    setup_logging(level, log_format)


_LOG_FORMAT = "trustp2p.log_format"


def _remember_log_format(ctx: click.Context, param: click.Parameter, value: str) -> str:
    ctx.meta[_LOG_FORMAT] = value
    return value


def log_options(f: F) -> F:
    f = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        envvar="TRUSTP2P_LOG_FORMAT",  # (tester39 F10: a unit's Environment= line)
        show_envvar=True,
        expose_value=False,
        is_eager=True,
        callback=_remember_log_format,
        help="Logs as text, or one JSON object per line (time, level, logger, peer, "
        "message and the record's fields).",
    )(f)
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        envvar="TRUSTP2P_LOG_LEVEL",
        show_envvar=True,
        help="Logging level (logs go to stderr).",
    )(f)


# Options shared by server, client and node: (flag, NodeOptions field, type, help).
_TUNING: list[tuple[str, str, Any, str]] = [
    ("--alt", "alt", str, "Network id; peers on another network are refused."),
    (
        "--name",
        "name",
        str,
        "The node's name in its --cwd: identity/NAME.key, data/NAME/ (default: the first"
        " of node, node-2... free).",
    ),
    ("--max-inbound", "max_inbound", int, "Most clients connected at once."),
    ("--max-package-size", "max_package_size", int, "Largest package accepted, bytes (>= 1024)."),
    ("--heartbeat-interval", "heartbeat_interval", float, "Seconds between heartbeat rounds."),
    ("--heartbeat-jitter", "heartbeat_jitter", float, "Up to this many seconds of jitter."),
    ("--heartbeat-timeout", "heartbeat_timeout", float, "Ping each peer this often (s)."),
    (
        "--heartbeat-response-timeout",
        "heartbeat_response_timeout",
        float,
        "Drop peers that don't answer a ping within this (s).",
    ),
    ("--response-timeout", "response_timeout", float, "Default request timeout (s)."),
    ("--stalled-timeout", "stalled_timeout", float, "Reroute stalled requests after (s)."),
    ("--reconnect-initial", "reconnect_initial", float, "First redial delay (s)."),
    ("--reconnect-max", "reconnect_max", float, "Largest redial delay (s)."),
    (
        "--close-timeout",
        "close_timeout",
        float,
        "On a stop, the time allowed for each closing handshake, each thread's stop() and"
        " then its tasks, the gossip handlers running, and what the threads leave running"
        " (s); a second Ctrl-C or SIGTERM cuts it short.",
    ),
    (
        "--handshake-timeout",
        "handshake_timeout",
        float,
        "Time from TCP accept to the peer's hello: upgrade, Noise handshake, hello (s).",
    ),
    ("--target-outbound", "target_outbound", int, "Outbound connections to keep."),
    ("--anchor-age", "anchor_age", float, "An outbound connection this old is an anchor (s)."),
    ("--max-per-ip", "max_per_ip", int, "Inbound connections at once from one address."),
    ("--ip-rate", "ip_rate", float, "New inbound connections per second from one address."),
    ("--ip-burst", "ip_burst", int, "...with bursts of this many."),
    ("--storm-connections", "storm_connections", int, "Connections of a peer that make a storm."),
    ("--storm-window", "storm_window", float, "...within this many seconds."),
    ("--storm-cooldown", "storm_cooldown", float, "Seconds a storming peer is refused."),
    ("--request-rate", "request_rate", float, "Requests and talks per second a peer may send."),
    ("--request-burst", "request_burst", int, "...with bursts of this many."),
    ("--max-send-queue", "max_send_queue", int, "Packages waiting for a slow peer, at most."),
    ("--max-send-bytes", "max_send_bytes", int, "...and their bytes, at most."),
    ("--invalid-ratio", "invalid_ratio", float, "Invalid/good package ratio that blocks a peer."),
    ("--block-duration", "block_duration", float, "How long a block lasts (s)."),
    ("--exchange-interval", "exchange_interval", float, "Seconds between peer exchange rounds."),
    ("--feeler-interval", "feeler_interval", float, "Seconds between feeler dials (0: none)."),
    ("--gossip-fanout", "gossip_fanout", int, "Mesh peers a relay pushes a message to."),
    ("--admin", "admin", str, "HOST:PORT (or PORT: 127.0.0.1) of the admin listener."),
    ("--admin-token", "admin_token", str, "Token every admin request must carry."),
]


SERVER_ONLY = frozenset(
    {"max_inbound", "max_per_ip", "ip_rate", "ip_burst", "limit_loopback", "relay_topics"}
    | {"storm_connections", "storm_window", "storm_cooldown"}
)
"""Options about accepting peers: ``client --help`` doesn't offer them."""

CLIENT_ONLY = frozenset(
    {"reconnect_initial", "reconnect_max", "target_outbound", "anchor_age"}
    | {"exchange_interval", "feeler_interval", "stalled_timeout"}
)
"""Options about dialling servers: ``server --help`` doesn't offer them."""

GROUPS: dict[str, str] = {
    **dict.fromkeys(
        ["cwd", "name", "host", "port", "peers", "alt", "secure", "driver", "loop"], "Node"
    ),
    **dict.fromkeys(
        [
            "max_inbound",
            "max_package_size",
            "max_per_ip",
            "ip_rate",
            "ip_burst",
            "storm_connections",
            "storm_window",
            "storm_cooldown",
            "request_rate",
            "request_burst",
            "max_send_queue",
            "max_send_bytes",
            "invalid_ratio",
            "block_duration",
            "limit_loopback",
        ],
        "Limits and blocks",
    ),
    **dict.fromkeys(
        [
            "heartbeat_interval",
            "heartbeat_jitter",
            "heartbeat_timeout",
            "heartbeat_response_timeout",
            "response_timeout",
            "stalled_timeout",
            "close_timeout",
            "handshake_timeout",
        ],
        "Liveness and timeouts",
    ),
    **dict.fromkeys(
        [
            "reconnect_initial",
            "reconnect_max",
            "target_outbound",
            "anchor_age",
            "exchange_interval",
            "feeler_interval",
        ],
        "Dialling",
    ),
    **dict.fromkeys(["relay_topics", "gossip_fanout"], "Gossip"),
    **dict.fromkeys(["admin", "admin_token"], "Admin listener"),
    **dict.fromkeys(["log_level", "log_format"], "Logging"),
}
"""The ``--help`` section of each option of the commands that run nodes."""


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists its options under headings (:data:`GROUPS`)."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                group = GROUPS.get(param.name or "", "Other")
                sections.setdefault(group, []).append(record)
        order = [*dict.fromkeys(GROUPS.values()), "Other"]
        for group in order:
            if group in sections:
                with formatter.section(f"{group} options"):
                    formatter.write_dl(sections[group])


def tuning_options(role: str) -> Callable[[F], F]:
    """The timing and limit options of the commands that run nodes, those of ``role``
    (``server``, ``client`` or ``node``) only."""
    skip = {"server": CLIENT_ONLY, "client": SERVER_ONLY}.get(role, frozenset())

    def decorate(f: F) -> F:
        defaults = NodeOptions(server=True)
        f = click.option(
            "--insecure",
            "secure",
            flag_value=False,
            default=None,
            help="Speak the original's plain protocol, without the Noise secure channel "
            "(to talk to an original-implementation peer). Secure and plain nodes refuse "
            "each other.",
        )(f)
        if "limit_loopback" not in skip:
            f = click.option(
                "--limit-loopback",
                "limit_loopback",
                flag_value=True,
                default=None,
                help="Apply per-address limits and blocks to loopback addresses too.",
            )(f)
        if "relay_topics" not in skip:
            f = click.option(
                "--relay-topic",
                "relay_topics",
                multiple=True,
                metavar="TOPIC",
                help="Carry TOPIC though no thread handles it: relay it between peers and "
                "keep it for catch-up (a hub's clients gossip only on the topics it "
                "carries); repeatable.",
            )(f)
        for flag, name, kind, text in reversed(_TUNING):
            if name in skip:
                continue
            default = getattr(defaults, name)
            shown = "" if default is None else f"  [default: {default}]"
            f = click.option(flag, name, type=kind, default=None, help=text + shown)(f)
        return f

    return decorate


def _check_loop(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        loop_factory(value)
    except TrustP2PError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def fast_options(*, driver: bool = False) -> Callable[[F], F]:
    """``--loop`` (and ``--driver`` with ``driver=True``) for the commands that run
    nodes; run them with :func:`_run`."""

    def decorate(f: F) -> F:
        if driver:
            f = click.option(
                "--driver",
                type=click.Choice(["ws", "tcp", "picows"]),
                default=None,
                help="Driver to listen with and to dial its URLs' scheme with; picows "
                "(ws://, needs trustp2p[fast]) is a faster WebSocket driver.  [default: ws]",
            )(f)
        return click.option(
            "--loop",
            type=click.Choice(LOOPS),
            default="asyncio",
            show_default=True,
            envvar="TRUSTP2P_LOOP",
            show_envvar=True,
            callback=_check_loop,
            help="Event loop; uvloop (needs trustp2p[fast]) is faster.",
        )(f)

    return decorate


def listen_options(f: F) -> F:
    """``--host`` and ``--port``, for the commands that accept peers."""
    f = click.option(
        "--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port (0: any)."
    )(f)
    return click.option(
        "--host",
        default="127.0.0.1",
        show_default=True,
        help="Address to listen on (0.0.0.0: every IPv4 interface; '::' IPv6 only; '' both).",
    )(f)


def node_options(f: F) -> F:
    """The options of ``trustp2p node`` after ``--cwd`` (``config`` takes them too)."""
    f = tuning_options("node")(fast_options(driver=True)(log_options(f)))
    f = click.option(
        "--connect", "peers", multiple=True, metavar="URL", help="Server to dial; repeatable."
    )(f)
    return listen_options(f)


def given_flags(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """
    The options of ``kwargs`` given on the command line (a flag left at its default
    isn't), and the flag each parameter of the command is given with.
    """
    context = click.get_current_context()
    flags = {
        name: value
        for name, value in kwargs.items()
        if value is not None and context.get_parameter_source(name) is not ParameterSource.DEFAULT
    }
    typed = {param.name: param.opts[0] for param in context.command.params if param.name}
    return flags, typed


def resolve_options(
    cwd: Path | None, kwargs: dict[str, Any], **roles: Any
) -> tuple[NodeOptions, dict[str, Setting]]:
    """
    The options a node runs with: the command's flags (``kwargs``), the TRUSTP2P_*
    variables, ``<cwd>/trustp2p.toml`` and the defaults, the first found winning; and
    each one's :class:`~trustp2p.config.Setting` (where it came from).

    Raises:
        click.UsageError: For an unknown key or a value a node would refuse, naming
            where it was set.

    """
    from ..config import Source, load_settings, with_origins

    flags, typed = given_flags(kwargs)
    settings = {}
    try:
        settings = load_settings(cwd, os.environ, flags, typed)
        options = {s.name: s.value for s in settings.values() if s.source is not Source.DEFAULT}
        return NodeOptions.from_kwargs(cwd=cwd, **roles, **options), settings
    except (TypeError, ValueError, TrustP2PError) as exc:
        message = str(exc)
        if message.startswith("peers: ") and "peers" in flags:
            message = "--connect: " + message.removeprefix("peers: ")  # the flag typed
        raise click.UsageError(with_origins(message, settings)) from exc


def run_on_loop(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``main`` on the event loop ``--loop`` named (checked when parsed)."""
    return run(main, loop=loop)


def dir_option(text: str) -> Callable[[F], F]:
    """``--cwd``, a directory that must exist (a usage error, 2): `id` would otherwise
    make a key in a directory nobody meant, `peers` report an empty store for a typo, and
    a node command said "cwd is not a directory" with 1 (a tester)."""
    return click.option(
        "--cwd",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help=text,
    )


cwd_option = dir_option("Directory holding threads-enabled/ (it must exist).")


def _dial_the_store(options: NodeOptions, log: logging.Logger) -> None:
    """A client given no server to dial runs on the peers its store knows, if it knows
    some (a tester: a client restarted without --connect was refused, a node started).

    Raises:
        click.UsageError: If the store knows none.

    """
    from ..apps.peers import read_peers
    from ..identity import name_to_claim

    records = []
    if options.cwd is not None:
        # Its own store: with a server running in cwd, a client is node-2 (review41).
        name = options.name or name_to_claim(options.cwd)
        records = asyncio.run(read_peers(options.cwd, name))
    known = sum(1 for record in records if record.urls and record.blocked_until is None)
    if not known:
        raise click.UsageError(
            "no server to dial: give --connect URL, or peers in trustp2p.toml or "
            "TRUSTP2P_PEERS (the peer store knows none)"
        )
    log.info("= no --connect: dialling the %s the peer store knows", count_of(known, "peer"))


def run_node(log_level: str, loop: str, **kwargs: Any) -> int:
    """Run a node until Ctrl-C or SIGTERM; return the exit code."""
    from ..apps.serve import serve_process
    from ..config import Source, with_origins

    setup_cli_logging(log_level)
    roles = {name: kwargs.pop(name) for name in ("server", "client") if name in kwargs}
    node_options, settings = resolve_options(kwargs.get("cwd"), kwargs, **roles)
    cli_log = logging.getLogger("trustp2p.cli")
    # (Found by a tester: peers from the file or the environment were refused by
    # `client`, whose --connect click required, and ignored by `server` without a word.)
    if node_options.client and not node_options.server and not node_options.peers:
        _dial_the_store(node_options, cli_log)
    if node_options.peers and not node_options.client:
        message = "peers are ignored: a server dials nothing (`trustp2p node` accepts and dials)"
        # A file a client and a server share (the README's layout) is no mistake.
        shared = "peers" in settings and settings["peers"].source is Source.FILE
        cli_log.log(
            logging.INFO if shared else logging.WARNING, "! %s", with_origins(message, settings)
        )
    if node_options.admin_token and node_options.admin is None:  # (a tester meant --admin)
        cli_log.warning("! the admin token protects nothing: no admin listener (--admin)")
    try:
        return run_on_loop(serve_process(node_options), loop)
    except TrustP2PError as exc:
        click.echo(f"trustp2p: error: {exc}", err=True)
        return 1
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE):
            raise
        # Anywhere in the start (a module imported late, say: found by a new user,
        # a 50-line traceback), as one line; the failed start was undone already.
        click.echo(f"trustp2p: error: out of file descriptors ({exc.strerror}): raise "
                   "the limit (ulimit -n)", err=True)  # fmt: skip
        return 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
# The build (pure Python or compiled with mypyc) is part of what a bug report needs.
@click.version_option(__version__, message=f"%(prog)s %(version)s, {build_name()}")
def cli() -> None:
    """trustp2p: a peer-to-peer network framework.

    Run `trustp2p init DIR` to make an application directory, then start a server
    and clients in it, each with its own --name (unnamed, they take the directory's
    identities in the order they start). `trustp2p demo` runs a small local network.
    """
