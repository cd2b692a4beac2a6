"""
Latency under load (issue 11, goal 5): the round trip of a sequential request while
another connection sends 5,000 requests/s to the same server; trustp2p plain, trustp2p
secure and bare ``websockets``.

Run ``make bench-latency`` or ``.venv/bin/python benchmarks/latency_load.py`` (Linux
only: it pins processes and reads ``/proc``); ``--quick`` for a short run, ``--json`` for
JSON.

Layout. The servers are ``benchmarks/request_response.py``'s (``--role server``), on
CPU 0, one per implementation, living for the whole run: *baseline*, a ``websockets``
echo; *ours*, a trustp2p server node (``secure=False``) whose thread answers ``echo``
with the request's body; *secure*, the same over the Noise channel. Two client processes
on CPU 1 (the machine has two cores), this script again with ``--role``:

- *load*: one ``websockets`` connection (``compression=None``) sending encoded trustp2p
  REQUEST packages with 100-byte bodies, each with its own counter, on a fixed schedule:
  request *n* is due at ``start + n / rate``; the process blocks in ``time.sleep`` until
  then (the event loop's timers have 1 ms steps, which would send bursts of five), sends
  it, and lets the loop read the answers; a late one goes out at once, none is skipped.
  To the trustp2p servers it is a trustp2p peer: it sends the ``version`` talk first
  (plain), or runs the Noise handshake and ``hello`` and seals every package (secure);
  it reads and counts the RESPONSE packages (secure: after opening them). The same
  client for all three servers, so that what it costs on CPU 1 is alike. It reports
  what it actually sent and what was answered, over its whole run: the achieved load.
- *probe*: one connection sending one request at a time, every ``--interval`` (5 ms)
  on a fixed schedule (at once if the previous answer came later), and timing each
  round trip from before the send to the answer (``time.perf_counter_ns``). For ours
  and secure it is a trustp2p client node (``create_client``, ``await request(...)``),
  for the baseline a ``websockets`` client sending the same package's bytes and
  awaiting ``recv()``. It warms up, then records for ``--duration`` seconds, and reads
  the CPU time of the server, itself and the load process (all their threads,
  ``/proc/<pid>/task/*/schedstat``) and of the machine (``/proc/stat``; ``other`` is the
  CPUs busy with anything else).

Each round measures every implementation at every load rate (``--rates``, default 0
and 5000 requests/s: without load, then under it), one after the other. A measurement
during which more than ``--max-other`` CPUs (0.3) were busy outside the three processes
is made again, three attempts at most (``--attempts``), and the quietest is kept; its
``other`` is in the table. The table gives
p50, p90 and p99 of all the rounds' samples together, the range of the rounds' p90s,
the achieved load, and the CPU share of the server, the load and the rest of the
machine. The ratios of p90s are taken per round (the implementations of one round are
measured a minute apart at most, under much the same noise), then their median; the
ratio of the pooled p90s is given too. The goal: under 5,000 requests/s, ours' p90 at
most 1.5 times the baseline's.

"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import itertools
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from request_response import (
    _child,
    _expect_line,
    _machine_cpu,
    _pin,
    _print_line,
    _progress,
    _secure_handshake,
    _server,
    machine_facts,
    make_body,
    request_bytes,
    run_arguments,
    source_facts,
)
from websockets.asyncio.client import ClientConnection, connect

import trustp2p
from trustp2p import PackageType
from trustp2p.protocol.handshake import VERSION_EVENT, version_body
from trustp2p.protocol.package import build_package, decode, encode
from trustp2p.security.noise import NoiseTransport

IMPLS = ("baseline", "ours", "secure")
SERVER_CPU, CLIENT_CPU = 0, 1
GOAL = 1.5
"""Goal 5: ours' p90 under load at most this many times the baseline's."""
RATIOS = (("ours", "baseline"), ("secure", "baseline"))
PERCENTILES = (50, 90, 99)


def process_cpu(pid: int | str) -> float:
    """CPU seconds of all a process's threads (``/proc/<pid>/task/*/schedstat``)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError), open(path) as schedstat:
            total += int(schedstat.read().split()[0])
    return total / 1e9


# The load


def _sleep_until(due: float) -> None:
    """Block until ``time.monotonic()`` reaches ``due``: finer than the event loop's
    timers (1 ms with epoll)."""
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)


async def _open(impl: str, url: str) -> tuple[ClientConnection, NoiseTransport | None]:
    """A ``websockets`` connection that the ``impl`` server takes for a trustp2p peer."""
    ws = await connect(url, compression=None)
    if impl == "secure":
        return ws, await _secure_handshake(ws)
    if impl == "ours":
        version = version_body(library_version=trustp2p.__version__)
        await ws.send(encode(build_package(PackageType.TALK, VERSION_EVENT, version)))
    return ws, None


async def run_load(impl: str, url: str, rate: float) -> None:
    """Print ``ready`` once connected, send ``rate`` requests a second on a fixed
    schedule until stdin closes, then print what was sent and answered as JSON."""
    ws, transport = await _open(impl, url)
    answered = 0

    # The answers: RESPONSE packages, or the baseline's echo of the REQUEST; decoded in
    # every case, so that the load costs its CPU alike whichever server it loads.
    answer = PackageType.REQUEST if impl == "baseline" else PackageType.RESPONSE

    async def receive() -> None:
        nonlocal answered
        async for message in ws:
            assert isinstance(message, bytes)
            for data in transport.open(message, max_size=None) if transport else [message]:
                if decode(data).type == answer:
                    answered += 1

    receiver = asyncio.create_task(receive())
    _print_line("ready")
    stdin_closed = asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    start, interval = time.monotonic(), 1 / rate
    sent = 0
    while not stdin_closed.done():
        # Request number ``sent`` is due at start + sent * interval. The loop blocks
        # until then (nothing else to do: answers wait in the socket, and are read at
        # the sleep(0) below); a late one goes at once, none is skipped.
        _sleep_until(start + sent * interval)
        data = encode(build_package(PackageType.REQUEST, "echo", make_body(sent)))
        for message in transport.seal(data) if transport else (data,):
            await ws.send(message)
        sent += 1
        await asyncio.sleep(0)
    seconds = time.monotonic() - start
    for _ in range(100):  # the last answers in, before closing (1 s at most)
        if answered >= sent:
            break
        await asyncio.sleep(0.01)
    counts = {"sent": sent, "answered": answered, "seconds": seconds, "rate": sent / seconds}
    receiver.cancel()
    await ws.close()
    _print_line(json.dumps(counts))


# The probe


@contextlib.asynccontextmanager
async def _requester(impl: str, url: str) -> AsyncIterator[Callable[[int], Awaitable[object]]]:
    """What sends request number ``n`` and awaits its answer, for ``impl``."""
    if impl == "baseline":
        message = request_bytes()
        async with connect(url, compression=None) as ws:

            async def echo(n: int) -> object:
                await ws.send(message)
                return await ws.recv()

            yield echo
        return
    node = await trustp2p.create_client(peers=[url], secure=impl == "secure")
    try:
        assert node.client is not None
        await asyncio.wait_for(node.client.wait_connected(), 10)
        socket = node.client.sockets[0]
        request = node.client.request

        async def ours(n: int) -> object:
            return await request(socket, "echo", make_body(n))

        yield ours
    finally:
        await node.stop()


async def _probe(
    send: Callable[[int], Awaitable[object]],
    numbers: itertools.count[int],
    seconds: float,
    interval: float,
) -> list[float]:
    """Round trips, in µs, of requests every ``interval`` for ``seconds``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    latencies = []
    for sent in itertools.count(1):
        before = time.perf_counter_ns()
        await send(next(numbers))
        latencies.append((time.perf_counter_ns() - before) / 1e3)
        now = loop.time()
        if now >= start + seconds:
            return latencies
        if start + sent * interval > now:
            await asyncio.sleep(start + sent * interval - now)
    raise AssertionError("unreachable")


async def run_probe(args: argparse.Namespace) -> None:
    """Warm up, then time requests for ``args.duration``; print the figures as JSON."""
    pids = {"server": args.server_pid, "probe": "self", "load": args.load_pid}
    numbers = itertools.count()
    async with _requester(args.impl, args.url) as send:
        await _probe(send, numbers, args.warmup, args.interval)
        cpu = {name: process_cpu(pid) for name, pid in pids.items() if pid}
        machine, wall = _machine_cpu(), time.monotonic()
        latencies = await _probe(send, numbers, args.duration, args.interval)
        wall = time.monotonic() - wall
        busy, steal, total = (b - a for a, b in zip(machine, _machine_cpu(), strict=True))
        cpus = {f"{name}_cpus": (process_cpu(pids[name]) - cpu[name]) / wall for name in cpu}
    figures = {
        **cpus,
        "other_cpus": max(0.0, busy / wall - sum(cpus.values())),
        "steal": steal / total if total else 0.0,
        "latencies_us": latencies,
    }
    _print_line(json.dumps(figures))


# The orchestrator


def measure(impl: str, url: str, server_pid: int, rate: float, args: argparse.Namespace) -> Any:
    """One probe run against ``impl``'s server with ``rate`` requests/s of load."""
    script = __file__
    common = ["--impl", impl, "--url", url, "--cpu", str(CLIENT_CPU)]
    load = None
    if rate:
        load = _child("--role", "load", *common, "--rate", str(rate), stdin=True, script=script)
        if _expect_line(load) != "ready":
            raise RuntimeError("the load process misbehaved")
    try:
        probe = _child(
            "--role", "probe", *common, "--server-pid", str(server_pid),
            "--load-pid", str(load.pid if load else 0), "--warmup", str(args.warmup),
            "--duration", str(args.duration), "--interval", str(args.interval), script=script,
        )  # fmt: skip
        figures = json.loads(_expect_line(probe))
        if probe.wait():
            raise RuntimeError(f"the probe exited with code {probe.returncode}")
    finally:
        if load is not None:
            assert load.stdin is not None
            load.stdin.close()
    if load is not None:
        figures["load"] = json.loads(_expect_line(load))
        load.wait()
    return figures


def _measure_quietly(impl: str, server: tuple[str, int], rate: float, args: Any) -> Any:
    """``measure``, again (``args.attempts`` times at most) while more than
    ``args.max_other`` CPUs were busy with other work; the quietest attempt."""
    attempts = []
    for _ in range(args.attempts):
        figures = measure(impl, *server, rate, args)
        attempts.append(figures)
        p50, p90, p99 = percentiles(figures["latencies_us"])
        load = figures.get("load", {"rate": 0.0})
        _progress(
            f"  {impl:<8} load {load['rate']:>6,.0f}/s: p50 {p50:,.0f} p90 {p90:,.0f} "
            f"p99 {p99:,.0f} us (other {figures['other_cpus']:.2f} CPU)"
        )
        if figures["other_cpus"] <= args.max_other:
            break
    quietest = min(attempts, key=lambda figures: figures["other_cpus"])
    quietest["attempts"] = len(attempts)
    return quietest


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every implementation at every rate, ``args.rounds`` times, interleaved."""
    rounds: dict[str, dict[str, list[Any]]] = {
        impl: {str(rate): [] for rate in args.rates} for impl in args.impls
    }
    with contextlib.ExitStack() as stack:
        servers = {impl: stack.enter_context(_server(impl, SERVER_CPU)) for impl in args.impls}
        for number in range(1, args.rounds + 1):
            _progress(f"round {number}/{args.rounds}")
            for impl in args.impls:
                for rate in args.rates:
                    figures = _measure_quietly(impl, servers[impl], rate, args)
                    rounds[impl][str(rate)].append(figures)
    keys = ("rounds", "warmup", "duration", "interval", "rates", "max_other", "attempts")
    return {
        "machine": machine_facts(),
        "source": source_facts(),
        "settings": {key: getattr(args, key) for key in keys},
        "rounds": rounds,
    }


def percentiles(samples: list[float]) -> list[float]:
    """p50, p90 and p99 of ``samples``."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return [cuts[p - 1] for p in PERCENTILES]


def named_percentiles(samples: list[float]) -> dict[str, float]:
    """``p50_us``, ``p90_us`` and ``p99_us`` of ``samples``, and how many there are."""
    named = {f"p{p}_us": value for p, value in zip(PERCENTILES, percentiles(samples), strict=True)}
    return {**named, "samples": len(samples)}


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """impl -> rate -> the pooled percentiles and medians of the rounds; and the ratios of
    the p90s at each rate."""
    table: dict[str, Any] = {}
    for impl, rates in run["rounds"].items():
        table[impl] = {}
        for rate, measured in rates.items():
            pooled = [s for figures in measured for s in figures["latencies_us"]]
            p90s = [percentiles(figures["latencies_us"])[1] for figures in measured]
            row = named_percentiles(pooled) | {"p90_rounds_us": p90s}
            for key in ("server_cpus", "load_cpus", "probe_cpus"):
                row[key] = statistics.median(f.get(key, 0.0) for f in measured)
            row["other_cpus"] = max(f["other_cpus"] for f in measured)
            loads = [f["load"] for f in measured if "load" in f]
            row["load_rate"] = statistics.median(x["rate"] for x in loads) if loads else 0.0
            sent = sum(x["sent"] for x in loads)
            row["answered"] = sum(x["answered"] for x in loads) / sent if sent else 1.0
            table[impl][rate] = row
    ratios = {
        rate: {
            f"{a}/{b}": _ratio(table[a][rate], table[b][rate])
            for a, b in RATIOS
            if a in table and b in table
        }
        for rate in next(iter(table.values()))
    }
    return {"table": table, "p90_ratios": ratios}


def _ratio(ours: dict[str, Any], reference: dict[str, Any]) -> dict[str, float]:
    """The ratio of two p90s: each round's (measured minutes apart at most, under the
    same noise), their median and range, and that of the pooled samples."""
    paired = [a / b for a, b in zip(ours["p90_rounds_us"], reference["p90_rounds_us"], strict=True)]
    return {
        "median": statistics.median(paired),
        "min": min(paired),
        "max": max(paired),
        "pooled": ours["p90_us"] / reference["p90_us"],
    }


def _noisy(run: dict[str, Any], rate: str) -> tuple[int, int]:
    """How many of the ours and baseline measurements at ``rate`` were noisy, of how many."""
    kept = [f for impl in ("ours", "baseline") for f in run["rounds"].get(impl, {}).get(rate, [])]
    limit = run["settings"].get("max_other", 0.3)
    return sum(f["other_cpus"] > limit for f in kept), len(kept)


def format_table(run: dict[str, Any], summary: dict[str, Any]) -> str:
    machine, settings = run["machine"], run["settings"]
    lines = [
        f"{machine['cpu']}; Python {machine['python']}, websockets {machine['websockets']}; "
        f"trustp2p at {run['source']['commit']} (src/ sha256 {run['source']['src_sha256']}),"
        f" {machine.get('trustp2p_build', 'pure Python')}",
        f"{settings['rounds']} rounds of {settings['duration']:g} s, a probe every "
        f"{settings['interval'] * 1e3:g} ms; server on CPU {SERVER_CPU}, load and probe on "
        f"CPU {CLIENT_CPU}; round trip in us, all rounds' samples together",
        "",
        f"{'impl':<10}{'load/s':>8}{'achieved':>10}{'samples':>9}{'p50':>7}{'p90':>7}{'p99':>7}"
        f"{'p90 rounds':>16}{'server':>8}{'load':>6}{'other':>7}",
    ]
    for rate in map(str, settings["rates"]):
        for impl, rates in summary["table"].items():
            row = rates[rate]
            spread = f"{min(row['p90_rounds_us']):,.0f}-{max(row['p90_rounds_us']):,.0f}"
            lines.append(
                f"{impl:<10}{float(rate):>8,.0f}{row['load_rate']:>10,.0f}{row['samples']:>9}"
                + "".join(f"{row[f'p{p}_us']:>7,.0f}" for p in PERCENTILES)
                + f"{spread:>16}{row['server_cpus']:>8.2f}{row['load_cpus']:>6.2f}"
                f"{row['other_cpus']:>7.2f}"
            )
    lines += ["", "(server, load, other: CPUs busy; load requests answered: "
              + ", ".join(f"{impl} {rates[str(max(settings['rates']))]['answered']:.1%}"
                          for impl, rates in summary["table"].items()) + ")", ""]  # fmt: skip
    lines.append("p90 ratios, median of the rounds' ratios (min-max; of the pooled samples):")
    for rate, ratios in summary["p90_ratios"].items():
        lines.append(
            f"  {float(rate):,.0f} requests/s of load: "
            + ", ".join(
                f"{name} {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f}; {r['pooled']:.2f}x)"
                for name, r in ratios.items()
            )
        )
    top = summary["p90_ratios"][str(max(settings["rates"]))]
    if "ours/baseline" in top:
        verdict = "met" if top["ours/baseline"]["median"] <= GOAL else "missed"
        lines.append(f"Goal: ours/baseline p90 <= {GOAL}x under load: {verdict}")
        noisy, total = _noisy(run, str(max(settings["rates"])))
        if noisy:
            lines.append(
                f"  but {noisy} of {total} of those measurements had more than "
                f"{settings.get('max_other', 0.3):g} CPU busy elsewhere: not conclusive"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    run_arguments(parser, rounds=3, warmup=1.0, duration=5.0, remeasure=True)
    parser.add_argument("--interval", type=float, default=0.005, help="seconds between probes")
    parser.add_argument("--rates", default="0,5000", help="loads, requests/s: %(default)s")
    parser.add_argument("--impls", default=",".join(IMPLS), help="of: %(default)s")
    single = parser.add_argument_group("one process (the orchestrator starts these)")
    single.add_argument("--role", choices=("load", "probe"))
    single.add_argument("--impl", choices=IMPLS, default="ours")
    single.add_argument("--url")
    single.add_argument("--cpu", type=int, help="pin this process to one CPU")
    single.add_argument("--rate", type=float, default=5000.0, help="load: requests/s")
    single.add_argument("--server-pid", type=int, help="probe: for the server's CPU time")
    single.add_argument("--load-pid", type=int, default=0, help="probe: for the load's")
    args = parser.parse_args(argv)
    args.rates = [int(rate) for rate in args.rates.split(",")]
    chosen = set(args.impls.split(","))
    if not chosen <= set(IMPLS):
        parser.error(f"--impls takes {', '.join(IMPLS)}")
    args.impls = [impl for impl in IMPLS if impl in chosen]
    if args.role and args.url is None:
        parser.error(f"--role {args.role} needs --url")
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.3, 1.0
        args.attempts = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _pin(args.cpu)
    if args.role == "load":
        asyncio.run(run_load(args.impl, args.url, args.rate))
    elif args.role == "probe":
        asyncio.run(run_probe(args))
    else:
        run = run_all(args)
        summary = summarise(run)
        if args.json:
            for rates in run["rounds"].values():
                for measured in rates.values():
                    for figures in measured:  # each round's percentiles, not every sample
                        figures.update(named_percentiles(figures.pop("latencies_us")))
            print(json.dumps({**run, **summary}, indent=2))
        else:
            print(format_table(run, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
