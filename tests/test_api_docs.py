"""The API reference's docstrings: Sphinx roles become inline code (tools/griffe_roles.py,
which mkdocs.yml loads into mkdocstrings)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

# The docs extra (mkdocs, mkdocstrings) brings griffe; without it there is nothing to test.
griffe = pytest.importorskip("griffe")

ROOT = Path(__file__).resolve().parents[1]


def _roles() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "griffe_roles", ROOT / "tools" / "griffe_roles.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (":meth:`start`", "`start`"),
        (":class:`~trustp2p.node.Node`", "`Node`"),
        (":exc:`trustp2p.RemoteError`", "`trustp2p.RemoteError`"),
        (":data:`~.catchup.FETCH_ALONE` seconds", "`FETCH_ALONE` seconds"),
        (":meth:`the start <Node.start>`", "`the start`"),
        (":py:func:`run`, then :attr:`done`", "`run`, then `done`"),
        ("``literal`` and :unknown:`x`", "``literal`` and :unknown:`x`"),
    ],
)
def test_sphinx_roles_become_inline_code(text: str, shown: str) -> None:
    roles = _roles()
    assert roles.ROLE.sub(roles.plain, text) == shown


def test_the_package_s_docstrings_keep_no_role() -> None:
    """What mkdocstrings renders: every docstring of the package, as the extension
    leaves it (before it, about 630 roles were printed as typed)."""
    roles = _roles()
    extensions = griffe.load_extensions(roles.SphinxRoles)
    package = griffe.load("trustp2p", search_paths=[ROOT / "src"], extensions=extensions)
    left = []
    stack: list[griffe.Object | griffe.Alias] = [package]
    while stack:
        obj = stack.pop()
        if isinstance(obj, griffe.Alias):
            continue
        if obj.docstring is not None and roles.ROLE.search(obj.docstring.value):
            left.append(obj.path)
        stack.extend(obj.members.values())
    assert left == []


def test_broadcast_result_says_what_its_keys_and_values_mean() -> None:
    """Found by independent testers: ``BroadcastResult`` (an alias of a dict type)
    said too little for a reader of the API reference. What mkdocstrings renders for
    it names the keys and every kind of value, with the exceptions a peer can meet."""
    package = griffe.load("trustp2p", search_paths=[ROOT / "src"])
    docstring = package["BroadcastResult"].docstring
    assert docstring is not None
    text = docstring.value
    for fact in (
        "keyed by its socket",
        "``None``: a talk",
        "the response body",
        "ConnectionClosed",
        "RequestTimeout",
        "RemoteError",
        "PackageTooLarge",
        "never raises",
    ):
        assert fact in text, fact
