"""
Framework cost per round trip (issue 11, goal 1): the CPU time trustp2p over ``tcp://``
spends per round trip beyond a raw asyncio TCP length-prefixed echo, measured in the
same run, on the server and on the client separately.

Run ``make bench-cost`` or ``.venv/bin/python benchmarks/framework_cost.py`` (Linux
only: it pins processes and reads ``/proc``); ``--quick`` for a short run, ``--json``
for JSON, ``--loop uvloop`` to run both on uvloop instead of asyncio's default loop.

The machinery is ``benchmarks/fast_path.py``'s (its docstring has the details): a server
process on CPU 0 that lives for the whole run, a fresh client process on CPU 1 per round,
CPU time of each side from ``/proc/<pid>/schedstat`` over a fixed window after a warm-up,
and the CPUs busy with anything else (``other``): a client run during which more than
``--max-other`` CPUs (0.3) were busy elsewhere is made again, three runs at most
(``--attempts``), and the quietest is kept. Two implementations, measured one after
the other in each round:

- *raw-tcp*, the reference: an ``asyncio.Protocol`` echo of 4-byte length-prefixed
  messages, each an encoded trustp2p REQUEST package with a 100-byte body; one write per
  message on both sides.
- *tcp*: trustp2p (``secure=False``, the plain protocol) with the ``tcp`` driver at both
  ends; the server's thread answers ``echo`` with the request's body, the client awaits
  ``request()``.

Two modes: *pipelined* (100 requests in flight) and *sequential* (one). For each round
and side, the framework cost is tcp's CPU µs per round trip minus raw-tcp's in that
round; the table gives the median of the rounds' differences, their range, and the ratio
of the median rates. The goal (pipelined): at most 2.5 µs on the server, 3.5 µs on the
client.

"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from fast_path import MODES, check_installed, format_table, run_all
from request_response import QUIET, run_arguments

from trustp2p.loop import LOOPS

REFERENCE, OURS = "raw-tcp", "tcp"
SIDES = ("server", "client")
GOAL_US = {"server": 2.5, "client": 3.5}
"""The goal: CPU µs per pipelined round trip beyond the raw echo, per side."""
GOAL_MODE = "pipelined"


def cost_figures(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mode -> each side's cost (median, min, max of the per-round differences, and the
    two medians it comes from), the rate ratio, the worst noise and the verdict."""
    figures: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        raw, ours = run["rounds"][REFERENCE][mode], run["rounds"][OURS][mode]
        row: dict[str, Any] = {}
        for side in SIDES:
            key = f"{side}_cpu_us"
            costs = [o[key] - r[key] for r, o in zip(raw, ours, strict=True)]
            row[side] = {
                "cost_us": statistics.median(costs),
                "min_us": min(costs),
                "max_us": max(costs),
                "raw_us": statistics.median(r[key] for r in raw),
                "ours_us": statistics.median(o[key] for o in ours),
                "goal_us": GOAL_US[side],
                "met": statistics.median(costs) <= GOAL_US[side],
            }
        row["rate_ratio"] = statistics.median(o["rate"] for o in ours) / statistics.median(
            r["rate"] for r in raw
        )
        row["other_cpus"] = max(f["other_cpus"] for f in (*raw, *ours))
        figures[mode] = row
    return figures


def _spread(cell: dict[str, Any]) -> str:
    return f"{cell['cost_us']:.1f} ({cell['min_us']:.1f} to {cell['max_us']:.1f})"


def format_cost(figures: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"Framework cost: {OURS} minus {REFERENCE}, CPU us per round trip "
        "(median of the rounds' differences, min to max)",
        "",
        f"{'mode':<12}{'server':>24}{'client':>24}{'rate ' + OURS + '/' + REFERENCE:>20}"
        f"{'other':>7}",
    ]
    for mode, row in figures.items():
        lines.append(
            f"{mode:<12}"
            + "".join(f"{_spread(row[side]):>24}" for side in SIDES)
            + f"{row['rate_ratio']:>20.2f}{row['other_cpus']:>7.2f}"
        )
    goal = figures[GOAL_MODE]
    lines += [
        "",
        f"Goal ({GOAL_MODE}): "
        + "; ".join(
            f"{side} <= {GOAL_US[side]:g} us: {'met' if goal[side]['met'] else 'missed'} "
            f"({goal[side]['cost_us']:.1f})"
            for side in SIDES
        ),
    ]
    worst = goal["other_cpus"]
    if worst > QUIET:
        lines.append(
            f"  (with up to {worst:.2f} CPU busy elsewhere: CPU times grow with the noise)"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    run_arguments(parser, rounds=5, warmup=0.5, duration=2.0, remeasure=True)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help="default: %(default)s")
    args = parser.parse_args(argv)
    check_installed(parser, args.loop, {OURS})
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.2, 0.5
        args.attempts = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = run_all(
        [REFERENCE, OURS],
        args.rounds,
        args.warmup,
        args.duration,
        args.loop,
        attempts=args.attempts,
        max_other=args.max_other,
    )
    figures = cost_figures(run)
    if args.json:
        print(json.dumps({**run, "cost": figures}, indent=2))
    else:
        print(format_table(run, REFERENCE) + "\n\n" + format_cost(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
