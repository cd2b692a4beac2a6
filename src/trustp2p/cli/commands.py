"""The commands that run nodes: init, server, client, node, demo, simulate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .base import (
    LOG_LEVELS,
    F,
    GroupedCommand,
    cli,
    cwd_option,
    fast_options,
    listen_options,
    log_options,
    node_options,
    run_node,
    run_on_loop,
    setup_cli_logging,
    tuning_options,
)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@log_options
def init(directory: Path, log_level: str) -> None:
    """Make DIRECTORY an application directory with the heartbeat thread enabled."""
    from ..apps.appdir import init_app_dir

    setup_cli_logging(log_level)
    for line in init_app_dir(directory):
        click.echo(line)


@cli.command(cls=GroupedCommand)
@cwd_option
@listen_options
@tuning_options("server")
@fast_options(driver=True)
@log_options
def server(**kwargs: Any) -> int:
    """Run a node that accepts peers."""
    return run_node(server=True, **kwargs)


@cli.command(cls=GroupedCommand)
@cwd_option
@click.option(
    "--connect",
    "peers",
    multiple=True,
    metavar="URL",
    help="Server to dial, e.g. ws://127.0.0.1:1107; repeat for several (or `peers` in "
    "trustp2p.toml, TRUSTP2P_PEERS). At least one.",
)
@tuning_options("client")
@fast_options(driver=True)
@log_options
def client(**kwargs: Any) -> int:
    """Run a node that dials servers."""
    return run_node(client=True, **kwargs)


@cli.command(cls=GroupedCommand)
@cwd_option
@node_options
def node(**kwargs: Any) -> int:
    """Run a node that both accepts peers and dials servers."""
    return run_node(server=True, client=True, **kwargs)


_DEMO_MIN_RUN = 2.0  # seconds of the demo's schedule at --speed 1


@cli.command()
@click.option("--nodes", type=click.IntRange(2, 50), default=5, show_default=True)
@click.option(
    "--duration",
    type=click.FloatRange(min=0.5),
    default=20.0,
    show_default=True,
    help="Seconds to run (then up to 5 s more for the last chat messages); at least 2 "
    "at --speed 1 (its stop, restart and catch-up need them).",
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
@fast_options()
@log_options
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
    from ..apps.demo import run_demo

    # (Found by a tester: --duration 1 was taken, and always ended "NOT healthy".)
    if duration * speed < _DEMO_MIN_RUN:
        raise click.UsageError(
            f"--duration {duration:g} at --speed {speed:g} is too short for the demo's stop, "
            f"restart and catch-up: give --duration {_DEMO_MIN_RUN / speed:g} or more"
        )
    setup_cli_logging(log_level if log_level != "info" else "warning")
    return run_on_loop(run_demo(nodes=nodes, duration=duration, speed=speed, restart=restart), loop)


def _check_plot(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A missing extra is a usage error (exit status 2), as ``--loop uvloop``'s is; it
    was exit status 1 (tester47 F6). Checked before the simulation runs."""
    if value is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            from ..apps.simulate import PLOT_MISSING

            raise click.UsageError(PLOT_MISSING, ctx) from None
    return value


SIMULATION_OPTIONS = [
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
        "--workers",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="Processes to spread the nodes over, connected over tcp:// on 127.0.0.1 "
        "(1: every node in this process, on the memory driver; no churn nor partition "
        "with more).",
    ),
    click.option(
        "--plot",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        metavar="FILE.png",
        callback=_check_plot,
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


def simulation_options(f: F) -> F:
    for option in reversed(SIMULATION_OPTIONS):
        f = option(f)
    return f


@cli.command()
@simulation_options
@fast_options()
def simulate(plot: Path | None, as_json: bool, log_level: str, loop: str, **kwargs: Any) -> int:
    """Simulate a network of NODES in-process nodes and measure its gossip.

    Nodes run in this process on the memory driver, or with --workers N in N worker
    processes on tcp:// over 127.0.0.1. Once they are connected, MESSAGES
    messages are published at RATE from random live nodes; --churn kills and restarts
    nodes meanwhile, --partition-at cuts the network in two for a while. Reports
    coverage, time to full coverage (p50/p99), duplicates and bytes per message, and
    catch-up after the heal or a restart. Exit code 0 when every live node delivered
    every message exactly once and in per-origin order.
    """
    import json

    from ..apps.simulate import (
        Simulation,
        plot_report,
        print_report,
        simulate_with_progress,
        to_json,
    )
    from ..exceptions import UsageError, WorkerError

    setup_cli_logging(log_level)
    try:
        sim = Simulation(**kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        report = run_on_loop(simulate_with_progress(sim), loop)
    except (TimeoutError, WorkerError, UsageError) as exc:
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
