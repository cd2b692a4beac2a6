"""Admission, the duplicate-connection rule and block scope, on a fake clock."""

from __future__ import annotations

import pytest

from trustp2p.protocol.admission import (
    Admission,
    BlockScope,
    Refusal,
    block_scope,
    keep_new_connection,
)
from trustp2p.protocol.close import CloseCode
from trustp2p.protocol.limits import AddressLimiter

from ..conftest import FakeClock


def admission(
    *, max_inbound: int | None = 3, blocked: frozenset[str] = frozenset(), **limits: object
) -> Admission:
    limiter = AddressLimiter(exempt_loopback=False, **limits)  # type: ignore[arg-type]
    return Admission(max_inbound=max_inbound, limiter=limiter, is_blocked=blocked.__contains__)


def test_blocked_address_is_refused_quietly(clock: FakeClock) -> None:
    rules = admission(blocked=frozenset({"10.0.0.1"}))
    assert rules.admit(1, "10.0.0.1", clock()) == Refusal(
        CloseCode.POLICY_VIOLATION, "blocked", warn=False
    )
    assert len(rules) == 0


def test_max_inbound_then_release_frees_a_slot(clock: FakeClock) -> None:
    rules = admission(max_inbound=2)
    assert rules.admit(1, "10.0.0.1", clock()) is None
    assert rules.admit(2, "10.0.0.2", clock()) is None
    refusal = rules.admit(3, "10.0.0.3", clock())
    assert refusal == Refusal(CloseCode.TRY_AGAIN_LATER, "inbound connections maxed out", warn=True)
    rules.release(1)
    rules.release(1)  # twice is harmless
    assert len(rules) == 1
    assert rules.admit(3, "10.0.0.3", clock()) is None


def test_per_address_concurrency(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, max_concurrent=1)
    assert rules.admit(1, "10.0.0.1", clock()) is None
    refusal = rules.admit(2, "10.0.0.1", clock())
    assert refusal is not None and refusal.reason == (
        "too many connections from your address (limit 1)"
    )
    assert rules.admit(3, "10.0.0.2", clock()) is None
    rules.release(1)
    assert rules.admit(4, "10.0.0.1", clock()) is None


def test_per_address_rate_refills_with_time(clock: FakeClock) -> None:
    rules = admission(max_inbound=None, max_concurrent=None, rate=1.0, burst=2)
    assert rules.admit(1, "10.0.0.1", clock()) is None
    assert rules.admit(2, "10.0.0.1", clock()) is None
    refusal = rules.admit(3, "10.0.0.1", clock())
    assert refusal is not None and refusal.reason == "connecting too often (limit 1/s, burst 2)"
    clock.advance(1.0)
    assert rules.admit(4, "10.0.0.1", clock()) is None


def test_release_of_a_refused_connection_changes_nothing(clock: FakeClock) -> None:
    rules = admission(max_inbound=1)
    assert rules.admit(1, "10.0.0.1", clock()) is None
    assert rules.admit(2, "10.0.0.2", clock()) is not None
    rules.release(2)
    assert len(rules) == 1


A, B, C = "tpa", "tpb", "tpc"


@pytest.mark.parametrize(
    ("our_id", "new", "existing", "keep"),
    [
        # We are A; peer B. Keep the connection dialled by the smaller id: ours.
        (A, (False, B), (True, B), True),
        (A, (True, B), (False, B), False),
        # We are C; peer B dialled us, we dialled it: keep B's.
        (C, (True, B), (False, B), True),
        (C, (False, B), (True, B), False),
        # Two dialled by the same side: keep the older.
        (A, (False, B), (False, B), False),
        (C, (True, B), (True, B), False),
    ],
)
def test_both_sides_keep_the_same_connection(
    our_id: str, new: tuple[bool, str], existing: tuple[bool, str], keep: bool
) -> None:
    assert (
        keep_new_connection(
            our_id=our_id,
            new_inbound=new[0],
            new_peer_id=new[1],
            existing_inbound=existing[0],
            existing_peer_id=existing[1],
        )
        is keep
    )


def test_the_two_ends_agree() -> None:
    """A's view of the A-B pair and B's view pick the same physical connection."""
    # Connection 1: A dialled B; connection 2: B dialled A. At A, 1 is outbound.
    at_a = keep_new_connection(
        our_id=A, new_inbound=True, new_peer_id=B, existing_inbound=False, existing_peer_id=B
    )
    at_b = keep_new_connection(
        our_id=B, new_inbound=False, new_peer_id=A, existing_inbound=True, existing_peer_id=A
    )
    # A keeps connection 1 (drops the new one, 2); B, whose new one is 2, drops it too.
    assert at_a is False and at_b is False


def test_block_scope() -> None:
    assert block_scope("tpa", "10.0.0.1", limit_loopback=False) == BlockScope("tpa", "10.0.0.1")
    assert block_scope("tpa", "127.0.0.1", limit_loopback=False) == BlockScope("tpa", None)
    assert block_scope(None, "127.0.0.1", limit_loopback=False) is None
    assert block_scope(None, "::ffff:127.0.0.1", limit_loopback=False) is None
    assert block_scope(None, "127.0.0.1", limit_loopback=True) == BlockScope(None, "127.0.0.1")
    assert block_scope(None, None, limit_loopback=True) is None
