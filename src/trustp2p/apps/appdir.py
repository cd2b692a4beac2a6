"""The application directory ``trustp2p init`` lays out: threads, heartbeat enabled."""

from __future__ import annotations

__all__ = ["init_app_dir"]

from importlib import resources
from pathlib import Path

from ..threads.loader import THREADS_AVAILABLE, THREADS_ENABLED


def init_app_dir(directory: Path) -> list[str]:
    """
    Make ``directory`` an application directory with the heartbeat thread enabled:
    ``threads-available/heartbeat.py`` (the built-in thread's source, to edit) and the
    symbolic link ``threads-enabled/heartbeat.py`` to it. Files already there are left
    as they are.

    Returns:
        What it did, one line per file, for the user.

    """
    available = directory / THREADS_AVAILABLE
    enabled = directory / THREADS_ENABLED
    available.mkdir(parents=True, exist_ok=True)
    enabled.mkdir(parents=True, exist_ok=True)
    done = []
    target = available / "heartbeat.py"
    if target.exists():
        done.append(f"{target} exists; left as it is")
    else:
        source = resources.files("trustp2p.threads").joinpath("heartbeat.py").read_text("utf-8")
        target.write_text(source, "utf-8")
        done.append(f"wrote {target}")
    link = enabled / "heartbeat.py"
    if link.is_symlink() or link.exists():
        done.append(f"{link} exists; left as it is")
    else:
        link.symlink_to(Path("..") / THREADS_AVAILABLE / "heartbeat.py")
        done.append(f"enabled it: {link} -> ../{THREADS_AVAILABLE}/heartbeat.py")
    return done
