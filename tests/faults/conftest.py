"""
Helpers of the fault tests: nodes in processes of their own (``peer.py``), their CPU
time, and a network namespace whose link can be turned into a black hole.

"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PEER = Path(__file__).with_name("peer.py")

TIMINGS: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_jitter": 0.1,
    "heartbeat_timeout": 0.5,
    "heartbeat_response_timeout": 1.0,
    "reconnect_initial": 0.05,
    "reconnect_max": 0.5,
    "open_timeout": 1.0,
}
"""The liveness timing knobs, short: a dead link is found within 2.4 s
(``NodeOptions(**TIMINGS).liveness_timings().detection_bound``)."""


class Child:
    """
    A ``peer.py`` process; its stdout and stderr are collected as they come.

    Args:
        options: ``peer.py``'s JSON options.
        prefix: Command words before the interpreter (e.g. ``ip netns exec NS``).
        argv: The interpreter's arguments instead of ``peer.py`` and ``options``.
        preexec_fn: Run in the child before it starts (e.g. to lower a limit).

    """

    def __init__(
        self,
        options: dict[str, Any],
        *,
        prefix: tuple[str, ...] = (),
        preexec_fn: Callable[[], None] | None = None,
        argv: tuple[str, ...] | None = None,
    ) -> None:
        argv = (str(PEER), json.dumps(options)) if argv is None else argv
        self.process = subprocess.Popen(
            [*prefix, sys.executable, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.out)

    @property
    def log(self) -> str:
        return "".join(self.err)

    @property
    def url(self) -> str | None:
        for line in list(self.out):
            if line.startswith("listening "):
                return line.split()[1]
        return None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def cpu_seconds(self) -> float:
        """User and system CPU time the process used so far, in seconds (Linux)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        """SIGCONT then SIGTERM; kill it if it doesn't stop. Returns its exit code."""
        if self.alive:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        return code


@pytest.fixture
def children() -> Iterator[Callable[..., Child]]:
    """Start ``peer.py`` processes; each is stopped after the test."""
    started: list[Child] = []

    def start(options: dict[str, Any], **kwargs: Any) -> Child:
        child = Child(options, **kwargs)
        started.append(child)
        return child

    yield start
    for child in reversed(started):
        child.stop()


@dataclass
class Namespace:
    """A network namespace joined to ours by a veth pair."""

    name: str
    host_ip: str  # our end
    ns_ip: str  # the namespace's end

    @property
    def exec_prefix(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.name)

    @property
    def host_device(self) -> str:
        """Our end of the veth pair."""
        return f"tpa{self.name.removeprefix('tp2p-')}"

    @property
    def ns_device(self) -> str:
        """The namespace's end of the veth pair."""
        return f"tpb{self.name.removeprefix('tp2p-')}"

    def add_addresses(self, host: str | None, ns: str) -> None:
        """Give our end ``host`` and the namespace's end ``ns`` (each ``address/len``)
        as more addresses, as a peer with several would have."""
        if host is not None:
            _run("ip", "addr", "add", host, "dev", self.host_device)
        _run("ip", "-n", self.name, "addr", "add", ns, "dev", self.ns_device)

    def black_hole(self) -> None:
        """Drop every packet in and out of the namespace, silently (no RST, no ICMP)."""
        for chain in ("INPUT", "OUTPUT"):
            _run(*self.exec_prefix, "iptables", "-A", chain, "-j", "DROP")

    def heal(self) -> None:
        _run(*self.exec_prefix, "iptables", "-F")

    def shape(self, rate: str) -> None:
        """Limit what leaves the namespace to ``rate`` (``tc``'s token bucket filter,
        e.g. ``"400kbit"``)."""
        if shutil.which("tc") is None:
            pytest.skip("needs tc (iproute2: .ci/run installs it with apt-get)")
        _run(
            *self.exec_prefix,
            "tc",
            "qdisc",
            "add",
            "dev",
            self.ns_device,
            "root",
            "tbf",
            "rate",
            rate,
            "burst",
            "16kbit",
            "latency",
            "400ms",
        )


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    """A network namespace and veth pair; skipped where the system refuses them."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("needs root on Linux to create a network namespace")
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (.ci/run installs it with apt-get)")
    pid = os.getpid() % 10_000
    name, host_if, ns_if = f"tp2p-{pid}", f"tpa{pid}", f"tpb{pid}"
    subnet = f"10.{200 + pid % 50}.{pid % 250}"
    ns = Namespace(name, f"{subnet}.1", f"{subnet}.2")
    steps = [
        ("ip", "netns", "add", name),
        ("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if),
        ("ip", "link", "set", ns_if, "netns", name),
        ("ip", "addr", "add", f"{ns.host_ip}/24", "dev", host_if),
        ("ip", "link", "set", host_if, "up"),
        ("ip", "-n", name, "addr", "add", f"{ns.ns_ip}/24", "dev", ns_if),
        ("ip", "-n", name, "link", "set", ns_if, "up"),
        ("ip", "-n", name, "link", "set", "lo", "up"),
        (*ns.exec_prefix, "iptables", "-L", "-n"),
    ]
    try:
        try:
            for step in steps:
                _run(*step)
        except (subprocess.CalledProcessError, OSError) as exc:
            detail = (
                exc.stderr.decode().strip()
                if isinstance(exc, subprocess.CalledProcessError)
                else exc
            )
            pytest.skip(f"the kernel refused a network namespace with iptables: {detail}")
        yield ns
    finally:
        subprocess.run(("ip", "link", "del", host_if), capture_output=True, timeout=10)
        subprocess.run(("ip", "netns", "del", name), capture_output=True, timeout=10)
