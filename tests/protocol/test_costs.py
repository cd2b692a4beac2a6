"""count_chars: the same counts as str.count, sparse or dense, whatever the characters."""

from __future__ import annotations

from hypothesis import given, strategies as st

from trustp2p.protocol.costs import body_cost, count_chars


@given(
    st.text(alphabet=st.sampled_from('[{,:ax\u00e9\u4e2d\U0001f600\\"')),
    st.sampled_from(["[{", "{[,", ",", "ab"]),
)
def test_count_chars_counts_as_str_count(text: str, chars: str) -> None:
    assert count_chars(text, chars) == sum(text.count(char) for char in chars)


@given(st.integers(min_value=0, max_value=3000), st.integers(min_value=1, max_value=64))
def test_count_chars_past_the_sparse_limit(count: int, gap: int) -> None:
    # Brackets every `gap` characters: past about one in 256 the count falls back to
    # str.count midway; the result is the same either way.
    text = ("[" + "x" * (gap - 1)) * count
    assert count_chars(text, "[{") == count


def test_a_large_sparse_body_costs_nothing_for_its_values() -> None:
    body = '{"data":"' + "x" * 262_133 + '"}'
    assert count_chars(body, "[{,:") == 2
    assert body_cost(body) == 0
    dense = "{" + ",".join(["[]"] * 5_000) + "}"
    assert body_cost(dense) == 10  # 5,001 containers, 4,999 commas
