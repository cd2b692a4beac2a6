"""
Run the writer (:mod:`tests.storage.writer`) in a subprocess, and ``kill -9`` it mid-run
or run it under a file-size limit: for the fault suite of the SQLite stores.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]


def _writer_command(args: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run the writer with ``args``: the writer
    imports ``tests.storage``, so the project's root goes on its path."""
    path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "tests.storage.writer", *args], {**os.environ, "PYTHONPATH": path}


def kill_writer_mid_run(*args: str, lines_before_kill: int = 300) -> int:
    """
    Start the writer with ``args``, wait until it printed ``lines_before_kill`` lines
    (one per committed write), send it one SIGKILL and check that it died of it without
    a word on stderr.

    Returns:
        The last number it printed on a whole line: what it had committed at least.

    """
    command, env = _writer_command(args)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        lines.extend(process.stdout)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        deadline = time.monotonic() + 30
        while len(lines) < lines_before_kill:
            assert process.poll() is None, process.stderr
            assert time.monotonic() < deadline, lines[-1:]
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        reader.join()
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()
        err = process.stderr.read()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert err == ""
    # The last line may be cut short.
    return int([line for line in lines if line.endswith("\n")][-1])


def run_writer_with_a_file_size_limit(*args: str, limit: int) -> tuple[str, str]:
    """
    Run the writer with ``args`` under a soft file-size limit of ``limit`` bytes: its
    writes fail with EFBIG (CPython ignores SIGXFSZ), as on a full disk. Only the soft
    limit is set, so that the writer can lift it and check the recovery.

    Returns:
        Its stdout and stderr, once it exited with 0.

    """
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    command, env = _writer_command(args)
    result = subprocess.run(
        command,
        env=env,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, result.stderr
