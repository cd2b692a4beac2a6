"""TCP's view of a path and the stall verdicts that wait for it, on a fake clock."""

from __future__ import annotations

import pytest

from trustp2p.protocol.path import CONGESTION_GRACE, PathView, PathWatch, WriteStall

from ..conftest import FakeClock


def view(
    *,
    window_closed: bool = False,
    resending: bool = False,
    losses: int = 40,
    heard: float = 1.0,
) -> PathView:
    """A view of a live peer: its window open, its host heard from a second ago."""
    return PathView(window_closed, resending, losses, heard)


# t45 F1: our segments to the peer lost and resent, its window open, its host heard from.
CONGESTED = view(resending=True)
# A peer that reads nothing: its window is closed (TCP probes it; the probe is resent).
ZERO_WINDOW = view(window_closed=True, resending=True)


@pytest.mark.parametrize(
    ("path", "alive"),
    [
        (view(), True),
        (ZERO_WINDOW, False),
        (view(heard=10.0), False),  # a host that vanished
    ],
)
def test_a_peer_is_alive_with_an_open_window_and_its_host_heard_from(
    path: PathView, alive: bool
) -> None:
    assert path.alive(10.0) is alive


@pytest.mark.parametrize("path", [None, ZERO_WINDOW, view(heard=10.0)])
def test_no_view_or_a_peer_not_alive_means_the_verdict_of_the_timeout(
    clock: FakeClock, path: PathView | None
) -> None:
    watch = PathWatch()
    assert not watch.stalled(clock(), path, 9.9, 10.0)
    assert watch.stalled(clock(), path, 10.0, 10.0)


def test_a_path_resending_now_defers_the_verdict_up_to_the_grace(clock: FakeClock) -> None:
    watch = PathWatch()
    assert not watch.stalled(clock(), CONGESTED, 10.0, 10.0)
    assert not watch.stalled(clock(), CONGESTED, 10.0 * CONGESTION_GRACE - 0.1, 10.0)
    assert watch.stalled(clock(), CONGESTED, 10.0 * CONGESTION_GRACE, 10.0)


def test_losses_between_the_looks_are_congestion(clock: FakeClock) -> None:
    """t45 F1, measured: a third of the views showed nothing being resent at that
    moment, while the count of segments resent rose every few seconds."""
    watch = PathWatch()
    watch.look(clock(), view(losses=40))
    clock.advance(2.0)
    watch.look(clock(), view(losses=43))
    clock.advance(8.0)  # the last resend seen 8 s ago: within the timeout
    assert not watch.stalled(clock(), view(losses=43), 10.0, 10.0)
    clock.advance(2.0)  # 10 s ago: no more
    assert watch.stalled(clock(), view(losses=43), 12.0, 10.0)


def test_a_live_peer_without_losses_is_looked_at_once_more(clock: FakeClock) -> None:
    """A frozen process's host acknowledges our bytes at once: nothing is lost, and
    the verdict comes one look (an eighth of the timeout) after the timeout."""
    watch = PathWatch()
    assert not watch.stalled(clock(), view(), 10.0, 10.0)
    clock.advance(1.25)
    assert watch.stalled(clock(), view(), 11.25, 10.0)
    resent = PathWatch()
    assert not resent.stalled(clock(), view(), 10.0, 10.0)
    clock.advance(1.25)
    assert not resent.stalled(clock(), view(losses=41), 11.25, 10.0)


def test_a_congested_peer_is_given_time_until_it_is_no_longer_heard_from(
    clock: FakeClock,
) -> None:
    """A host not heard from since the stall began is not congested: cut as before."""
    stall = WriteStall(20.0, clock(), taken=0)
    clock.advance(20.0)
    assert not stall.stalled(clock(), 0, lambda: CONGESTED)
    clock.advance(5.0)
    assert not stall.stalled(clock(), 0, lambda: view(resending=True, heard=24.0))
    assert stall.stalled(clock(), 0, lambda: view(resending=True, heard=25.0))


def test_the_rule_that_finds_dead_links_wants_the_host_heard_within_its_timeout(
    clock: FakeClock,
) -> None:
    """t45 F1: nothing came through for 10-11 s at times. The frame and send-stall
    rules allow it (liveness finds a dead link); liveness itself does not, to keep its
    bound on a link that died."""
    quiet = view(resending=True, heard=11.0)
    assert not PathWatch().stalled(clock(), quiet, 15.0, 10.0)
    assert PathWatch().stalled(clock(), quiet, 15.0, 10.0, dead_links=True)


def test_a_write_stall_on_a_congested_path_waits_for_the_grace(clock: FakeClock) -> None:
    """t45 s2: a live server that read all it got, behind a saturated link, was cut
    as a peer that reads nothing after 20 s."""
    stall = WriteStall(20.0, clock(), taken=0)
    for _ in range(int(20.0 * CONGESTION_GRACE / 2.5) - 1):
        clock.advance(2.5)
        assert not stall.stalled(clock(), 0, lambda: CONGESTED)
    clock.advance(2.5)
    assert stall.stalled(clock(), 0, lambda: CONGESTED)


def test_a_write_stall_with_a_closed_window_is_cut_at_the_timeout(clock: FakeClock) -> None:
    stall = WriteStall(20.0, clock(), taken=0)
    clock.advance(19.9)
    assert not stall.stalled(clock(), 0, lambda: ZERO_WINDOW)
    clock.advance(0.1)
    assert stall.stalled(clock(), 0, lambda: ZERO_WINDOW)


def test_the_view_is_read_only_past_the_timeout(clock: FakeClock) -> None:
    asked: list[float] = []

    def path() -> PathView:
        asked.append(clock())
        return CONGESTED

    stall = WriteStall(20.0, clock(), taken=0)
    clock.advance(19.9)
    assert not stall.stalled(clock(), 0, path)
    assert asked == []
    clock.advance(0.1)
    assert not stall.stalled(clock(), 0, path)
    assert asked == [clock()]


def test_progress_starts_the_grace_over(clock: FakeClock) -> None:
    stall = WriteStall(20.0, clock(), taken=0)
    clock.advance(50.0)
    assert not stall.stalled(clock(), 0, lambda: CONGESTED)
    assert not stall.stalled(clock(), 1, lambda: CONGESTED)
    clock.advance(20.0)
    assert stall.stalled(clock(), 1)  # (no view: the timeout's verdict)
