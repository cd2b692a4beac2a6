"""
Run a writer script (``tests/*_writer.py``) in a subprocess and ``kill -9`` it mid-run:
shared by the fault tests of the SQLite stores (peer store, message log).
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


def kill_writer_mid_run(writer: Path, *args: str, lines_before_kill: int = 300) -> int:
    """
    Start ``writer`` with ``args``, wait until it printed ``lines_before_kill`` lines
    (one per committed write), send it one SIGKILL and check that it died of it without
    a word on stderr.

    Returns:
        The last number it printed on a whole line: what it had committed at least.

    """
    process = subprocess.Popen(
        [sys.executable, str(writer), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
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


def run_writer_with_a_file_size_limit(writer: Path, *args: str, limit: int) -> tuple[str, str]:
    """
    Run ``writer`` with ``args`` under a soft file-size limit of ``limit`` bytes: its
    writes fail with EFBIG (CPython ignores SIGXFSZ), as on a full disk. Only the soft
    limit is set, so that the writer can lift it and check the recovery.

    Returns:
        Its stdout and stderr, once it exited with 0.

    """
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    result = subprocess.run(
        [sys.executable, str(writer), *args],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, result.stderr
