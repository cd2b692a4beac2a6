"""
What differs for the tests in the compiled build (``setup.py``, ``TRUSTP2P_COMPILE=1``).

mypyc checks a compiled function's argument types at its boundary, so a wrong type is
refused there with mypyc's message before the function's own check runs; and a compiled
module calls the functions it imports directly, so patching a module global or
subclassing a compiled class doesn't reach it.
"""

from __future__ import annotations

import pytest

import trustp2p


def refused_type(name: str, expected: str, got: str) -> str:
    """
    A pattern for the ``TypeError`` a wrong argument type raises: trustp2p's own in the
    pure build ("body must be a dict, not list"), mypyc's in a compiled one ("dict
    object expected; got list"). ``got`` is a pattern too: the two name ``None``
    differently ("NoneType" and "None").
    """
    ours = rf"{name} must be (?:an? )?{expected}, not (?:{got})$"
    compiled = rf"{expected} object expected; got (?:{got})"
    return f"^(?:{ours}|{compiled})"


def pure_only(module: str, why: str) -> pytest.MarkDecorator:
    """Skip a test in a build where ``module`` is compiled, saying ``why``."""
    return pytest.mark.skipif(
        module in trustp2p.compiled_modules(), reason=f"{module} is compiled: {why}"
    )
