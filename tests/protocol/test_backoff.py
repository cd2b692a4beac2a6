"""Reconnection delays."""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator

import pytest

from trustp2p.protocol.backoff import backoff


def _take(delays: Iterator[float], count: int) -> list[float]:
    return list(itertools.islice(delays, count))


def test_default_sequence_without_jitter() -> None:
    delays = backoff(rng=lambda: 0.0)
    assert _take(delays, 10) == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]


def test_sequence_with_options() -> None:
    delays = backoff(0.5, 5.0, 3.0, rng=lambda: 0.0)
    assert _take(delays, 5) == [0.5, 1.5, 4.5, 5.0, 5.0]


def test_factor_one_keeps_the_delay() -> None:
    assert _take(backoff(2.0, 10.0, 1.0, rng=lambda: 0.0), 4) == [2.0, 2.0, 2.0, 2.0]


def test_initial_equal_to_maximum() -> None:
    assert _take(backoff(3.0, 3.0, rng=lambda: 0.0), 3) == [3.0, 3.0, 3.0]


def test_jitter_shortens_each_delay() -> None:
    # With rng() = 0.5 and jitter 0.25, every delay is 7/8 of its nominal value.
    delays = backoff(rng=lambda: 0.5)
    assert _take(delays, 8) == [0.875, 1.75, 3.5, 7.0, 14.0, 28.0, 52.5, 52.5]


def test_zero_jitter_ignores_rng() -> None:
    assert _take(backoff(jitter=0.0), 4) == [1.0, 2.0, 4.0, 8.0]


@pytest.mark.parametrize("jitter", [0.1, 0.25, 0.9])
def test_jitter_bounds(jitter: float) -> None:
    rng = random.Random(1107).random
    nominal = [min(2.0**i, 60.0) for i in range(40)]
    delays = _take(backoff(jitter=jitter, rng=rng), 40)
    for delay, upper in zip(delays, nominal, strict=True):
        assert upper * (1 - jitter) < delay <= upper
    assert len(set(delays)) == 40  # the random part differs between attempts


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0}, "need 0 < initial <= maximum, not 0 and 60.0"),
        ({"initial": -1}, "need 0 < initial <= maximum, not -1 and 60.0"),
        ({"initial": 61}, "need 0 < initial <= maximum, not 61 and 60.0"),
        ({"initial": 2, "maximum": 1}, "need 0 < initial <= maximum, not 2 and 1"),
        ({"factor": 0.5}, "factor must be at least 1, not 0.5"),
        ({"jitter": 1}, "jitter must be in [0, 1), not 1"),
        ({"jitter": -0.1}, "jitter must be in [0, 1), not -0.1"),
    ],
)
def test_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    # Checked when called, not at the first next().
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        backoff(**kwargs)
