"""
The build backend: setuptools', plus mypy among the build requirements when
``TRUSTP2P_COMPILE=1`` asks for the compiled build (``setup.py``).

``pip install .`` builds in an isolated environment holding only what the backend asks
for; mypyc ships with mypy, so a compiled build has to ask for it, and a pure one doesn't.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from typing import Any

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 (the rest of the backend, unchanged)

_MYPYC = "mypy>=1.11"
"""mypyc ships with mypy; it type-checks the package with its dependencies' types, so
the compiled build asks for those too (``_typed_dependencies``)."""
_ASKING = "TRUSTP2P_BUILD_REQUIRES"  # setup.py compiles nothing while it is set


def _compiled() -> bool:
    return os.environ.get("TRUSTP2P_COMPILE") == "1"


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)


def _requires(
    hook: Callable[[dict[str, Any] | None], list[str]], config_settings: dict[str, Any] | None
) -> list[str]:
    if not _compiled():
        return hook(config_settings)
    # setuptools runs setup.py to find its requirements, before mypy is there to import
    os.environ[_ASKING] = "1"
    try:
        requires = hook(config_settings)
    finally:
        del os.environ[_ASKING]
    return [*requires, _MYPYC, *_typed_dependencies()]


def _typed_dependencies() -> list[str]:
    """The project's dependencies and its fast extra (uvloop and picows), from
    pyproject.toml: mypy follows the compiled modules' imports into them."""
    with open("pyproject.toml", "rb") as file:
        project = tomllib.load(file)["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["fast"]]
