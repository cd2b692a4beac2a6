"""Many clients behind one address (a NAT) on a fake clock: with ``max_per_ip`` raised,
the address's connection rate, burst and reconnect storm threshold rise as much, so
that they can all reconnect at once after a server restart (tester39 F1: 30 clients,
``max_per_ip`` 64, 14 kept out 60-110 s by ``ip_burst`` 16 and ``storm_connections``
20); at the default ``max_per_ip`` the limits are as before."""

from __future__ import annotations

import pytest

from trustp2p.options import NodeOptions
from trustp2p.protocol.admission import Admission, Admitted, Refusal
from trustp2p.protocol.close import CloseCode
from trustp2p.protocol.limits import MAX_PER_IP, SITE_SHARE, ReconnectStorms, address_share

from ..conftest import FakeClock

NAT = "10.239.0.2"


def rules(options: NodeOptions) -> Admission:
    return Admission(
        max_inbound=options.max_inbound,
        limiter=options.address_limiter(),
        is_blocked=frozenset[str]().__contains__,
        storms=options.reconnect_storms(),
    )


def test_the_default_limits_are_unchanged() -> None:
    options = NodeOptions(server=True)
    assert (options.max_per_ip, MAX_PER_IP, options.address_share()) == (8, 8, 1.0)
    limiter = options.address_limiter()
    assert (limiter.max_concurrent, limiter.rate, limiter.burst) == (8, 0.2, 16)
    storms = options.reconnect_storms()
    assert storms is not None
    assert (storms.connections, storms.address_connections) == (20, 20)


@pytest.mark.parametrize(
    ("max_per_ip", "ip_burst", "expected"),
    [
        (None, 16, (0.2, 16, 20)),  # no limit at once: the rate as set
        (4, 16, (0.2, 16, 20)),  # lowered: the rate as set
        (8, 16, (0.2, 16, 20)),
        (12, 16, (0.3, 24, 30)),
        (64, 16, (1.6, 128, 160)),
        (16, 3, (0.4, 6, 40)),  # the operator's own burst, raised as much
        (10_000, 16, (3.2, 256, 320)),  # review57: at most 16 addresses' worth
    ],
)
def test_the_address_limits_rise_with_max_per_ip(
    max_per_ip: int | None, ip_burst: int, expected: tuple[float, int, int]
) -> None:
    options = NodeOptions(server=True, max_per_ip=max_per_ip, ip_burst=ip_burst)
    limiter = options.address_limiter()
    storms = options.reconnect_storms()
    assert storms is not None
    assert (limiter.rate, limiter.burst, storms.address_connections) == pytest.approx(expected)
    assert storms.connections == 20  # a peer id is one client, wherever it is
    assert address_share(max_per_ip) == options.address_share()


def test_clients_behind_one_nat_reconnect_at_once_after_a_restart(clock: FakeClock) -> None:
    # The restarted server knows nothing of them: 64 dial within a second, all let in.
    admission = rules(NodeOptions(server=True, max_per_ip=64))
    for conn_id in range(64):
        assert admission.admit(conn_id, NAT, clock()) == Admitted()
        clock.advance(0.015)
    assert admission.admit(64, NAT, clock()) == Refusal(
        CloseCode.TRY_AGAIN_LATER, "too many connections from your address (limit 64)", warn=True
    )
    for conn_id in range(10):  # a few drop and come back at once
        admission.release(conn_id)
        assert admission.admit(100 + conn_id, NAT, clock()) == Admitted()


def test_at_the_default_max_per_ip_the_seventeenth_dial_at_once_is_refused(
    clock: FakeClock,
) -> None:
    admission = rules(NodeOptions(server=True))
    for conn_id in range(16):
        assert admission.admit(conn_id, NAT, clock()) == Admitted()
        admission.release(conn_id)
    assert admission.admit(16, NAT, clock()) == Refusal(
        CloseCode.TRY_AGAIN_LATER, "connecting too often (limit 0.2/s, burst 16)", warn=True
    )


def test_a_peer_id_storms_at_storm_connections_whatever_its_address_may_hold(
    clock: FakeClock,
) -> None:
    admission = rules(NodeOptions(server=True, max_per_ip=64))
    assert [admission.identified("tpa", clock()) for _ in range(19)] == [None] * 19
    refusal = admission.identified("tpa", clock())
    assert refusal is not None and refusal.reason.startswith("reconnecting too often")


def test_a_key_counted_by_address_storms_at_address_connections(clock: FakeClock) -> None:
    storms = ReconnectStorms(connections=3, address_connections=6)
    assert [storms.arrive("address:a", clock(), by_address=True) for _ in range(5)] == [None] * 5
    cooldown = storms.arrive("address:a", clock(), by_address=True)
    assert cooldown is not None and cooldown.started
    assert [storms.arrive("peer:a", clock()) for _ in range(2)] == [None] * 2
    assert storms.arrive("peer:a", clock()) is not None
    assert ReconnectStorms(connections=3).address_connections == 3


def test_a_48s_budget_does_not_rise_with_max_per_ip(clock: FakeClock) -> None:
    """review57: the /48's budget against an attacker rotating /64s rose with the
    address's (eightfold at ``max_per_ip`` 64): it stays SITE_SHARE default addresses'
    worth."""
    admitted = {}
    for max_per_ip in (8, 64):
        limiter = NodeOptions(server=True, max_per_ip=max_per_ip).address_limiter()
        hosts = [f"2001:db8:1:{n:x}::1" for n in range(1, 1000)]  # fresh /64s of one /48
        admitted[max_per_ip] = sum(limiter.admit(host, clock()) is None for host in hosts)
    assert admitted[64] == admitted[8] == SITE_SHARE * 16  # (a burst of 16 each)
