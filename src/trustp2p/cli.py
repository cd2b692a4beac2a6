"""The ``trustp2p`` command."""

from __future__ import annotations

__all__ = ["main"]

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from .exceptions import TrustP2PError
from .loop import LOOPS, loop_factory, run
from .options import DEFAULT_PORT, NodeOptions

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

LOG_LEVELS = ["debug", "info", "warning", "error"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # websockets logs every connection at INFO; ours already does.
    logging.getLogger("websockets").setLevel(
        max(logging.WARNING, logging.getLevelName(level.upper()))
    )


def _log_level_option(f: F) -> F:
    return click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        help="Logging level (logs go to stderr).",
    )(f)


# Options shared by server, client and node: (flag, NodeOptions field, type, help).
_TUNING: list[tuple[str, str, Any, str]] = [
    ("--alt", "alt", str, "Network id; peers on another network are refused."),
    ("--max-inbound", "max_inbound", int, "Most clients connected at once."),
    ("--max-package-size", "max_package_size", int, "Largest package accepted, in bytes."),
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
    ("--close-timeout", "close_timeout", float, "Time allowed for a closing handshake (s)."),
    ("--handshake-timeout", "handshake_timeout", float, "Time allowed for the Noise handshake."),
    ("--target-outbound", "target_outbound", int, "Outbound connections to keep."),
    ("--anchor-age", "anchor_age", float, "An outbound connection this old is an anchor (s)."),
    ("--max-per-ip", "max_per_ip", int, "Inbound connections at once from one address."),
    ("--ip-rate", "ip_rate", float, "New inbound connections per second from one address."),
    ("--ip-burst", "ip_burst", int, "...with bursts of this many."),
    ("--storm-connections", "storm_connections", int, "Connections of a peer that make a storm."),
    ("--storm-window", "storm_window", float, "...within this many seconds."),
    ("--storm-cooldown", "storm_cooldown", float, "Seconds a storming peer is refused."),
    ("--request-rate", "request_rate", float, "Requests per second a peer may send."),
    ("--request-burst", "request_burst", int, "...with bursts of this many."),
    ("--max-send-queue", "max_send_queue", int, "Packages waiting for a slow peer, at most."),
    ("--invalid-ratio", "invalid_ratio", float, "Invalid/good package ratio that blocks a peer."),
    ("--block-duration", "block_duration", float, "How long a block lasts (s)."),
    ("--exchange-interval", "exchange_interval", float, "Seconds between peer exchange rounds."),
    ("--gossip-fanout", "gossip_fanout", int, "Mesh peers a relay pushes a message to."),
    ("--admin", "admin", str, "HOST:PORT of the admin listener (metrics, status page)."),
    ("--admin-token", "admin_token", str, "Token every admin request must carry."),
]


def _tuning_options(f: F) -> F:
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
    f = click.option(
        "--limit-loopback",
        "limit_loopback",
        flag_value=True,
        default=None,
        help="Apply per-address limits and blocks to loopback addresses too.",
    )(f)
    for flag, name, kind, text in reversed(_TUNING):
        f = click.option(
            flag,
            name,
            type=kind,
            default=None,
            help=f"{text}  [default: {getattr(defaults, name)}]",
        )(f)
    return f


def _check_loop(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        loop_factory(value)
    except TrustP2PError as exc:
        raise click.BadParameter(str(exc), ctx, param) from exc
    return value


def _fast_options(*, driver: bool = False) -> Callable[[F], F]:
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
            callback=_check_loop,
            help="Event loop; uvloop (needs trustp2p[fast]) is faster.",
        )(f)

    return decorate


def _run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``main`` on the event loop ``--loop`` named (checked when parsed)."""
    return run(main, loop=loop)


def _cwd_option(f: F) -> F:
    return click.option(
        "--cwd",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help="Directory holding threads-enabled/.",
    )(f)


def _run_node(log_level: str, loop: str, **kwargs: Any) -> int:
    """Run a node until Ctrl-C or SIGTERM; return the exit code."""
    from .apps.serve import serve

    _setup_logging(log_level)
    options = {name: value for name, value in kwargs.items() if value is not None}
    try:
        node_options = NodeOptions.from_kwargs(**options)
    except (TypeError, ValueError, TrustP2PError) as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        return _run(serve(node_options), loop)
    except TrustP2PError as exc:
        click.echo(f"trustp2p: error: {exc}", err=True)
        return 1


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trustp2p")
def cli() -> None:
    """trustp2p: a peer-to-peer network framework.

    Run `trustp2p init DIR` to make an application directory, then start a server
    and clients in it. `trustp2p demo` runs a small local network.
    """


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_log_level_option
def init(directory: Path, log_level: str) -> None:
    """Make DIRECTORY an application directory with the heartbeat thread enabled."""
    from .apps.appdir import init_app_dir

    _setup_logging(log_level)
    for line in init_app_dir(directory):
        click.echo(line)


@cli.command()
@_cwd_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port (0: any).")
@_tuning_options
@_fast_options(driver=True)
@_log_level_option
def server(**kwargs: Any) -> int:
    """Run a node that accepts peers."""
    return _run_node(server=True, **kwargs)


@cli.command()
@_cwd_option
@click.option(
    "--connect",
    "peers",
    multiple=True,
    required=True,
    metavar="URL",
    help="Server to dial, e.g. ws://127.0.0.1:1107; repeat for several.",
)
@_tuning_options
@_fast_options(driver=True)
@_log_level_option
def client(**kwargs: Any) -> int:
    """Run a node that dials servers."""
    return _run_node(client=True, **kwargs)


@cli.command()
@_cwd_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port (0: any).")
@click.option(
    "--connect", "peers", multiple=True, metavar="URL", help="Server to dial; repeatable."
)
@_tuning_options
@_fast_options(driver=True)
@_log_level_option
def node(**kwargs: Any) -> int:
    """Run a node that both accepts peers and dials servers."""
    return _run_node(server=True, client=True, **kwargs)


@cli.command()
@click.option("--nodes", type=click.IntRange(2, 50), default=5, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.5),
    default=20.0,
    show_default=True,
    help="Seconds to run (then up to 5 s more for the last chat messages).",
)
@click.option(
    "--speed",
    type=click.FloatRange(0.1, 10),
    default=1.0,
    show_default=True,
    help="Run every timing (chat, heartbeats, redials, gossip) this many times faster.",
)
@click.option(
    "--restart/--no-restart",
    default=True,
    show_default=True,
    help="Start the node stopped a third of the way in again two thirds of the way in "
    "(--no-restart: it stays down and misses the chat, and the demo fails).",
)
@_fast_options()
@_log_level_option
def demo(
    nodes: int, duration: float, speed: float, restart: bool, log_level: str, loop: str
) -> int:
    """Run a local network of NODES nodes on 127.0.0.1 with a live table.

    Node 0 is a server; the others are server and client at once, each dialling node 0
    and the node before it. All run the heartbeat thread, with short timings, and chat.
    One node stops a third of the way in and restarts two thirds of the way in. Exit
    code 0 when the network is healthy: every node connected as planned, pings were
    answered, and every node has every chat message exactly once.
    """
    from .apps.demo import run_demo

    _setup_logging(log_level if log_level != "info" else "warning")
    return _run(run_demo(nodes=nodes, duration=duration, speed=speed, restart=restart), loop)


_SIMULATION_OPTIONS = [
    click.option("--nodes", type=click.IntRange(min=2), default=100, show_default=True),
    click.option(
        "--degree",
        type=click.IntRange(min=1),
        default=6,
        show_default=True,
        help="Peers each node dials at random (so it has about twice as many connections).",
    ),
    click.option(
        "--mesh-degree",
        type=click.IntRange(min=1),
        default=6,
        show_default=True,
        help="Mesh peers per topic each router aims for (gossip mode).",
    ),
    click.option("--messages", type=click.IntRange(min=1), default=200, show_default=True),
    click.option(
        "--rate",
        type=click.FloatRange(min=0, min_open=True),
        default=5.0,
        show_default=True,
        help="Messages published per second, each from a random live node.",
    ),
    click.option(
        "--churn",
        type=click.FloatRange(0, 1, max_open=True),
        default=0.0,
        show_default=True,
        help="Fraction of the nodes killed while publishing, each restarted later.",
    ),
    click.option(
        "--partition-at",
        type=click.FloatRange(min=0),
        default=None,
        metavar="T",
        help="Cut the network into two halves T seconds into publishing.",
    ),
    click.option(
        "--partition-for",
        type=click.FloatRange(min=0, min_open=True),
        default=2.0,
        show_default=True,
        help="Seconds until the partition heals.",
    ),
    click.option(
        "--mode",
        type=click.Choice(["gossip", "flood"]),
        default="gossip",
        show_default=True,
        help="Mesh gossip, or flooding every peer (the baseline).",
    ),
    click.option("--seed", type=int, default=None, help="Seed of the topology and schedule."),
    click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True),
        default=30.0,
        show_default=True,
        help="Seconds to wait, after publishing, for every live node to have every message.",
    ),
    click.option(
        "--plot",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="FILE.png",
        help="Draw propagation curves and a duplicates histogram (needs matplotlib).",
    ),
    click.option("--json", "as_json", is_flag=True, help="Print the figures as one JSON object."),
    click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="warning",
        show_default=True,
        help="Logging level (logs go to stderr).",
    ),
]


def _simulation_options(f: F) -> F:
    for option in reversed(_SIMULATION_OPTIONS):
        f = option(f)
    return f


@cli.command()
@_simulation_options
@_fast_options()
def simulate(plot: Path | None, as_json: bool, log_level: str, loop: str, **kwargs: Any) -> int:
    """Simulate a network of NODES in-process nodes and measure its gossip.

    Nodes run in this process on the memory driver. Once they are connected, MESSAGES
    messages are published at RATE from random live nodes; --churn kills and restarts
    nodes meanwhile, --partition-at cuts the network in two for a while. Reports
    coverage, time to full coverage (p50/p99), duplicates and bytes per message, and
    catch-up after the heal or a restart. Exit code 0 when every live node delivered
    every message exactly once and in per-origin order.
    """
    import json

    from .apps.simulate import (
        PLOT_MISSING,
        Simulation,
        plot_report,
        print_report,
        simulate_with_progress,
        to_json,
    )

    _setup_logging(log_level)
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            click.echo(f"trustp2p: error: {PLOT_MISSING}", err=True)
            return 1
    try:
        sim = Simulation(**kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        report = _run(simulate_with_progress(sim), loop)
    except TimeoutError as exc:
        click.echo(f"trustp2p: error: {exc}", err=True)
        return 1
    if plot is not None:
        plot_report(report, plot)
    if as_json:
        click.echo(json.dumps(to_json(report), indent=2))
    else:
        print_report(report, plot)
    for problem in report.problems:
        click.echo(f"trustp2p: {problem}", err=True)
    return 0 if report.ok else 1


def _app_dir_option(f: F) -> F:
    return click.option(
        "--cwd",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help="The node's application directory.",
    )(f)


@cli.command()
@_app_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, for scripts.")
@_log_level_option
def peers(cwd: Path, as_json: bool, log_level: str) -> int:
    """List the peers the node remembers (its peer store, data/peers.sqlite).

    The table shows each peer's URLs, short peer id, score, when it was last seen and
    until when it is blocked (UTC). --json prints every field of every peer.
    """
    import json

    from rich.console import Console

    from .apps.peers import peers_json, peers_table, read_peers

    _setup_logging(log_level)
    records = asyncio.run(read_peers(cwd))
    if as_json:
        click.echo(json.dumps(peers_json(records), indent=2))
        return 0
    if not records:
        click.echo("no peers known yet")
        return 0
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # don't wrap rows for scripts and pagers
    console.print(peers_table(records))
    return 0


@cli.command()
@click.option("--admin", "admin", required=True, help="The node's admin URL or HOST:PORT.")
@click.option("--token", default=None, help="The admin token, if the node has one.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status.json.")
def status(admin: str, token: str | None, as_json: bool) -> int:
    """Show a running node's status (its /status.json) through its admin listener."""
    import json

    from rich.console import Console

    from .admin.client import fetch_status, status_tables

    try:
        answer = fetch_status(admin, token=token)
    except (OSError, ValueError) as exc:
        click.echo(f"trustp2p: error: can't get the status from {admin}: {exc}", err=True)
        return 1
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return 0
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # don't wrap rows for scripts and pagers
    for table in status_tables(answer):
        console.print(table)
    return 0


@cli.command("id")
@_app_dir_option
@_log_level_option
def id_(cwd: Path, log_level: str) -> int:
    """Print the node's peer id, creating its key (identity/node.key) if needed."""
    from .exceptions import IdentityError
    from .identity import KEY_FILE, Identity

    _setup_logging(log_level)
    try:
        identity = Identity.load_or_create(cwd / KEY_FILE)
    except IdentityError as exc:
        click.echo(f"trustp2p: error: {exc}", err=True)
        return 1
    click.echo(identity.peer_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    try:
        result = cli.main(args=argv, prog_name="trustp2p", standalone_mode=False)
    except KeyboardInterrupt:  # between click's handler and ours
        return 130
    except click.exceptions.Abort:
        return 130  # Ctrl-C (or end of input at a prompt): quietly, as shells expect
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    if isinstance(result, int):
        return result
    return 0
