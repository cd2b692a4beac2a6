"""The liveness rules, on a fake clock: when to ping, when a peer is dead."""

from __future__ import annotations

import random

import pytest

from trustp2p.options import NodeOptions
from trustp2p.protocol.liveness import PUT_OFF_INTERVALS, Liveness, LivenessTimings, Verdict
from trustp2p.protocol.path import CONGESTION_GRACE, PathView

TIMINGS = LivenessTimings(interval=10.0, timeout=10.0, period=4.0)


class Peer:
    """One connection's liveness and what the node would see of the peer."""

    def __init__(
        self, timings: LivenessTimings = TIMINGS, now: float = 1000.0, *, leads: bool = True
    ) -> None:
        self.now = now
        self.liveness = Liveness(now, timings, leads=leads)
        self.last_bytes = now
        self.last_package = now
        self.backlog = 0
        self.written = 0
        self.reading_paused = False
        self.path: PathView | None = None  # TCP's view, where the driver can tell

    def check(self) -> Verdict:
        path = {} if self.path is None else {"path": self.path}
        verdict = self.liveness.check(
            self.now,
            last_bytes=self.last_bytes,
            last_package=self.last_package,
            backlog=self.backlog,
            written=self.written,
            reading_paused=self.reading_paused,
            **path,
        )
        if verdict is Verdict.PING:
            self.liveness.ping_sent(self.now, self.backlog, self.written)
        return verdict

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def package(self) -> None:
        """A complete package arrives now."""
        self.last_bytes = self.last_package = self.now

    def partial(self) -> None:
        """Bytes of a package not complete yet arrive now."""
        self.last_bytes = self.now

    def pong(self) -> float | None:
        self.package()
        return self.liveness.pong_received(self.now)


def test_first_ping_is_one_interval_after_the_connection_opened() -> None:
    peer = Peer()
    peer.advance(9.9)
    assert peer.check() is Verdict.NOTHING
    peer.advance(0.1)
    assert peer.check() is Verdict.PING
    assert peer.liveness.outstanding == peer.now


def test_pings_follow_the_schedule_even_while_the_peer_talks() -> None:
    peer = Peer()
    pings = []
    for _ in range(100):  # 50 s of rounds 0.5 s apart, a package in each
        peer.advance(0.5)
        peer.package()
        if peer.check() is Verdict.PING:
            pings.append(peer.now - 1000.0)
            peer.advance(0.01)
            assert peer.pong() == pytest.approx(0.01)
    # Every 10 s, give or take the 10 ms pongs that shift the rounds.
    assert pings == pytest.approx([10.0, 20.0, 30.0, 40.0, 50.0], abs=0.05)


def test_one_ping_outstanding_at_a_time() -> None:
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.advance(9.0)
    peer.partial()  # keeps it from being charged
    assert peer.check() is Verdict.NOTHING
    peer.advance(9.0)
    peer.partial()
    assert peer.check() is Verdict.NOTHING


def test_a_silent_peer_is_dead_once_its_ping_is_charged_the_timeout() -> None:
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    for _ in range(4):
        peer.advance(2.0)
        assert peer.check() is Verdict.NOTHING
    assert peer.liveness.charged == pytest.approx(8.0)
    peer.advance(2.0)
    assert peer.check() is Verdict.DEAD


def test_a_pong_stuck_on_a_congested_path_is_given_the_grace() -> None:
    """t45 F1: on a saturated 64 kbit/s link the pong waited behind the peer's own
    upload; TCP resent our segments with the peer's window open."""
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.path = PathView(window_closed=False, resending=True, losses=0, heard=1.5)
    while peer.liveness.charged < 10.0 * CONGESTION_GRACE - 2.0:
        peer.advance(2.0)
        assert peer.check() is Verdict.NOTHING
    peer.advance(2.0)
    assert peer.check() is Verdict.DEAD


def test_losses_seen_at_the_checks_before_are_congestion() -> None:
    """t45 F1, measured: at the check that charged the timeout TCP resent nothing at
    that moment, while the count of segments lost had risen at the checks before."""
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    for losses in (140, 143, 143, 147):
        peer.path = PathView(window_closed=False, resending=False, losses=losses, heard=0.2)
        peer.advance(2.0)
        assert peer.check() is Verdict.NOTHING
    peer.advance(2.0)
    assert peer.check() is Verdict.NOTHING  # the last loss seen 2 s ago
    peer.advance(8.0)
    assert peer.check() is Verdict.DEAD  # and 10 s ago: no longer congested


@pytest.mark.parametrize(
    "path",
    [
        PathView(window_closed=True, resending=True, losses=0, heard=1.5),  # reads nothing
        PathView(window_closed=False, resending=True, losses=0, heard=10.0),  # gone
        PathView(window_closed=False, resending=False, losses=7, heard=0.1),  # none lost
    ],
)
def test_a_path_that_is_not_congested_gives_no_grace(path: PathView) -> None:
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.path = path
    for _ in range(4):
        peer.advance(2.0)
        assert peer.check() is Verdict.NOTHING
    peer.advance(2.0)
    assert peer.check() is Verdict.DEAD


def test_a_dead_link_is_found_as_soon_though_it_looked_congested() -> None:
    """The link died just before our ping: TCP resends with the window open, but the
    peer's host isn't heard from, and the verdict comes at the timeout as before."""
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    for _ in range(5):
        peer.advance(2.0)
        heard = peer.now - (1010.0 - 0.5)  # last heard half a second before the ping
        peer.path = PathView(window_closed=False, resending=True, losses=0, heard=heard)
        verdict = peer.check()
    assert verdict is Verdict.DEAD


def test_a_probe_gives_no_grace_for_congestion() -> None:
    peer = Peer()
    peer.liveness.probe(peer.now, 3.0)
    assert peer.check() is Verdict.PING
    peer.path = PathView(window_closed=False, resending=True, losses=0, heard=0.5)
    peer.advance(3.0)
    assert peer.check() is Verdict.DEAD


def test_a_peer_that_talks_but_never_answers_is_dead_as_soon() -> None:
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    verdicts = []
    for _ in range(5):
        peer.advance(1.0)
        peer.package()  # right before the check: complete packages are no excuse
        peer.advance(1.0)
        peer.package()
        verdicts.append(peer.check())
    assert verdicts == [Verdict.NOTHING] * 4 + [Verdict.DEAD]


def test_a_large_frame_in_flight_never_trips_the_heartbeat() -> None:
    """The pong waits behind a frame that takes a minute to arrive: each read of it
    (a partial frame) is progress."""
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    for _ in range(30):
        peer.advance(1.0)
        peer.partial()
        peer.advance(1.0)
        assert peer.check() is Verdict.NOTHING
    assert peer.liveness.charged == 0.0
    peer.package()  # the frame is complete; the pong follows
    peer.advance(0.01)
    assert peer.pong() == pytest.approx(60.01)


def test_a_frame_that_stops_arriving_is_charged_from_then_on() -> None:
    peer = Peer()
    peer.advance(10.0)
    peer.check()
    peer.advance(2.0)
    peer.partial()
    assert peer.check() is Verdict.NOTHING
    verdicts = []
    for _ in range(4):
        peer.advance(2.5)
        verdicts.append(peer.check())
    assert verdicts == [Verdict.NOTHING] * 3 + [Verdict.DEAD]


def test_our_own_frame_draining_ahead_of_the_ping_is_progress() -> None:
    """Our 1 MiB frame is read slowly by the peer; the ping waits behind it."""
    peer = Peer()
    peer.advance(10.0)
    peer.backlog = 2**20
    assert peer.check() is Verdict.PING
    while peer.backlog > 0:
        peer.advance(2.0)
        peer.backlog = max(0, peer.backlog - 2**20 // 20)
        assert peer.check() is Verdict.NOTHING
    assert peer.liveness.charged == 0.0
    assert peer.pong() is not None


def test_bytes_written_after_the_ping_are_no_excuse() -> None:
    """Found by a tester: a frozen peer (SIGSTOP) that we sent a talk and a gossip
    message every second was never dropped (4 min): its host took and acknowledged each
    write, which counted as the peer reading. Only bytes ahead of the ping count."""
    peer = Peer()
    peer.written, peer.backlog = 5_000, 3_000  # 3,000 bytes of ours ahead of the ping
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.advance(2.0)
    peer.backlog = 0  # those taken: progress; the ping is with the peer's host now
    assert peer.check() is Verdict.NOTHING
    assert peer.liveness.charged == 0.0
    verdicts = []
    for _ in range(5):  # we write on; its host takes everything at once
        peer.advance(2.0)
        peer.written += 500
        verdicts.append(peer.check())
    assert verdicts == [Verdict.NOTHING] * 4 + [Verdict.DEAD]


def test_our_frame_stuck_on_its_way_is_no_excuse() -> None:
    """The peer stopped reading (or the link is a black hole): the backlog stays."""
    peer = Peer()
    peer.advance(10.0)
    peer.backlog = 2**20
    peer.check()
    verdicts = []
    for _ in range(5):
        peer.advance(2.0)
        verdicts.append(peer.check())
    assert verdicts == [Verdict.NOTHING] * 4 + [Verdict.DEAD]


def test_time_we_are_not_reading_is_not_charged_if_the_peer_takes_our_bytes() -> None:
    peer = Peer(LivenessTimings(interval=10.0, timeout=6.0, period=4.0))
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.reading_paused = True
    verdicts = []
    for _ in range(10):
        peer.advance(4.0)
        verdicts.append(peer.check())
    # Nothing charged: the pong may wait in what we don't read. A ping every timeout
    # (6 s): with nothing read, only a write that fails finds a peer that left (found by
    # an attacker's test: a peer that died with its requests queued was kept for good).
    nothing, ping = Verdict.NOTHING, Verdict.PING
    assert verdicts == [nothing, ping] * 5
    peer.reading_paused = False
    peer.advance(4.0)
    assert peer.check() is Verdict.NOTHING
    assert peer.liveness.charged == pytest.approx(4.0)


def test_a_peer_that_takes_none_of_our_bytes_while_we_read_nothing_is_dead() -> None:
    # A host that vanished without a reset while its requests kept our reading paused:
    # our pings stay unacknowledged in the kernel (found by a review: it was kept until
    # TCP gave up retransmitting, about 15 minutes).
    peer = Peer(LivenessTimings(interval=10.0, timeout=6.0, period=4.0))
    peer.reading_paused = True
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.backlog = 40  # the ping, never acknowledged
    peer.advance(4.0)
    assert peer.check() is Verdict.NOTHING
    peer.advance(1.0)
    assert peer.check() is Verdict.NOTHING
    peer.advance(1.0)  # the ping is sent again at 6 s, and the charge goes on
    assert peer.check() is Verdict.DEAD
    assert peer.liveness.charged == pytest.approx(6.0)


def test_a_ping_sent_again_while_reading_is_paused_goes_on_charging() -> None:
    peer = Peer(LivenessTimings(interval=10.0, timeout=6.0, period=4.0))
    peer.reading_paused = True
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.advance(5.0)
    assert peer.check() is Verdict.NOTHING  # backlog 0: the peer took the ping
    peer.backlog = 40
    peer.advance(1.0)
    assert peer.check() is Verdict.PING  # 6 s since the ping; 1 s charged
    assert peer.liveness.charged == pytest.approx(1.0)
    peer.backlog = 80  # both pings, unacknowledged
    peer.advance(5.0)
    assert peer.check() is Verdict.DEAD


def test_a_peer_taking_our_bytes_as_fast_as_we_write_them_is_alive() -> None:
    # Found in review: while reading is paused we go on writing (pings, gossip, answers);
    # a peer that takes them as fast as they come keeps our backlog level, not falling,
    # and was dropped. What counts is what it took: written less the backlog.
    peer = Peer(LivenessTimings(interval=10.0, timeout=6.0, period=4.0))
    peer.reading_paused = True
    peer.written, peer.backlog = 1_000_000, 100_000
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    for _ in range(10):
        peer.advance(3.0)
        peer.written += 30_000  # as much written as taken: the backlog stays at 100,000
        assert peer.check() is not Verdict.DEAD
    assert peer.liveness.charged == 0.0
    for _ in range(2):  # it stops taking them: what we write only adds to the backlog
        peer.advance(3.0)
        peer.written += 30_000
        peer.backlog += 30_000
        verdict = peer.check()
    assert verdict is Verdict.DEAD


def test_our_bytes_going_down_while_we_read_nothing_is_progress() -> None:
    # A large response crawling to a peer whose requests keep our reading paused.
    peer = Peer(LivenessTimings(interval=10.0, timeout=6.0, period=4.0))
    peer.reading_paused = True
    peer.backlog = 100_000
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    verdicts = []
    for _ in range(10):
        peer.advance(3.0)
        peer.backlog -= 5_000
        verdicts.append(peer.check())
    assert Verdict.DEAD not in verdicts
    assert peer.liveness.charged == 0.0
    peer.advance(3.0)  # it stopped taking them
    peer.check()
    peer.advance(3.0)
    assert peer.check() is Verdict.DEAD


def test_a_pong_ends_the_ping_and_its_charge() -> None:
    peer = Peer()
    assert peer.liveness.pong_received(peer.now) is None  # no ping outstanding
    peer.advance(10.0)
    peer.check()
    peer.advance(6.0)
    assert peer.check() is Verdict.NOTHING
    assert peer.pong() == pytest.approx(6.0)
    assert (peer.liveness.outstanding, peer.liveness.charged) == (None, 0.0)
    assert peer.liveness.last_rtt == pytest.approx(6.0)
    peer.advance(4.0)  # the next ping is one interval after this one was sent
    assert peer.check() is Verdict.PING


def test_a_probe_pings_at_once_and_a_silent_peer_is_dead_within_its_time() -> None:
    """tester39 F9: another process of the peer's id connected; its old link may be
    dead. Pinged now, dead after 3 s of silence rather than the 10 s timeout."""
    peer = Peer()
    peer.advance(2.0)  # no ping due for 8 s more
    assert peer.liveness.probe_deadline is None
    peer.liveness.probe(peer.now, 3.0)
    assert peer.liveness.next_check == peer.now  # (the node's round won't skip it)
    assert peer.liveness.probe_deadline == peer.now
    assert peer.check() is Verdict.PING
    assert peer.liveness.probe_deadline == peer.now + 3.0
    peer.advance(2.9)
    assert peer.check() is Verdict.NOTHING
    assert peer.liveness.probe_deadline == pytest.approx(peer.now + 0.1)
    peer.advance(0.1)
    assert peer.check() is Verdict.DEAD


def test_a_probed_peer_that_answers_stays_and_the_usual_timeout_is_back() -> None:
    peer = Peer()
    peer.liveness.probe(peer.now, 3.0)
    assert peer.check() is Verdict.PING
    sent = peer.now
    peer.advance(0.5)
    assert peer.pong() == pytest.approx(0.5)
    assert peer.liveness.answered == sent
    assert peer.liveness.probe_deadline is None
    assert peer.liveness.dead_after == TIMINGS.timeout
    peer.advance(10.0)  # the next ping, on the schedule: charged the full timeout
    assert peer.check() is Verdict.PING
    peer.advance(9.9)
    assert peer.check() is Verdict.NOTHING
    peer.advance(0.1)
    assert peer.check() is Verdict.DEAD


@pytest.mark.parametrize("charged", [2.0, 4.0])
def test_a_probe_with_a_ping_outstanding_gives_its_time_from_then_and_never_lengthens(
    charged: float,
) -> None:
    """review58: a ping charged more than the probe's time already (4 s) made the peer
    dead at the probe's first check, with no time to answer."""
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.advance(charged)
    assert peer.check() is Verdict.NOTHING
    peer.liveness.probe(peer.now, 3.0)
    assert peer.liveness.probe_deadline == pytest.approx(peer.now + 3.0)
    peer.liveness.probe(peer.now, 8.0)  # (again, longer: no change)
    assert peer.liveness.dead_after == pytest.approx(charged + 3.0)
    peer.advance(2.9)
    assert peer.check() is Verdict.NOTHING
    peer.advance(0.1)
    assert peer.check() is Verdict.DEAD


@pytest.mark.parametrize("gap", [0.0, 1.5, 2.9, 3.0])
def test_a_probe_gives_its_time_from_the_probe_not_from_the_last_check(gap: float) -> None:
    """review59: the silence between the last check and the probe was charged at the
    probe's own check, out of the probe's time: 3 s less that gap, none past 3 s."""
    peer = Peer()
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    peer.advance(1.0)
    assert peer.check() is Verdict.NOTHING  # a round: 1 s charged
    peer.advance(gap)  # no round since (2-3 s apart by default)
    peer.liveness.probe(peer.now, 3.0)
    assert peer.check() is Verdict.NOTHING  # (the probe checks at once)
    assert peer.liveness.dead_after - peer.liveness.charged == pytest.approx(3.0)
    peer.advance(3.0)
    assert peer.check() is Verdict.DEAD


def test_progress_holds_off_a_probe_as_it_does_the_timeout() -> None:
    """A large frame of the peer's in flight: the pong waits behind it."""
    peer = Peer()
    peer.liveness.probe(peer.now, 3.0)
    assert peer.check() is Verdict.PING
    for _ in range(3):
        peer.advance(2.0)
        peer.partial()
        assert peer.check() is Verdict.NOTHING
    peer.advance(3.0)
    assert peer.check() is Verdict.DEAD


def test_a_probe_that_sees_neither_pong_nor_silence_ends_after_the_timeout() -> None:
    """review58: a peer that takes what we send while we read nothing (its inbox full)
    shows progress and sends no pong: the probe kept the 3 s threshold, and its task
    waking, for the connection's life. It ends ``timeout`` after it began."""
    peer = Peer()
    peer.reading_paused = True
    peer.liveness.probe(peer.now, 3.0)
    assert peer.check() is Verdict.PING
    for _ in range(4):
        peer.advance(2.0)
        assert peer.check() is Verdict.NOTHING
        assert peer.liveness.probe_deadline is not None
    peer.advance(2.0)
    assert peer.check() is Verdict.PING  # (with reading paused: a ping each timeout)
    assert peer.liveness.probe_deadline is None
    assert peer.liveness.dead_after == TIMINGS.timeout


def test_the_peers_ping_puts_ours_off() -> None:
    peer = Peer()
    peer.advance(6.0)
    peer.liveness.ping_received(peer.now)  # it shows the link works both ways
    peer.advance(9.0)
    assert peer.check() is Verdict.NOTHING
    peer.advance(1.0)
    assert peer.check() is Verdict.PING
    # With a ping of ours outstanding, theirs is no answer to it.
    peer.advance(1.0)
    peer.liveness.ping_received(peer.now)
    assert peer.liveness.outstanding is not None


def test_a_peer_that_pings_without_reading_gets_our_ping_and_is_found_dead() -> None:
    """Found by an attacker's test: a peer that read nothing and sent a ping every 15 s
    put ours off for good and stayed connected (120 s and counting). Its pings put ours
    off PUT_OFF_INTERVALS intervals at most."""
    peer = Peer()
    verdicts = []
    for _ in range(40):  # a ping from it every 7.5 s, checks every 2.5 s, for 100 s
        for _ in range(3):
            peer.advance(2.5)
            verdicts.append(peer.check())
        peer.package()
        peer.liveness.ping_received(peer.now)
        if Verdict.DEAD in verdicts:
            break
    assert verdicts.count(Verdict.PING) == 1
    ping_at = 1000.0 + 2.5 * (verdicts.index(Verdict.PING) + 1)
    assert ping_at == 1000.0 + TIMINGS.interval * PUT_OFF_INTERVALS
    assert verdicts[-1] is Verdict.DEAD
    assert peer.now - ping_at == TIMINGS.timeout


def test_a_peer_that_answers_no_ping_is_kept_by_its_pings_or_any_package() -> None:
    """Found by a tester (t43 F1): the original's server drops every ping it gets; with
    the put-off bound, our client pinged it every 5 intervals and dropped it. A peer
    that answers no ping (it never introduced itself) puts ours off for as long as its
    pings come; once they stop, any complete package after our ping answers it; a dead
    link is still found: nothing comes."""
    peer = Peer(leads=False)  # (we dialled it: the original's server)
    peer.liveness.answers_no_ping()
    verdicts = []
    for _ in range(40):  # its ping every 7.5 s, checks every 2.5 s, for 300 s
        for _ in range(3):
            peer.advance(2.5)
            verdicts.append(peer.check())
        peer.package()
        peer.liveness.ping_received(peer.now)
    assert set(verdicts) == {Verdict.NOTHING}
    # Its pings stop; it talks every 5 s (the original doesn't ping a busy client).
    for _ in range(20):
        for _ in range(2):
            peer.advance(2.5)
            verdicts.append(peer.check())
        peer.package()
    later = verdicts[120:]
    assert Verdict.DEAD not in later
    assert later.count(Verdict.PING) == 6  # one each 14 s (we dialled), at a check: 15 s
    assert peer.liveness.last_rtt is None  # (no round trip: nothing answered it as such)
    # Silent (dead): found within the timeout, as any peer.
    while peer.check() is not Verdict.DEAD:
        peer.advance(2.5)
    assert peer.now - peer.liveness.last_ping <= TIMINGS.timeout + 2.5


def pings_and_keeps_the_bound(peer: Peer) -> None:
    """The peer pings every 7.5 s with a package beside, never pongs (checks every
    2.5 s, for 300 s at most): its pings put ours off 5 intervals at most, its packages
    don't answer our ping, and it is found dead."""
    verdicts = []
    for _ in range(40):
        for _ in range(3):
            peer.advance(2.5)
            verdicts.append(peer.check())
        if Verdict.DEAD in verdicts:
            break
        peer.package()
        peer.liveness.ping_received(peer.now)
    assert verdicts[-1] is Verdict.DEAD
    assert verdicts.count(Verdict.PING) == 1
    assert peer.now - 1000.0 <= TIMINGS.interval * PUT_OFF_INTERVALS + TIMINGS.timeout + 7.5


def test_a_peer_that_dialled_us_and_answers_no_ping_keeps_the_bound() -> None:
    """Found by a tester (t44): a peer that dialled us, never introduced itself, pinged
    and read nothing was kept for good; the original's client answers our pings."""
    peer = Peer()  # (it dialled us)
    peer.liveness.answers_no_ping()
    pings_and_keeps_the_bound(peer)


def test_a_peer_that_introduces_itself_late_answers_pings_again() -> None:
    """review76 F3: a version talk after the peer's first package (never from an honest
    node of ours) left it excused for good: its pings put ours off without bound."""
    peer = Peer(leads=False)
    peer.liveness.answers_no_ping()
    peer.liveness.answers_pings()
    pings_and_keeps_the_bound(peer)


def test_a_second_empty_frame_leaves_a_probes_ping_due() -> None:
    """review77 F1: each empty text frame of a peer we dialled made its excuse again,
    and moved a probe's ping, due at once, an interval and a period later."""
    peer = Peer(leads=False)
    peer.liveness.answers_no_ping()
    peer.advance(5.0)
    peer.liveness.probe(peer.now, 3.0)
    peer.liveness.answers_no_ping()  # (another empty frame)
    assert peer.check() is Verdict.PING


def test_the_side_that_dialled_waits_one_period_longer() -> None:
    follower = Liveness(1000.0, TIMINGS, leads=False)
    kwargs = {"last_bytes": 1000.0, "last_package": 1000.0}
    assert follower.check(1010.0, **kwargs) is Verdict.NOTHING
    assert follower.check(1013.9, **kwargs) is Verdict.NOTHING
    assert follower.check(1014.0, **kwargs) is Verdict.PING


def test_next_check_is_when_the_next_ping_falls_due() -> None:
    peer = Peer()
    liveness = peer.liveness
    assert liveness.next_check == peer.now + 10.0  # one interval after opening
    peer.advance(10.0)
    assert peer.check() is Verdict.PING
    assert liveness.next_check == peer.now  # outstanding: every check charges it
    peer.advance(0.5)
    peer.pong()
    assert liveness.next_check == peer.now - 0.5 + 10.0  # one interval after our ping
    peer.advance(3.0)
    liveness.ping_received(peer.now)  # theirs puts ours off
    assert liveness.next_check == peer.now + 10.0
    follower = Liveness(1000.0, TIMINGS, leads=False)
    assert follower.next_check == 1014.0  # one period more on the side that dialled


@pytest.mark.parametrize("seed", range(40))
def test_skipping_checks_before_next_check_changes_nothing(seed: int) -> None:
    """A round that skips connections before ``next_check`` (as the node's does) sees
    the same verdicts, charges and pings as one that checks every connection, whatever
    the peer does: pings of its own, pongs late or never, partial frames, backlog."""
    rng = random.Random(seed)
    every, skipping = Peer(), Peer()
    for _ in range(300):
        step = rng.uniform(0.5, 3.0)
        event = rng.random()
        for peer in (every, skipping):
            peer.advance(step)
            if event < 0.15:
                peer.liveness.ping_received(peer.now)
            elif event < 0.45:
                peer.pong()
            elif event < 0.55:
                peer.partial()
            elif event < 0.65:
                peer.package()
            peer.backlog = int(event * 1000) % 7
            peer.reading_paused = event > 0.97
        verdict = every.check()
        if skipping.now < skipping.liveness.next_check:
            assert verdict is Verdict.NOTHING
        else:
            assert skipping.check() is verdict
        a, b = every.liveness, skipping.liveness
        assert (a.outstanding, a.last_ping, a.charged) == (b.outstanding, b.last_ping, b.charged)
        if verdict is Verdict.DEAD:
            break


class Side:
    """One end of a simulated connection: its liveness and its jittered rounds."""

    def __init__(self, timings: LivenessTimings, jitter: float, rng: random.Random, *, leads: bool):
        self.liveness = Liveness(0.0, timings, leads=leads)
        self.timings, self.jitter, self.rng = timings, jitter, rng
        self.next_round = self.round_length()
        self.dead_at: float | None = None
        self.pings = 0

    def round_length(self) -> float:
        return self.rng.uniform(self.timings.period - self.jitter, self.timings.period)


def simulate(timings: LivenessTimings, jitter: float, seed: int) -> tuple[float, float, int]:
    """
    Two sides running the rules on jittered rounds, over a link with no delay that dies
    at a random time; answers are instant until then. Returns how long after the death
    each side (leader, follower) reached DEAD, and how many pings went out before it.
    """
    rng = random.Random(seed)
    leader = Side(timings, jitter, rng, leads=True)
    follower = Side(timings, jitter, rng, leads=False)
    death = rng.uniform(3 * timings.interval, 6 * timings.interval)
    while leader.dead_at is None or follower.dead_at is None:
        side = min((leader, follower), key=lambda s: s.next_round)
        other = follower if side is leader else leader
        now = side.next_round
        side.next_round += side.round_length()
        if side.dead_at is not None:
            continue
        last = min(now, death)  # what the side last heard, in this model
        verdict = side.liveness.check(now, last_bytes=last, last_package=last)
        if verdict is Verdict.PING:
            side.liveness.ping_sent(now)
            if now < death:
                side.pings += 1
                other.liveness.ping_received(now)
                side.liveness.pong_received(now)
        elif verdict is Verdict.DEAD:
            side.dead_at = now
    assert leader.dead_at is not None and follower.dead_at is not None
    return leader.dead_at - death, follower.dead_at - death, leader.pings + follower.pings


def test_default_options_find_a_dead_link_within_40_s_on_both_sides() -> None:
    """The requirement, checked on the rules with the shipped options: a link that
    dies is found within 40 s by each side (websockets' keepalive bound: a 20 s ping
    interval plus a 20 s ping timeout)."""
    options = NodeOptions(server=True, client=True)
    timings = options.liveness_timings()
    assert timings == LivenessTimings(interval=20.0, timeout=10.0, period=3.0)
    assert timings.detection_bound == 39.0
    worst = 0.0
    for seed in range(300):
        leader, follower, _ = simulate(timings, options.heartbeat_jitter, seed)
        worst = max(worst, leader, follower)
    assert worst <= timings.detection_bound <= 40.0


def test_the_two_sides_share_one_ping_per_interval() -> None:
    """Idle peers cost one ping per interval and connection, not one per side: with
    the defaults, about one per 20 s, websockets' keepalive rate (one in five or so from
    the side that dialled, see PUT_OFF_INTERVALS: it puts the leader's off)."""
    options = NodeOptions(server=True, client=True)
    timings = options.liveness_timings()
    rng = random.Random(1)
    leader = Side(timings, options.heartbeat_jitter, rng, leads=True)
    follower = Side(timings, options.heartbeat_jitter, rng, leads=False)
    for _ in range(400):  # about 15 minutes
        side = min((leader, follower), key=lambda s: s.next_round)
        other = follower if side is leader else leader
        now = side.next_round
        side.next_round += side.round_length()
        if side.liveness.check(now, last_bytes=now, last_package=now) is Verdict.PING:
            side.liveness.ping_sent(now)
            side.pings += 1
            other.liveness.ping_received(now)
            side.liveness.pong_received(now)
    minutes = leader.next_round / 60
    # One every 20 to 23 s; one per PUT_OFF_INTERVALS (100 s) from the side that
    # dialled, which puts the leader's next one off in turn.
    assert 2.5 <= (leader.pings + follower.pings) / minutes <= 3
    assert 0.4 <= follower.pings / minutes <= 0.6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "interval must be a positive number of seconds, not 0"),
        ({"timeout": -1.0}, "timeout must be a positive number of seconds, not -1.0"),
        ({"period": float("inf")}, "period must be a positive number of seconds, not inf"),
    ],
)
def test_timings_check_themselves(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LivenessTimings(**kwargs)
