"""Which build of trustp2p is running: pure Python, or with modules compiled by mypyc."""

from __future__ import annotations

__all__ = ["build_name", "compiled_modules"]

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def compiled_modules() -> list[str]:
    """
    The trustp2p modules that import from a compiled extension (``TRUSTP2P_COMPILE=1``,
    see ``setup.py``), sorted; empty for the pure-Python build. An extension file beside
    a module's source wins over it at import, so this reads the files, not the source.
    """
    suffixes = sorted(EXTENSION_SUFFIXES, key=len, reverse=True)  # the longest first
    names = []
    for path in _PACKAGE.rglob("*"):
        suffix = next((suffix for suffix in suffixes if path.name.endswith(suffix)), None)
        if suffix is not None:
            parts = path.relative_to(_PACKAGE).parts
            names.append(".".join(("trustp2p", *parts[:-1], path.name[: -len(suffix)])))
    return sorted(set(names))


def build_name() -> str:
    """``"pure Python"``, or ``"compiled (N modules)"`` for a mypyc build."""
    compiled = compiled_modules()
    return f"compiled ({len(compiled)} modules)" if compiled else "pure Python"
