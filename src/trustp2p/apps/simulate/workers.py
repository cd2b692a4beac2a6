"""
A simulation spread over processes: ``simulate --workers N`` (:func:`simulate_workers`).

The parent (this process) plans the topology (:mod:`.plan`: the same links as a
one-process run with the same seed), starts N worker processes
(``python -m trustp2p.apps.simulate.worker``), each running a contiguous share of the
nodes on tcp:// over 127.0.0.1, and drives them over their stdin and stdout, one JSON
object a line (:mod:`.worker` lists the commands). The parent chooses the publishers
as the one-process runner does; the worker that holds the origin publishes. At the end
each worker sends every delivery of its nodes, and the parent measures them as one
network (:func:`~trustp2p.apps.simulate.metrics.measure`).

Clock: ``time.monotonic()`` everywhere, which on Linux is ``CLOCK_MONOTONIC``, one clock
for all the processes of the machine: a publish timed in one worker and a delivery in
another are compared directly.

Workers don't outlive the run: they stop when their stdin closes (the parent exited,
however it did), ignore SIGINT, and the parent terminates any left when the run ends
by an error or Ctrl-C. A worker that dies or fails ends the run with a
:exc:`~trustp2p.exceptions.WorkerError` saying which one and how.

"""

from __future__ import annotations

__all__ = ["simulate_workers"]

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...exceptions import UsageError, WorkerError
from ...testing import Delivery, random_links
from . import runner
from .config import TOPIC, Simulation
from .metrics import (
    Observations,
    Published,
    RouterCounts,
    SimulationReport,
    measure,
    per_process,
)
from .plan import descriptors, dial_plan, owner, split
from .runner import Progress, cpu_seconds, peak_rss_mib

_LINE_LIMIT = 1 << 26  # bytes: the longest answer (the deliveries of one node)
_SRC = str(Path(__file__).resolve().parents[3])  # where the trustp2p package is


@dataclass(eq=False)
class _Child:
    """One worker process, as the parent sees it."""

    index: int
    share: range
    process: asyncio.subprocess.Process
    answers: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    delivered: int = 0
    least: int = 0  # the fewest messages one of its nodes delivered
    table: list[list[Any]] = field(default_factory=list)  # [id, origin, seq]
    reported: dict[str, Any] | None = None

    def __str__(self) -> str:
        share = self.share
        return f"worker {self.index} (nodes {share.start}-{share.stop - 1}, pid {self.process.pid})"

    async def send(self, **command: Any) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(command, separators=(",", ":")).encode() + b"\n")
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            # Gone: its exit status, if it exits now, says why (killed: -9), whichever of
            # this write and the read of its output saw it first (a test, on a loaded CI).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.process.wait()
            if (status := self.process.returncode) is not None:
                raise WorkerError(
                    f"{self} exited with status {status} before the end of the run"
                ) from None
            raise WorkerError(f"{self} is gone: it stopped reading commands") from None

    async def expect(self, op: str, timeout: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                answer = await self.answers.get()
        except TimeoutError:
            raise WorkerError(f"{self} didn't answer {op!r} within {timeout:g} s") from None
        if answer["op"] != op:
            raise WorkerError(f"{self} answered {answer['op']!r}, not {op!r}")
        return answer


async def simulate_workers(
    sim: Simulation, *, progress: Progress | None = None
) -> SimulationReport:
    """
    Run ``sim`` over ``sim.workers`` processes and measure it as one network.

    Raises:
        TimeoutError: If the nodes don't connect and form their meshes in time.
        WorkerError: If a worker process dies or fails.
        UsageError: If a worker would need more open files than the system allows
            (``ulimit -n``); the message says how many.

    """
    return await _Parent(sim, progress).run()


class _Parent:
    def __init__(self, sim: Simulation, progress: Progress | None) -> None:
        self.sim = sim
        self.progress = progress
        seed = sim.seed
        self.shares = split(sim.nodes, sim.workers)
        self.links = random_links(sim.nodes, min(sim.degree, sim.nodes - 1), random.Random(seed))
        self.publishers = random.Random(None if seed is None else seed + 1)
        self.received: list[list[Delivery]] = [[] for _ in range(sim.nodes)]
        self.seen = Observations(published={}, received=self.received, live=[])
        self.children: list[_Child] = []
        self.start = 0.0

    async def run(self) -> SimulationReport:
        wall = time.monotonic()
        try:
            await self._spawn()
            try:
                async with asyncio.TaskGroup() as group:
                    for child in self.children:
                        group.create_task(self._read(child))
                    group.create_task(self._drive())
            except BaseExceptionGroup as exc:
                raise _first(exc) from None
        finally:
            await asyncio.gather(*(_end(child) for child in self.children))
        seen = self.seen
        seen.live = list(range(self.sim.nodes))
        report = measure(self.sim, seen)
        report.wall_seconds = time.monotonic() - wall
        reports = [child.reported or {} for child in self.children]
        report.peak_rss_mib = per_process(peak_rss_mib(), [r.get("peak_rss_mib") for r in reports])
        report.cpu_seconds = per_process(cpu_seconds(), [r.get("cpu") for r in reports])
        return report

    def _check_descriptors(self) -> None:
        """Raise the soft limit on open files to the hard one (the workers inherit it),
        and refuse a plan that needs more."""
        try:
            import resource
        except ImportError:  # not on Unix: nothing to check
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        limit = hard if hard != resource.RLIM_INFINITY else None
        need = max(descriptors(share, self.links) for share in self.shares)
        if limit is not None and need > limit:
            raise UsageError(
                f"a worker of {len(self.shares[0])} nodes needs about {need:,} open files, "
                f"over the limit of {limit:,} (ulimit -n): use more workers"
            )

    async def _spawn(self) -> None:
        self._check_descriptors()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC, env.get("PYTHONPATH")]))
        loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ else "asyncio"
        for index, share in enumerate(self.shares):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "trustp2p.apps.simulate.worker",
                loop,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=env,
                limit=_LINE_LIMIT,
            )
            self.children.append(_Child(index, share, process))

    async def _read(self, child: _Child) -> None:
        """Take in what ``child`` says until it exits; raise if that is too early."""
        stdout = child.process.stdout
        assert stdout is not None
        while line := await stdout.readline():
            answer = json.loads(line)
            op = answer["op"]
            if op == "progress":
                child.delivered, child.least = answer["delivered"], answer["least"]
            elif op == "published":
                published = Published(answer["number"], answer["origin"], answer["when"])
                self.seen.published[answer["id"]] = published
            elif op == "messages":
                child.table = answer["table"]
            elif op == "node":
                self._take_node(child, answer)
            elif op == "error":
                if answer.get("timeout"):
                    raise TimeoutError(answer["message"])
                raise WorkerError(f"{child} failed: {answer['message']}")
            else:
                if op == "report":
                    child.reported = answer
                await child.answers.put(answer)
        status = await child.process.wait()
        if child.reported is None:
            raise WorkerError(f"{child} exited with status {status} before the end of the run")

    def _take_node(self, child: _Child, answer: dict[str, Any]) -> None:
        index = answer["index"]
        table = child.table
        self.received[index] = [
            Delivery(table[message][1], table[message][2], table[message][0], TOPIC, when)
            for message, when in answer["deliveries"]
        ]
        self.seen.counts.append(RouterCounts(index, *answer["counts"]))

    async def _drive(self) -> None:
        sim = self.sim
        timeout = 30.0 + 0.1 * sim.nodes
        await self._form(timeout)
        for child in self.children:
            await child.send(op="go")
        self.start = time.monotonic()
        monitor = asyncio.create_task(self._monitor())
        try:
            await self._publish_all()
            published_end = time.monotonic()
            deadline = published_end + sim.timeout
            # Polls the workers' figures, which have no event to wait on.
            while not self._complete() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            self.seen.settle_seconds = time.monotonic() - published_end
            await asyncio.sleep(min(runner.LATE, sim.timeout))
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
        whens = [p.when for p in self.seen.published.values()]
        self.seen.publish_seconds = max(whens, default=self.start) - self.start
        for child in self.children:
            await child.send(op="report", first=child.share.start)
        for child in self.children:
            self.seen.bytes_total += (await child.expect("report", timeout))["bytes"]

    async def _form(self, timeout: float) -> None:
        """Start every worker's nodes, dial the topology, wait for the meshes."""
        sim = self.sim
        setup = {
            "count": 0,
            "mode": sim.mode,
            "mesh_degree": sim.mesh_degree,
            "mesh_degree_low": min(4, sim.mesh_degree),
            "mesh_degree_high": max(12, sim.mesh_degree),
        }
        margin = timeout + 10.0  # the workers time out first, and say what
        urls: list[str] = []
        for child in self.children:
            await child.send(op="setup", **{**setup, "count": len(child.share)})
        for child in self.children:
            urls += (await child.expect("listening", margin))["urls"]
        for child in self.children:
            links = dial_plan(child.share, self.links, urls)
            await child.send(op="dial", links=links, timeout=timeout)
        for child in self.children:
            await child.expect("connected", margin)
        for child in self.children:
            await child.send(op="mesh", timeout=timeout)
        for child in self.children:
            await child.expect("formed", margin)

    async def _publish_all(self) -> None:
        sim = self.sim
        everyone = list(range(sim.nodes))
        for number in range(sim.messages):
            delay = self.start + number / sim.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            origin = self.publishers.choice(everyone)
            child = self.children[owner(self.shares, origin)]
            local = origin - child.share.start
            await child.send(op="publish", number=number, origin=origin, node=local)

    async def _monitor(self) -> None:
        sim = self.sim
        while True:
            if self.progress is not None:
                published = len(self.seen.published)
                delivered = sum(child.delivered for child in self.children)
                self.progress(published, sim.messages, delivered, sim.nodes * published)
            await asyncio.sleep(0.1)

    def _complete(self) -> bool:
        return all(child.least >= self.sim.messages for child in self.children)


async def _end(child: _Child) -> None:
    """Wait for ``child`` to exit after its report; terminate it if the run failed."""
    process = child.process
    if process.returncode is None and child.reported is None:
        try:
            process.terminate()
        except ProcessLookupError:
            pass
    try:
        async with asyncio.timeout(30.0 if child.reported is not None else 5.0):
            await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report from a failed task group: a worker's, if there is one."""
    errors: list[BaseException] = []

    def flatten(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                flatten(inner)
        else:
            errors.append(exc)

    flatten(group)
    for error in errors:
        if isinstance(error, WorkerError | TimeoutError):
            return error
    return errors[0]
