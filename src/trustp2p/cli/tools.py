"""The commands that look at a node: peers, unblock, status, config, id."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from .base import (
    F,
    GroupedCommand,
    cli,
    dir_option,
    log_options,
    node_options,
    resolve_options,
    setup_cli_logging,
)

app_dir_option = dir_option("The node's application directory (it must exist).")


def node_name_option(f: F) -> F:
    return click.option(
        "--name",
        default="node",
        show_default=True,
        callback=_check_name,
        help="Which node of the directory: its --name, or node-2, node-3... for the second,"
        " third... started there without one (node: the first).",
    )(f)


def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..identity import is_node_name

    if not is_node_name(value):
        raise click.BadParameter("1 to 64 lowercase letters, digits, '-' and '_'", ctx, param)
    return value


@cli.command()
@app_dir_option
@node_name_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, for scripts.")
@click.option(
    "--forget",
    "forget",
    multiple=True,
    metavar="URL",
    help="Forget this URL, as listed (node stopped); repeatable.",
)
@log_options
def peers(cwd: Path, name: str, as_json: bool, forget: tuple[str, ...], log_level: str) -> int:
    """List the peers the node remembers (its peer store, data/peers.sqlite).

    The table shows each peer's URLs, short peer id, score, when it was last seen and
    until when it is blocked (UTC). --json prints every field of every peer. --forget
    URL removes a URL the node shouldn't dial again (one that never worked, say), with
    the node stopped: a running node keeps its peers in memory (exit 1).
    """
    import json

    from rich.console import Console

    from ..apps.peers import peers_json, peers_table, read_peers

    setup_cli_logging(log_level)
    others = _other_nodes(cwd, name)
    if others:  # (a tester's typo read as an empty store)
        click.echo(f"trustp2p: error: no node named {name!r} in {cwd} (known: {others})", err=True)
        return 1
    if forget:
        return _forget(cwd, name, forget)
    records = asyncio.run(read_peers(cwd, name))
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


def _forget(cwd: Path, name: str, urls: tuple[str, ...]) -> int:
    """``trustp2p peers --forget URL ...``: 0 if every URL was stored, else 1."""
    from ..apps.peers import forget_urls
    from ..identity import is_running

    if is_running(cwd, name):
        click.echo(f"trustp2p: error: the node {name!r} of {cwd} is running: stop it first"
                   " (it keeps its peers in memory)", err=True)  # fmt: skip
        return 1
    urls = tuple(dict.fromkeys(urls))  # (review50 R6: twice said only "not in the store")
    errors = asyncio.run(forget_urls(cwd, name, urls))
    for url in urls:
        if not any(error.startswith(f"{url} ") for error in errors):
            click.echo(f"forgot {url}")
    for error in errors:
        click.echo(f"trustp2p: error: {error}", err=True)
    return 1 if errors else 0


@cli.command()
@app_dir_option
@node_name_option
@click.option("--all", "everything", is_flag=True, help="Lift every block.")
@click.argument("keys", nargs=-1)
@log_options
def unblock(cwd: Path, name: str, everything: bool, keys: tuple[str, ...], log_level: str) -> int:
    """Lift blocks in a stopped node's peer store (data/peers.sqlite).

    KEYS are peer ids (or their first characters, as `trustp2p peers` shows them) and
    IP addresses (an IPv6 address lifts its /64's block). With neither KEYS nor --all,
    it lists the blocks in force. A block ends by itself after block_duration (1 h);
    this is for one that shouldn't wait, say after a bug in your own thread made the
    node block honest peers. The node must be stopped: a running node keeps its blocks
    in memory, so with it running this changes nothing and says so (exit 1).
    """
    from rich.console import Console
    from rich.table import Table

    from ..admin.client import add_plain_row
    from ..apps.peers import edit_blocks, utc
    from ..identity import is_running

    setup_cli_logging(log_level)
    if keys and everything:  # (found by a tester: accepted, the keys unread)
        click.echo("trustp2p: error: give KEYS or --all, not both", err=True)
        return 2
    if others := _other_nodes(cwd, name):
        click.echo(f"trustp2p: error: no node named {name!r} in {cwd} (known: {others})", err=True)
        return 1
    if (keys or everything) and is_running(cwd, name):
        click.echo(f"trustp2p: error: the node {name!r} of {cwd} is running: stop it first"
                   " (it keeps its blocks in memory)", err=True)  # fmt: skip
        return 1
    blocks, lifted, errors = asyncio.run(edit_blocks(cwd, name, keys, everything=everything))
    for kind, key, block in lifted:
        click.echo(f"unblocked {kind} {key} (blocked until {utc(block.until)}: {block.reason})")
    for error in errors:
        click.echo(f"trustp2p: error: {error}", err=True)
    if everything and not lifted:  # (found by a tester: --all said nothing)
        click.echo("no blocks in force")
    if keys or everything:
        return 1 if errors else 0
    if not blocks:
        click.echo("no blocks in force")
        return 0
    table = Table("kind", "peer id or address", "blocked until", "reason")
    for kind, key, block in blocks:
        add_plain_row(table, kind, key, utc(block.until), block.reason)
    console = Console()
    Console(width=None if console.is_terminal else 200).print(table)
    return 0


@cli.command()
@click.option(
    "--admin", "admin", required=True, help="The node's admin URL, HOST:PORT, or PORT (local)."
)
@click.option(
    "--token",
    default=None,
    envvar="TRUSTP2P_ADMIN_TOKEN",  # (tester40 F6: as the node reads it)
    show_envvar=True,
    help="The admin token, if the node has one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw status.json.")
def status(admin: str, token: str | None, as_json: bool) -> int:
    """Show a running node's status (its /status.json) through its admin listener."""
    import json
    import urllib.error

    from rich.console import Console

    from ..admin.client import fetch_status, status_tables, status_url, url_token

    try:
        answer = fetch_status(admin, token=token)
    except (OSError, ValueError) as exc:
        hint = ""
        code = getattr(exc, "code", None)  # urllib's HTTPError
        if code == 421:
            hint = " (without a token, give the admin address as 127.0.0.1 or localhost)"
        elif code == 426:  # a WebSocket listener
            hint = " (a peer listener: give the node's --admin HOST:PORT, not its --port)"
        elif code == 401 and token is None and url_token(admin) is None:  # (a tester)
            hint = " (the node's admin listener has a token: give it with --token)"
        elif code == 401:
            hint = " (not the node's admin token: its --admin-token, or TRUSTP2P_ADMIN_TOKEN)"
        elif admin.startswith("https://") and "SSL" in str(exc):  # (tester37 F7)
            hint = " (the admin listener speaks plain http://)"
        # (A tester: "<urlopen error [Errno 111] Connection refused>", not the URL tried.)
        plain = isinstance(exc, urllib.error.URLError) and code is None
        # A str: the exception kept in this frame would hold its traceback, and so
        # this frame (a cycle: an HTTPError's socket was closed by the GC, later).
        detail = str(exc.reason if plain else exc)  # type: ignore[union-attr]
        where = status_url(admin) if not isinstance(exc, ValueError) else admin
        click.echo(f"trustp2p: error: can't get the status from {where}: {detail}{hint}", err=True)
        return 1
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return 0
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # don't wrap rows for scripts and pagers
    try:
        tables = status_tables(answer)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, OSError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        click.echo(
            f"trustp2p: error: {admin} answered JSON that isn't a trustp2p node's status"
            f" ({why}); --json prints it as it is",
            err=True,
        )
        return 1
    for table in tables:
        console.print(table)
    return 0


def _other_nodes(cwd: Path, name: str) -> str:
    """The names of the other nodes of ``cwd``, if ``name`` has no key there yet."""
    from ..identity import key_path

    path = key_path(cwd, name)
    if path.exists():
        return ""
    return ", ".join(sorted(p.stem for p in path.parent.glob(f"*{path.suffix}")))


_SECRETS = frozenset({"admin_token"})
_SECRET = "(set, not shown)"


@cli.command("config", cls=GroupedCommand)
@app_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object, for scripts.")
@node_options
def config_(cwd: Path, as_json: bool, log_level: str, loop: str, **kwargs: Any) -> int:
    """Print each node option's effective value and where it came from.

    Sources, the first found winning: a flag on the command line, a TRUSTP2P_<NAME>
    environment variable, <cwd>/trustp2p.toml, the default. It takes the flags of
    `trustp2p node`: put `config` in place of `server`, `client` or `node` in a command
    line to see what it runs with. An unknown key in the file or the environment is an
    error (exit 2), as is a value a node would refuse to start with.
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from ..admin.client import add_plain_row

    # The checks a node's start makes (ranges, choices, what goes together), as a node
    # with both roles: what this prints, `trustp2p node` would run with.
    _, settings = resolve_options(cwd, kwargs, server=True, client=True)
    # A secret isn't printed (this output goes into tickets: a tester): only that it is set.
    shown = {
        name: _SECRET if name in _SECRETS and setting.value else setting.value
        for name, setting in settings.items()
    }
    if as_json:
        rows = {
            name: {"value": shown[name], "source": s.source.value} for name, s in settings.items()
        }
        click.echo(json.dumps(rows, indent=2, default=list))
        return 0
    table = Table("option", "value", "source", "from", box=None)
    for setting in settings.values():
        value = shown[setting.name]
        values = (setting.name, value if value is _SECRET else repr(value), setting.source.value,
                  setting.origin)  # fmt: skip
        add_plain_row(table, *values)
    Console(width=None if sys.stdout.isatty() else 200).print(table)
    return 0


@cli.command("id")
@app_dir_option
@node_name_option
@log_options
def id_(cwd: Path, name: str, log_level: str) -> int:
    """Print the node's peer id, creating its key (identity/node.key) if needed."""
    from ..exceptions import IdentityError
    from ..identity import Identity, key_path

    setup_cli_logging(log_level)
    if others := _other_nodes(cwd, name):  # (a tester's typo printed a new, wrong id)
        click.echo(f"trustp2p: no node named {name!r} in {cwd} yet (known: {others}): "
                   "its key is made now", err=True)  # fmt: skip
    try:
        identity = Identity.load_or_create(key_path(cwd, name))
    except IdentityError as exc:
        click.echo(f"trustp2p: error: {exc}", err=True)
        return 1
    click.echo(identity.peer_id)
    return 0
