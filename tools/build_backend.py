"""
The build backend: setuptools', plus mypy among the build requirements when
``TRUSTP2P_COMPILE=1`` asks for the compiled build (``setup.py``).

``pip install .`` builds in an isolated environment holding only what the backend asks
for; mypyc ships with mypy, so a compiled build has to ask for it, and a pure one doesn't.
"""

from __future__ import annotations

import os
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (the rest of the backend, unchanged)

_MYPYC = "mypy>=1.11"


def _compiled() -> bool:
    return os.environ.get("TRUSTP2P_COMPILE") == "1"


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires = _setuptools.get_requires_for_build_wheel(config_settings)
    return [*requires, _MYPYC] if _compiled() else requires


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    requires = _setuptools.get_requires_for_build_editable(config_settings)
    return [*requires, _MYPYC] if _compiled() else requires
