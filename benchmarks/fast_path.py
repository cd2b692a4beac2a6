"""
The fast path (issue 11, goal 2): trustp2p on uvloop with the picows driver, against a
raw length-prefixed TCP echo on uvloop, pipelined 100-byte requests over one connection.

Run ``.venv/bin/python benchmarks/fast_path.py`` (Linux only: it pins processes with
:func:`os.sched_setaffinity` and reads ``/proc``); ``--quick`` for a short run,
``--json`` for JSON. Needs ``trustp2p[fast]``.

Layout: server on CPU 0, client on CPU 1, each a process of its own (this script again
with ``--role``). Implementations, each a server that lives for the whole run and a
fresh client process per round, rounds interleaved:

- *raw-uvloop-tcp*: the reference. An ``asyncio.Protocol`` on uvloop whose messages
  are a 4-byte big-endian length and the bytes of an encoded trustp2p REQUEST package
  with a 100-byte body (the same size as ours). The server parses each message and
  writes its echo: one ``transport.write`` per response. The client keeps 100 in
  flight (sequential: 1), parses each response and writes the next request.
- *raw-batched*: the same, but the responses to one read go out in one write, and the
  client's next requests too: an upper bound, not something a request/response
  framework can do without knowing what comes next.
- *picows*: trustp2p (``secure=False``, the plain protocol) with ``driver="picows"`` on
  uvloop, both ends; the server thread answers ``echo`` with the request's body, the
  client runs 100 tasks each looping on ``await request(...)`` (sequential: 1).
- *ws-uvloop*: the same with the default ``ws`` driver, on uvloop: what the driver
  changes.
- *picows-secure*: *picows* over the Noise channel (``secure=True``); not by default.
- *raw-tcp* and *tcp*: the raw echo (as *raw-uvloop-tcp*) and trustp2p with the ``tcp``
  driver, on the loop ``--loop`` names (``uvloop`` by default, or ``asyncio``); not by
  default: ``benchmarks/framework_cost.py`` runs them on asyncio's loop (issue 11, goal 1).

Each measurement warms up, then counts round trips over a fixed window and reads the
CPU time of both processes (``/proc/<pid>/schedstat``) and of the machine (``/proc/stat``,
to show how busy the machine was with other work: the ``other`` column). The table gives
the median of the rounds, their range, and each rate over raw-uvloop-tcp's.

"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib.metadata
import itertools
import json
import statistics
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from request_response import (
    NO_RATE_LIMIT,
    EchoThread,
    Figures,
    Snapshot,
    machine_facts,
    make_body,
    rate_figures,
    request_bytes,
    run_arguments,
    source_facts,
)

import trustp2p
from trustp2p.drivers import driver_class
from trustp2p.exceptions import DriverError, UsageError
from trustp2p.loop import LOOPS, loop_factory

OURS: dict[str, tuple[str, bool]] = {
    "picows": ("picows", False),
    "ws-uvloop": ("ws", False),
    "picows-secure": ("picows", True),
    "tcp": ("tcp", False),
}
"""trustp2p's implementations: name -> (driver, secure)."""
IMPLS = ("raw-uvloop-tcp", "raw-batched", "raw-tcp", *OURS)
DEFAULT_IMPLS = ("raw-uvloop-tcp", "raw-batched", "picows", "ws-uvloop")
REFERENCE = "raw-uvloop-tcp"
UVLOOP_ONLY = ("raw-uvloop-tcp", "ws-uvloop")
MODES = {"sequential": 1, "pipelined": 100}
SERVER_CPU, CLIENT_CPU = 0, 1
_LENGTH = struct.Struct(">I")


# The raw reference


class RawEcho(asyncio.Protocol):
    """Server: echo each length-prefixed message, one write each (``batched``: one
    write per read)."""

    batched = False

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's isn't a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        out: list[bytes] = []
        start = 0
        write = self.transport.write if self.transport is not None else out.append
        while len(buffer) - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            end = start + 4 + size
            if len(buffer) < end:
                break
            message = bytes(buffer[start + 4 : end])
            response = _LENGTH.pack(len(message)) + message
            if self.batched:
                out.append(response)
            else:
                write(response)
            start = end
        del buffer[:start]
        if out:
            write(b"".join(out))


class BatchedRawEcho(RawEcho):
    batched = True


class RawClient(asyncio.Protocol):
    """Client: count responses, send a request for each while running, one write each
    (``batched``: one write per read)."""

    batched = False

    def __init__(self, message: bytes, counter: Counter, depth: int) -> None:
        self.frame = _LENGTH.pack(len(message)) + message
        self.depth = depth
        self.counter = counter
        self.buffer = bytearray()
        self.in_flight = 0
        self.idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's isn't a subclass
        self.send(self.depth)

    def send(self, count: int) -> None:
        assert self.transport is not None
        self.in_flight += count
        self.transport.write(self.frame * count)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        start = done = 0
        while len(buffer) - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if len(buffer) < start + 4 + size:
                break
            if buffer[start + 4 : start + 4 + size] != self.frame[4:]:
                raise RuntimeError("unexpected answer")
            start += 4 + size
            done += 1
        del buffer[:start]
        self.in_flight -= done
        self.counter.done += done
        if self.counter.stop:
            if not self.in_flight and not self.idle.done():
                self.idle.set_result(None)
        elif self.batched:
            self.send(done)
        else:
            for _ in range(done):
                self.send(1)


class BatchedRawClient(RawClient):
    batched = True


RAW: dict[str, tuple[type[RawEcho], type[RawClient]]] = {
    "raw-uvloop-tcp": (RawEcho, RawClient),
    "raw-batched": (BatchedRawEcho, BatchedRawClient),
    "raw-tcp": (RawEcho, RawClient),  # on whichever loop --loop names
}


# Processes


@dataclass
class Counter:
    done: int = 0
    stop: bool = False


def _print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def run_server(impl: str) -> None:
    """Serve on 127.0.0.1, print the URL, and run until stdin closes."""
    if impl in RAW:
        server = await asyncio.get_running_loop().create_server(RAW[impl][0], "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        _print_line(f"tcp://127.0.0.1:{port}")
        await _until_stdin_closes()
        server.close()
        return
    driver, secure = OURS[impl]
    node = await trustp2p.create_server(
        port=0,
        threads=(EchoThread,),
        max_inbound=None,
        secure=secure,
        driver=driver,
        **NO_RATE_LIMIT,
    )
    try:
        assert node.url is not None
        _print_line(node.url)
        await _until_stdin_closes()
    finally:
        await node.stop()


async def _measure(counter: Counter, server_pid: int, warmup: float, duration: float) -> Figures:
    await asyncio.sleep(warmup)
    first = Snapshot.take(counter.done, server_pid)
    await asyncio.sleep(duration)
    last = Snapshot.take(counter.done, server_pid)
    counter.stop = True
    return rate_figures(first, last)


def _same(protocol: RawClient) -> RawClient:
    return protocol


async def _client_raw(impl: str, url: str, server_pid: int, warmup: float, duration: float) -> Any:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    loop = asyncio.get_running_loop()
    results = {}
    for mode, depth in MODES.items():
        counter = Counter()
        protocol = RAW[impl][1](request_bytes(), counter, depth)
        await loop.create_connection(functools.partial(_same, protocol), host, int(port))
        results[mode] = await _measure(counter, server_pid, warmup, duration)
        await protocol.idle
        assert protocol.transport is not None
        protocol.transport.close()
    return results


async def _client_ours(impl: str, url: str, server_pid: int, warmup: float, duration: float) -> Any:
    driver, secure = OURS[impl]
    node = await trustp2p.create_client(peers=[url], secure=secure, driver=driver)
    try:
        assert node.client is not None
        await asyncio.wait_for(node.client.wait_connected(), 10)
        socket = node.client.sockets[0]
        request = node.client.request
        numbers = itertools.count()
        if await request(socket, "echo", make_body(0), timeout=10) != make_body(0):
            raise RuntimeError("unexpected answer")

        async def loop(counter: Counter) -> None:
            while not counter.stop:
                await request(socket, "echo", make_body(next(numbers)))
                counter.done += 1

        results = {}
        for mode, depth in MODES.items():
            counter = Counter()
            tasks = [asyncio.ensure_future(loop(counter)) for _ in range(depth)]
            results[mode] = await _measure(counter, server_pid, warmup, duration)
            await asyncio.gather(*tasks)
        return results
    finally:
        await node.stop()


# The orchestrator


def _child(*args: str) -> subprocess.Popen[str]:
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"child {process.pid} exited with code {process.wait()}")
    return line.strip()


def _client_run(
    impl: str, url: str, server_pid: int, loop: str, warmup: float, duration: float
) -> dict[str, Figures]:
    """One client process's figures, by mode."""
    client = _child(
        "--role", "client", "--impl", impl, "--url", url, "--loop", loop,
        "--server-pid", str(server_pid), "--warmup", str(warmup), "--duration", str(duration),
    )  # fmt: skip
    figures: dict[str, Figures] = json.loads(_line(client))
    client.wait()
    return figures


def run_all(
    impls: list[str],
    rounds: int,
    warmup: float,
    duration: float,
    loop: str = "uvloop",
    *,
    attempts: int = 1,
    max_other: float = 0.3,
) -> dict[str, Any]:
    """Measure ``impls`` in interleaved rounds on the event loop ``loop``; every round's
    figures, and the facts of the machine and the source. A client run during which
    more than ``max_other`` CPUs were busy elsewhere is made again, ``attempts`` runs at
    most, and the quietest is kept."""
    servers = {impl: _child("--role", "server", "--impl", impl, "--loop", loop) for impl in impls}
    results: dict[str, dict[str, list[Figures]]] = {i: {m: [] for m in MODES} for i in impls}
    try:
        urls = {impl: _line(process) for impl, process in servers.items()}
        for number in range(1, rounds + 1):
            for impl in impls:
                tries = []
                for _ in range(attempts):
                    figures = _client_run(
                        impl, urls[impl], servers[impl].pid, loop, warmup, duration
                    )
                    tries.append(figures)
                    print(f"round {number}/{rounds} {impl:<15}" + "".join(
                        f" {mode} {figures[mode]['rate']:>9,.0f}/s"
                        f" (other {figures[mode]['other_cpus']:.2f} CPU)"
                        for mode in MODES
                    ), file=sys.stderr, flush=True)  # fmt: skip
                    if _noise(figures) <= max_other:
                        break
                figures = min(tries, key=_noise)
                for mode in MODES:
                    results[impl][mode].append(figures[mode])
    finally:
        for process in servers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=30)
    machine = machine_facts()
    if loop == "uvloop":
        machine["uvloop"] = importlib.metadata.version("uvloop")
    return {
        "machine": machine,
        "source": source_facts(),
        "settings": {
            "rounds": rounds,
            "warmup_s": warmup,
            "duration_s": duration,
            "loop": loop,
            "attempts": attempts,
            "max_other": max_other,
        },
        "rounds": results,
    }


def _noise(figures: dict[str, Figures]) -> float:
    return max(f["other_cpus"] for f in figures.values())


def format_table(run: dict[str, Any], reference: str = REFERENCE) -> str:
    """The medians of each implementation and mode, and their rates over ``reference``'s."""
    rounds = run["rounds"]
    machine = run["machine"]
    loop = run["settings"].get("loop", "uvloop")
    loop_name = f"uvloop {machine['uvloop']}" if loop == "uvloop" else "asyncio's loop"
    lines = [
        f"{machine['cpu']}; Python {machine['python']}, {loop_name}; "
        f"trustp2p at {run['source']['commit']} (src/ sha256 {run['source']['src_sha256']}),"
        f" {machine.get('trustp2p_build', 'pure Python')}",
        f"median of {run['settings']['rounds']} rounds of {run['settings']['duration_s']:g} s,"
        f" server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}; CPU us per round trip",
        "",
        f"{'impl':<16}{'mode':<12}{'round trips/s':>14} {'(min-max)':<19}{'server':>7}"
        f"{'client':>7}{'other':>7}{'/' + reference:>16}",
    ]
    for mode in MODES:
        ref_rounds = rounds.get(reference, {}).get(mode)
        ref_rate = statistics.median(f["rate"] for f in ref_rounds) if ref_rounds else None
        for impl, modes in rounds.items():
            figures = modes[mode]
            rate = statistics.median(f["rate"] for f in figures)
            rates = [f["rate"] for f in figures]

            def median(key: str, figures: list[Figures] = figures) -> float:
                return statistics.median(f[key] for f in figures)

            ratio = f"{rate / ref_rate:.2f}" if ref_rate else "-"
            lines.append(
                f"{impl:<16}{mode:<12}{rate:>14,.0f} ({min(rates):,.0f}-{max(rates):,.0f})".ljust(
                    61
                )
                + f"{median('server_cpu_us'):>6.1f}{median('client_cpu_us'):>7.1f}"
                f"{max(f['other_cpus'] for f in figures):>7.2f}{ratio:>16}"
            )
    return "\n".join(lines)


def check_installed(parser: argparse.ArgumentParser, loop: str, impls: set[str]) -> None:
    """Exit with one line (status 2, as trustp2p's commands) when ``loop`` or a driver of
    ``impls`` needs an extra that isn't installed; each child printed its traceback, and
    the parent a third (tester47 F5)."""
    try:
        loop_factory(loop)
        for impl in sorted(impls & set(OURS)):
            driver_class(OURS[impl][0])
    except (UsageError, DriverError) as exc:
        parser.error(str(exc))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    run_arguments(parser, rounds=5, warmup=0.5, duration=2.0)
    parser.add_argument("--impls", default=",".join(DEFAULT_IMPLS), help="of: " + ", ".join(IMPLS))
    parser.add_argument("--role", choices=("server", "client"), help="run only this process")
    parser.add_argument("--impl", choices=IMPLS, default="picows")
    parser.add_argument("--loop", choices=LOOPS, default="uvloop", help="%(default)s")
    parser.add_argument("--url")
    parser.add_argument("--server-pid", type=int)
    parser.add_argument("--modes", default=",".join(MODES), help="client: modes to measure")
    args = parser.parse_args(argv)
    args.impls = args.impls.split(",")
    for mode in set(MODES) - set(args.modes.split(",")):
        del MODES[mode]  # for a profile of one mode (see BENCHMARKS.md)
    if not set(args.impls) <= set(IMPLS):
        parser.error("--impls takes " + ", ".join(IMPLS))
    chosen = {args.impl} if args.role else set(args.impls)
    if args.loop != "uvloop" and chosen & set(UVLOOP_ONLY):
        parser.error(f"{' and '.join(UVLOOP_ONLY)} run on uvloop: --impls raw-tcp,... instead")
    check_installed(parser, args.loop, chosen)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.2, 0.5
    return args


def main(argv: list[str] | None = None) -> int:
    import os

    args = parse_args(argv)
    if args.role == "server":
        os.sched_setaffinity(0, {SERVER_CPU})
        trustp2p.run(run_server(args.impl), loop=args.loop)
    elif args.role == "client":
        os.sched_setaffinity(0, {CLIENT_CPU})
        if args.impl in RAW:
            main_ = _client_raw(args.impl, args.url, args.server_pid, args.warmup, args.duration)
        else:
            main_ = _client_ours(args.impl, args.url, args.server_pid, args.warmup, args.duration)
        _print_line(json.dumps(trustp2p.run(main_, loop=args.loop)))
    else:
        run = run_all(args.impls, args.rounds, args.warmup, args.duration, args.loop)
        reference = REFERENCE if REFERENCE in args.impls else "raw-tcp"
        print(json.dumps(run, indent=2) if args.json else format_table(run, reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
