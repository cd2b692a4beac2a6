"""
A simulation's propagation curves and duplicates histogram, drawn with matplotlib.

matplotlib is optional (``pip install 'trustp2p[plot]'``): it is imported when
:func:`plot_report` runs, never when this module is imported.

"""

from __future__ import annotations

__all__ = ["PLOT_MISSING", "plot_report"]

from pathlib import Path
from typing import Any

from .metrics import SimulationReport

PLOT_MISSING = "--plot needs matplotlib (trustp2p's plot extra): pip install matplotlib"


def plot_report(report: SimulationReport, path: Path) -> None:
    """
    Draw the propagation curves and the duplicates histogram into a PNG file.

    Args:
        report: The figures of a simulation.
        path: Where the PNG goes (1200 x 480 pixels).

    Raises:
        ImportError: If matplotlib is missing; the message is :data:`PLOT_MISSING`.

    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(PLOT_MISSING) from exc

    figure = Figure(figsize=(12, 4.8), layout="constrained")
    curves, histogram = figure.subplots(1, 2, width_ratios=[3, 2])
    _draw_curves(curves, report)
    _draw_histogram(histogram, report)
    figure.savefig(path, dpi=100)


def _draw_curves(axes: Any, report: SimulationReport) -> None:
    """Per message, the fraction of live nodes reached over time (log scale): a sample
    of messages faintly, the median and the p10-p90 band boldly."""
    import numpy as np

    sim = report.simulation
    live = max(1, report.live_nodes)
    delays = [d for d in report.delays if d]
    end = max((d[-1] for d in delays), default=1.0)
    grid = np.geomspace(1e-4, max(end * 1.05, 2e-4), 400)
    if delays:
        reached = np.array(
            [np.searchsorted(np.array(d), grid, side="right") / live for d in delays]
        )
        for row in reached[:: max(1, len(reached) // 30)]:
            axes.plot(grid, row, color="tab:blue", alpha=0.12, linewidth=0.8)
        low, median, high = np.percentile(reached, [10, 50, 90], axis=0)
        axes.fill_between(grid, low, high, color="tab:blue", alpha=0.25, label="p10-p90")
        axes.plot(grid, median, color="tab:blue", linewidth=2, label="median")
    axes.set_xscale("log")
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("time since publish (s)")
    axes.set_ylabel("fraction of live nodes reached")
    events = []
    if sim.churn:
        events.append(f"churn {sim.churn:g}")
    if sim.partition_at is not None:
        events.append(f"partition at {sim.partition_at:g} s for {sim.partition_for:g} s")
    axes.set_title(
        f"{sim.mode}: {sim.nodes} nodes, degree {sim.degree}, {report.published} messages"
        + (f" ({', '.join(events)})" if events else "")
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")


def _draw_histogram(axes: Any, report: SimulationReport) -> None:
    """How many nodes received how many duplicates per message, and the mean."""
    from matplotlib.ticker import MaxNLocator

    axes.hist(report.duplicates_by_node, bins=30, color="tab:orange")
    mean = report.duplicates_per_message_per_node
    axes.axvline(mean, color="black", linestyle="--", label=f"mean {mean:.2f}")
    axes.set_xlabel("duplicates received per message")
    axes.set_ylabel("nodes")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("duplicates per node")
    # Placed, not "best": matplotlib warns when searching takes over a second (a test
    # failed on a loaded machine, warnings being errors there).
    axes.legend(loc="upper right")
