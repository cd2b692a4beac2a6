"""Subprocesses for the tests: ``python -m trustp2p`` (or any command) with this tree's
package, its output collected as it comes, waited on by condition."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import trustp2p

SRC = str(Path(trustp2p.__file__).resolve().parents[1])
"""The directory holding the package under test, for the children's PYTHONPATH."""

_FACTOR = float(os.environ.get("TRUSTP2P_TESTS_TIMEOUT_FACTOR", "1"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_RUNNING: set[Spawned] = set()
"""The processes started and not stopped yet: :func:`kill_left` kills them."""


def kill_left() -> None:
    """Kill what the test left running (a test that failed before its stop)."""
    while _RUNNING:
        spawned = _RUNNING.pop()
        if spawned.process.poll() is None:
            spawned.process.kill()
        spawned.process.wait()
        spawned.close()


class Spawned:
    """
    A child process; its stdout and stderr, merged, are collected line by line.

    Args:
        args: Arguments of ``python -m trustp2p``; or, with ``command``, the whole
            command line.
        cwd: Its working directory.
        command: Run ``args`` as they are rather than as ``trustp2p``'s.

    """

    def __init__(self, *args: str, cwd: Path | None = None, command: bool = False) -> None:
        argv = list(args) if command else [sys.executable, "-m", "trustp2p", *args]
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env={**os.environ, "PYTHONPATH": SRC},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _RUNNING.add(self)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def says(self, text: str) -> bool:
        """Whether a line of its output holds ``text``."""
        return any(text in line for line in list(self.lines))

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        """Wait (blocking) until ``text`` appears; fail if it exits or time runs out
        (``timeout`` scaled by ``TRUSTP2P_TESTS_TIMEOUT_FACTOR``: a process's start took
        over 10 s on a 2-core machine at load 6-9, found by a tester)."""
        timeout *= _FACTOR
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"{text!r} never appeared in:\n{self.output}")
            time.sleep(0.01)

    async def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """:meth:`wait_for_output` for a coroutine: the event loop runs meanwhile."""
        timeout *= _FACTOR
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline or self.process.poll() is not None:
                pytest.fail(f"{text!r} never appeared in:\n{self.output}")
            await asyncio.sleep(0.01)

    def stop(self) -> int:
        """SIGTERM, as Ctrl-C or a service manager would; return the exit code (the
        process is killed, and the test fails, if it doesn't stop within 10 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"process didn't stop on SIGTERM:\n{self.output}")
        finally:
            _RUNNING.discard(self)
        self.close()
        return code

    def close(self) -> None:
        """Once it exited: the rest of its output read, its pipe closed."""
        self._reader.join(timeout=5)
        assert self.process.stdout is not None
        self.process.stdout.close()
