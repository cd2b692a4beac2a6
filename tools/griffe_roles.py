"""
A Griffe extension for the API reference (mkdocs.yml): the docstrings cross-reference
in Sphinx's roles (``:meth:`start```, ``:class:`~trustp2p.Node```), which the Google-style
Markdown renderer would print as they are. Each becomes inline code: its explicit title
if it has one (``:meth:`title <target>```), the last part of a ``~`` target, else the
target as written.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:meth|class|attr|exc|func|data|mod|obj|const):`([^`]+)`")


def plain(match: re.Match[str]) -> str:
    """The inline code a role stands for."""
    text = match[1]
    titled = re.fullmatch(r"(.+?)\s*<[^>]+>", text)
    if titled is not None:
        text = titled[1]
    elif text.startswith("~"):
        text = text[1:].rsplit(".", 1)[-1]
    return f"`{text}`"


class SphinxRoles(griffe.Extension):
    """Rewrites the Sphinx roles of every docstring as inline code."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(plain, obj.docstring.value)
