"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(
    *,
    floats: st.SearchStrategy[float] | None = None,
    text: st.SearchStrategy[str] | None = None,
    max_leaves: int = 8,
) -> st.SearchStrategy[Any]:
    """
    JSON values: scalars (``floats`` default to any float, NaN included; ``text`` to
    strings of up to 40 characters), and lists and objects of them.

    Containers hold at most 4 items: unbounded ones overshoot ``max_leaves`` and
    hypothesis retries the draw, which made generating the examples take seconds.
    """
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | (st.floats() if floats is None else floats)
        | (st.text(max_size=40) if text is None else text)
    )
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )
