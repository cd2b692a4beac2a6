"""The block policy, blocks and peer scores: pure, with a fake clock."""

from __future__ import annotations

import pytest

from tests.conftest import FakeClock
from trustp2p.protocol.scoring import Block, BlockPolicy, Offences, PackageCounts, peer_score


@pytest.mark.parametrize(
    ("good", "invalid", "crossed"),
    [
        (0, 0, False),
        (9, 0, False),
        (0, 9, False),  # fewer than 10 packages
        (0, 10, True),
        (9, 1, False),  # one mistake among the first 10 (a tester: an honest publisher)
        (8, 2, True),
        (1, 9, True),
        (10, 1, False),  # 1 invalid per 10 good is the limit, not over it
        (100, 10, False),
        (100, 11, True),
    ],
)
def test_the_default_policy(good: int, invalid: int, crossed: bool) -> None:
    assert BlockPolicy().crossed(PackageCounts(good, invalid)) is crossed


def test_a_policy_of_its_own() -> None:
    policy = BlockPolicy(invalid_ratio=0.5, min_packages=3)
    assert not policy.crossed(PackageCounts(0, 2))
    assert policy.crossed(PackageCounts(0, 3))
    assert not policy.crossed(PackageCounts(4, 2))
    assert policy.crossed(PackageCounts(4, 3))
    # A ratio of 0: any invalid package among enough packages.
    assert BlockPolicy(invalid_ratio=0).crossed(PackageCounts(1000, 1))


def test_the_policy_checks_itself() -> None:
    with pytest.raises(ValueError, match=r"^invalid_ratio must not be negative, not -0.5$"):
        BlockPolicy(invalid_ratio=-0.5)
    with pytest.raises(ValueError, match=r"^invalid_ratio must not be negative, not nan$"):
        BlockPolicy(invalid_ratio=float("nan"))
    with pytest.raises(ValueError, match=r"^min_packages must be at least 1, not 0$"):
        BlockPolicy(min_packages=0)
    with pytest.raises(
        ValueError, match=r"^block_duration must be a positive number of seconds, not 0$"
    ):
        BlockPolicy(block_duration=0)
    with pytest.raises(
        ValueError, match=r"^block_duration must be a positive number of seconds, not inf$"
    ):
        BlockPolicy(block_duration=float("inf"))


def test_a_block_lasts_the_policys_duration(clock: FakeClock) -> None:
    block = BlockPolicy(block_duration=60).block("bad packages", clock())
    assert block == Block(1060.0, "bad packages")
    clock.advance(59.5)
    assert block.active(clock())
    clock.advance(0.5)  # it ends at `until`
    assert not block.active(clock())


def test_a_block_of_its_own_duration(clock: FakeClock) -> None:
    policy = BlockPolicy()
    assert policy.block("test", clock(), 10).until == 1010.0
    assert policy.block("test", clock()).until == 1000.0 + 3600.0
    for duration in (0, -1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^duration must be a positive number of seconds"):
            policy.block("test", clock(), duration)


def test_package_counts_are_a_cheap_tuple() -> None:
    counts = PackageCounts(good=3, invalid=1)
    assert counts == (3, 1)
    assert (counts.good, counts.invalid) == (3, 1)


def test_peer_score() -> None:
    assert peer_score(0, 0, 0) == 0
    assert peer_score(3, 1, 2) == 3 - 2 - 2
    # A peer near the block policy scores well below zero.
    assert peer_score(0, 0, 10) == -10


def test_an_address_is_blocked_when_several_connections_offend(clock: FakeClock) -> None:
    offences = Offences(threshold=3, window=600.0)
    assert not offences.offended("10.0.0.1", clock())
    clock.advance(100)
    assert not offences.offended("10.0.0.1", clock())
    assert not offences.offended("10.0.0.2", clock())  # another address counts apart
    clock.advance(100)
    assert offences.offended("10.0.0.1", clock())
    # The count starts afresh.
    assert not offences.offended("10.0.0.1", clock())


def test_an_ipv6_address_offends_as_its_64(clock: FakeClock) -> None:
    # Found in review (review48): offences counted by the raw address while the limits
    # and blocks take an IPv6 address as its /64: rotating within it reset the count.
    offences = Offences(threshold=3, window=600.0)
    assert not offences.offended("2001:db8:0:1::1", clock(), "peer-a")
    assert not offences.offended("2001:db8:0:1::2", clock(), "peer-b")
    assert offences.first("2001:db8:0:1::99", clock()) == clock()
    assert not offences.offended("2001:db8:0:2::3", clock(), "peer-c")  # another /64
    assert offences.offended("2001:db8:0:1:ffff::4", clock(), "peer-d")


def test_one_peer_id_counts_once_however_often_it_offends(clock: FakeClock) -> None:
    # Found in review: with a short block_duration, one id blocked, unblocked and
    # offending again got its address (and every peer behind it) blocked alone.
    offences = Offences(threshold=3, window=600.0)
    for _ in range(5):
        assert not offences.offended("10.0.0.1", clock(), "peer-a")
        clock.advance(10)
    assert not offences.offended("10.0.0.1", clock(), "peer-b")
    assert offences.offended("10.0.0.1", clock(), "peer-c")  # three distinct peers


def test_offences_without_an_id_count_each(clock: FakeClock) -> None:
    offences = Offences(threshold=3, window=600.0)
    assert not offences.offended("10.0.0.1", clock(), "peer-a")
    assert not offences.offended("10.0.0.1", clock())
    assert offences.offended("10.0.0.1", clock())


def test_old_offences_leave_the_window(clock: FakeClock) -> None:
    offences = Offences(threshold=2, window=60.0)
    assert not offences.offended("10.0.0.1", clock())
    clock.advance(60.0)
    assert not offences.offended("10.0.0.1", clock())
    clock.advance(59.0)
    assert offences.offended("10.0.0.1", clock())


def test_offences_are_bounded_in_memory(clock: FakeClock) -> None:
    offences = Offences(threshold=2, window=60.0, max_tracked=2)
    offences.offended("a", clock())
    offences.offended("b", clock())
    offences.offended("c", clock())  # forgets "a"
    assert not offences.offended("a", clock())
    assert offences.offended("c", clock())


def test_offences_check_their_arguments() -> None:
    with pytest.raises(ValueError, match=r"^need threshold >= 1 and window > 0, not 0, 1.0$"):
        Offences(threshold=0, window=1.0)
