"""A simulation's figures as JSON or as a table, and a progress bar while it runs."""

from __future__ import annotations

__all__ = ["print_report", "report_table", "simulate_with_progress", "to_json"]

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from .config import Simulation
from .metrics import SimulationReport
from .runner import simulate


def to_json(report: SimulationReport) -> dict[str, Any]:
    """Every figure of ``report`` and every parameter of its simulation, rounded, in a
    JSON-serialisable dict (times in seconds)."""
    sim = report.simulation
    publish_rate = report.published / report.publish_seconds if report.publish_seconds > 0 else None
    return {
        "nodes": sim.nodes,
        "degree": sim.degree,
        "mesh_degree": sim.mesh_degree,
        "mode": sim.mode,
        "messages": sim.messages,
        "rate": sim.rate,
        "churn": sim.churn,
        "partition_at": sim.partition_at,
        "partition_for": sim.partition_for if sim.partition_at is not None else None,
        "seed": sim.seed,
        "workers": sim.workers,
        "ok": report.ok,
        "problems": report.problems,
        "published": report.published,
        "publish_seconds": _round(report.publish_seconds),
        "publish_rate": _round(publish_rate),
        "settle_seconds": _round(report.settle_seconds),
        "wall_seconds": _round(report.wall_seconds),
        "live_nodes": report.live_nodes,
        "coverage": _round(report.coverage, 6),
        "reached_per_message": _rounded(report.reached_per_message, 6),
        "fully_covered_messages": _round(report.fully_covered, 6),
        "time_to_full_coverage": _rounded(report.time_to_full_coverage),
        "time_to_full_coverage_outside_partition": _rounded(
            report.time_to_full_coverage_outside_partition
        ),
        "duplicates_per_message_per_node": _round(report.duplicates_per_message_per_node),
        "duplicates_per_node": _rounded(report.duplicates_per_node),
        "copies_per_message_per_node": _round(report.copies_per_message_per_node),
        "redelivered": report.redelivered,
        "out_of_order": report.out_of_order,
        "bytes_total": report.bytes_total,
        "bytes_per_message": _round(report.bytes_per_message, 1),
        "message_package_bytes": report.message_package_bytes,
        "caught_up": report.caught_up,
        "after_heal": _rounded(report.partition),
        "after_restart": _rounded(report.churn),
        "peak_rss_mib": _per_process(report.peak_rss_mib),
        "cpu_seconds": _per_process(report.cpu_seconds),
    }


def _per_process(figures: dict[str, Any] | None) -> dict[str, Any] | None:
    if figures is None:
        return None
    return {
        "parent": _round(figures["parent"], 1),
        "workers": [_round(value, 1) for value in figures["workers"]],
        "total": _round(figures["total"], 1),
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _rounded(values: dict[str, Any] | None, digits: int = 4) -> dict[str, Any] | None:
    if values is None:
        return None
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in values.items()}


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _spread(values: dict[str, Any], *keys: str) -> str:
    return " / ".join(_seconds(values[key]) for key in keys)


def report_table(report: SimulationReport) -> Table:
    """The figures of ``report`` as a two-column table, ending with the verdict."""
    sim = report.simulation
    title = (
        f"{sim.mode}: {sim.nodes} nodes, degree {sim.degree}, "
        f"{_plural(report.published, 'message')} in {report.publish_seconds:.1f} s"
    )
    if sim.workers > 1:
        title += f", {sim.workers} worker processes over tcp://"
    table = Table("figure", "value", title=title, title_justify="left")
    for figure, value in (
        *_coverage_rows(report),
        *_traffic_rows(report),
        *_catch_up_rows(report),
    ):
        table.add_row(figure, value)
    table.add_row("verdict", "every live node has every message" if report.ok else "FAILED")
    return table


def _coverage_rows(report: SimulationReport) -> list[tuple[str, str]]:
    reached = report.reached_per_message
    rows = [
        ("live nodes at the end", str(report.live_nodes)),
        ("coverage ((node, message) pairs delivered)", f"{report.coverage:.4f}"),
        (
            "nodes reached per message (min / p50 / mean)",
            f"{reached['min']:.3f} / {reached['p50']:.3f} / {reached['mean']:.3f}",
        ),
        ("messages that reached every live node", f"{report.fully_covered:.3f}"),
        (
            "time to full coverage p50 / p99 / max",
            _spread(report.time_to_full_coverage, "p50", "p99", "max"),
        ),
    ]
    outside = report.time_to_full_coverage_outside_partition
    if outside is not None:
        rows.append(
            (
                "  of messages published outside the partition",
                _spread(outside, "p50", "p99", "max"),
            )
        )
    return rows


def _traffic_rows(report: SimulationReport) -> list[tuple[str, str]]:
    one_copy = f"(one copy: {report.message_package_bytes} bytes)"
    return [
        ("duplicates per message per node", f"{report.duplicates_per_message_per_node:.2f}"),
        ("copies received per message per node", f"{report.copies_per_message_per_node:.2f}"),
        ("bytes per message (all traffic)", f"{report.bytes_per_message:,.0f} {one_copy}"),
        ("messages obtained by catch-up", str(report.caught_up)),
        ("peak RSS (summed over processes)", _sum(report.peak_rss_mib, " MiB")),
        ("CPU time (summed over processes)", _sum(report.cpu_seconds, " s")),
    ]


def _sum(figures: dict[str, Any] | None, unit: str) -> str:
    if figures is None or figures["total"] is None:
        return "-"
    if not figures["workers"]:
        return f"{figures['total']:.0f}{unit}"
    workers = " + ".join(f"{v:.0f}" if v is not None else "?" for v in figures["workers"])
    return f"{figures['total']:.0f}{unit} (parent {figures['parent']:.0f} + workers {workers})"


def _catch_up_rows(report: SimulationReport) -> list[tuple[str, str]]:
    rows = []
    if report.partition is not None:
        part = report.partition
        rows += [
            (
                "after the heal: nodes with every message",
                f"{round(part['nodes_complete'] * part['nodes'])} of {part['nodes']} "
                f"({part['missing']} (node, message) pairs missing at the heal)",
            ),
            (
                "after the heal: catch-up time p50 / max",
                _spread(part, "seconds_p50", "seconds_max"),
            ),
        ]
    if report.churn is not None:
        churn = report.churn
        rows += [
            (
                "churn: restarted nodes with every message",
                f"{round(churn['nodes_complete'] * churn['restarted'])} of "
                f"{churn['restarted']} ({_plural(churn['missing'], 'message')} to catch up on)",
            ),
            ("churn: catch-up time p50 / max", _spread(churn, "seconds_p50", "seconds_max")),
        ]
    if report.redelivered:
        rows.append(("repeated deliveries", str(report.redelivered)))
    if report.out_of_order:
        rows.append(("deliveries out of per-origin order", str(report.out_of_order)))
    return rows


def print_report(report: SimulationReport, plot: Path | None = None) -> None:
    """Print :func:`report_table` on stdout (120 columns wide when it isn't a terminal),
    and where the plot went."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    console.print(report_table(report))
    if plot is not None:
        console.print(f"plot: {plot}")


async def simulate_with_progress(sim: Simulation) -> SimulationReport:
    """Run :func:`~trustp2p.apps.simulate.runner.simulate` with a progress bar on
    stderr, when stderr is a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        return await simulate(sim)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        publishing = bar.add_task("published", total=sim.messages)
        delivering = bar.add_task("delivered (node, message)", total=None)

        def progress(published: int, messages: int, delivered: int, expected: int) -> None:
            bar.update(publishing, completed=published)
            bar.update(delivering, completed=delivered, total=max(expected, 1))

        return await simulate(sim, progress=progress)


def _plural(count: int, noun: str) -> str:
    """``count`` and ``noun``, an s after it unless one (a tester: "1 messages")."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
