"""The ``trustp2p`` command."""

from __future__ import annotations

__all__ = ["main"]

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import click

from .exceptions import TrustP2PError
from .options import DEFAULT_PORT, NodeOptions
from .threads.loader import THREADS_AVAILABLE, THREADS_ENABLED

F = TypeVar("F", bound=Callable[..., Any])

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
    ("--heartbeat-timeout", "heartbeat_timeout", float, "Ping clients silent this long (s)."),
    (
        "--heartbeat-response-timeout",
        "heartbeat_response_timeout",
        float,
        "Close clients that don't answer a ping within this (s).",
    ),
    ("--response-timeout", "response_timeout", float, "Default request timeout (s)."),
    ("--stalled-timeout", "stalled_timeout", float, "Reroute stalled requests after (s)."),
    ("--reconnect-initial", "reconnect_initial", float, "First redial delay (s)."),
    ("--reconnect-max", "reconnect_max", float, "Largest redial delay (s)."),
    ("--close-timeout", "close_timeout", float, "Time allowed for a closing handshake (s)."),
    ("--handshake-timeout", "handshake_timeout", float, "Time allowed for the Noise handshake."),
    ("--target-outbound", "target_outbound", int, "Outbound connections to keep."),
    ("--max-per-ip", "max_per_ip", int, "Inbound connections at once from one address."),
    ("--exchange-interval", "exchange_interval", float, "Seconds between peer exchange rounds."),
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
    for flag, name, kind, text in reversed(_TUNING):
        f = click.option(
            flag,
            name,
            type=kind,
            default=None,
            help=f"{text}  [default: {getattr(defaults, name)}]",
        )(f)
    return f


def _cwd_option(f: F) -> F:
    return click.option(
        "--cwd",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("."),
        show_default=True,
        help="Directory holding threads-enabled/.",
    )(f)


def _run_node(log_level: str, **kwargs: Any) -> int:
    """Run a node until Ctrl-C or SIGTERM; return the exit code."""
    _setup_logging(log_level)
    options = {name: value for name, value in kwargs.items() if value is not None}
    try:
        node_options = NodeOptions.from_kwargs(**options)
    except (TypeError, ValueError, TrustP2PError) as exc:
        raise click.UsageError(str(exc)) from exc
    return asyncio.run(_serve(node_options))


async def _serve(options: NodeOptions) -> int:
    from .node import Node

    node = Node(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await node.start()
        except TrustP2PError as exc:
            click.echo(f"trustp2p: error: {exc}", err=True)
            return 1
        await stop.wait()
        await node.stop()
        return 0
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


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
    _setup_logging(log_level)
    available = directory / THREADS_AVAILABLE
    enabled = directory / THREADS_ENABLED
    available.mkdir(parents=True, exist_ok=True)
    enabled.mkdir(parents=True, exist_ok=True)
    target = available / "heartbeat.py"
    if target.exists():
        click.echo(f"{target} exists; left as it is")
    else:
        source = resources.files("trustp2p.threads").joinpath("heartbeat.py").read_text("utf-8")
        target.write_text(source, "utf-8")
        click.echo(f"wrote {target}")
    link = enabled / "heartbeat.py"
    if link.is_symlink() or link.exists():
        click.echo(f"{link} exists; left as it is")
    else:
        link.symlink_to(Path("..") / THREADS_AVAILABLE / "heartbeat.py")
        click.echo(f"enabled it: {link} -> ../{THREADS_AVAILABLE}/heartbeat.py")


@cli.command()
@_cwd_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port (0: any).")
@_tuning_options
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
    help="Seconds to run.",
)
@_log_level_option
def demo(nodes: int, duration: float, log_level: str) -> int:
    """Run a local network of NODES nodes on 127.0.0.1 with a live table.

    Node 0 is a server; the others are server and client at once, each dialling node 0
    and the node before it. All run the heartbeat thread, with short timings.
    """
    from .demo import run_demo

    _setup_logging(log_level if log_level != "info" else "warning")
    return asyncio.run(run_demo(nodes=nodes, duration=duration))


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
    import dataclasses
    import json

    from rich.console import Console
    from rich.table import Table

    from .identity import short_id
    from .peerstore import STORE_PATH

    _setup_logging(log_level)
    path = cwd / STORE_PATH
    # Listing doesn't create a store.
    records = asyncio.run(_read_peers(path)) if path.exists() else []
    if as_json:
        data = [{**dataclasses.asdict(record), "score": record.score} for record in records]
        click.echo(json.dumps(data, indent=2))
        return 0
    if not records:
        click.echo("no peers known yet")
        return 0
    table = Table("url", "peer id", "score", "last seen", "blocked until")
    for record in records:
        table.add_row(
            "\n".join(record.urls) or "-",
            short_id(record.peer_id) if record.peer_id is not None else "-",
            f"{record.score:.2f}",
            _utc(record.last_seen),
            _utc(record.blocked_until),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # don't wrap rows for scripts and pagers
    console.print(table)
    return 0


async def _read_peers(path: Path) -> list[Any]:
    from .peerstore import PeerStore

    store = await PeerStore.open(path)
    try:
        return await store.peers()
    finally:
        await store.close()


def _utc(timestamp: float | None) -> str:
    import datetime

    if timestamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@cli.command("id")
@_app_dir_option
@_log_level_option
def id_(cwd: Path, log_level: str) -> int:
    """Print the node's peer id, creating its key (identity/node.key) if needed."""
    from .identity import KEY_FILE, Identity, IdentityError

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
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    if isinstance(result, int):
        return result
    return 0
