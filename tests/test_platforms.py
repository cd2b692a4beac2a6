"""``import trustp2p`` works where Linux-only modules are missing (Windows lacks
``fcntl`` and ``termios``), and the identity lock takes the Windows path there."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

from trustp2p import identity

from .processes import SRC


def test_import_without_fcntl_or_termios() -> None:
    code = (
        "import sys; sys.modules['fcntl'] = None; sys.modules['termios'] = None; "
        "sys.platform = 'freebsd14'; import trustp2p, trustp2p.node, trustp2p.drivers.tcp; "
        "print(trustp2p.__version__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # the version


def test_the_identity_lock_uses_msvcrt_on_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int, int]] = []
    fake = types.ModuleType("msvcrt")
    fake.LK_NBLCK = 2  # type: ignore[attr-defined]

    def locking(fd: int, mode: int, size: int) -> None:
        calls.append((fd, mode, size))
        if len(calls) > 1:
            raise OSError("locked")  # as msvcrt does when another process holds it

    fake.locking = locking  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(sys, "platform", "win32")
    with open(tmp_path / "node.key", "wb") as first, open(tmp_path / "node.key", "rb") as second:
        assert identity._try_lock(first) is True
        assert identity._try_lock(second) is False
    assert [(mode, size) for _, mode, size in calls] == [(2, 1), (2, 1)]
