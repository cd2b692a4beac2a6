"""The range of each number of :class:`~trustp2p.options.NodeOptions`, checked when
the options are made."""

from __future__ import annotations

__all__ = ["AT_LEAST_ONE", "DURATIONS", "check_numbers"]

import math
from typing import TYPE_CHECKING

from .protocol.handshake import LEAST_PACKAGE_LIMIT

if TYPE_CHECKING:
    from .options import NodeOptions


def check_numbers(options: NodeOptions) -> None:
    """
    Check each number of ``options`` within its own range.

    Raises:
        ValueError: If one is out of it, naming it.

    """
    for name in DURATIONS:
        value = getattr(options, name)
        if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
            unit = "per second" if name.endswith("_rate") else "of seconds"
            raise ValueError(f"{name} must be a positive number {unit}, not {value!r}")
    for name in AT_LEAST_ONE:
        if getattr(options, name) < 1:
            raise ValueError(f"{name} must be at least 1, not {getattr(options, name)}")
    for name, least in (("max_package_size", LEAST_PACKAGE_LIMIT), ("max_inbound", 0)):
        value = getattr(options, name)
        if value is not None and (not isinstance(value, int) or value < least):
            raise ValueError(f"{name} must be an int of at least {least} or None, not {value!r}")
    if options.heartbeat_jitter < 0:
        raise ValueError(f"heartbeat_jitter must not be negative, not {options.heartbeat_jitter}")
    if options.reconnect_factor < 1:
        raise ValueError(f"reconnect_factor must be at least 1, not {options.reconnect_factor}")
    if not 0 <= options.reconnect_jitter < 1:
        raise ValueError(f"reconnect_jitter must be in [0, 1), not {options.reconnect_jitter}")
    if not options.invalid_ratio >= 0:
        raise ValueError(f"invalid_ratio must not be negative, not {options.invalid_ratio}")
    if options.max_per_ip is not None and options.max_per_ip < 1:
        raise ValueError(f"max_per_ip must be at least 1 or None, not {options.max_per_ip}")
    if options.storm_connections is not None and options.storm_connections < 2:
        raise ValueError(
            f"storm_connections must be at least 2 or None, not {options.storm_connections}"
        )
    if options.max_hops > 255:
        raise ValueError(f"max_hops must be at most 255, not {options.max_hops}")
    if options.catchup_interval < 0:
        raise ValueError("catchup_interval must not be negative")
    for name in ("gossip_prune_backoff", "gossip_want_window", "feeler_interval"):
        value = getattr(options, name)
        if not (isinstance(value, int | float) and 0 <= value < math.inf):
            raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")


DURATIONS = (
    "heartbeat_interval",
    "heartbeat_timeout",
    "heartbeat_response_timeout",
    "loop_block_warning",
    "response_timeout",
    "stalled_timeout",
    "reconnect_initial",
    "reconnect_max",
    "open_timeout",
    "close_timeout",
    "frame_timeout",
    "handshake_timeout",
    "block_duration",
    "send_stall_timeout",
    "request_rate",
    "gossip_rate",
    "gossip_node_rate",
    "catchup_serve_rate",
    "ip_rate",
    "storm_window",
    "storm_cooldown",
    "address_rate",
    "exchange_interval",
    "anchor_age",
    "gossip_interval",
    "seen_ttl",
    "log_max_age",
    "gap_timeout",
)
"""Options that must be positive, finite numbers (seconds, or per second for rates)."""

AT_LEAST_ONE = (
    "max_send_queue",
    "max_send_bytes",
    "request_burst",
    "gossip_burst",
    "ip_burst",
    "address_burst",
    "min_packages",
    "max_pending_packages",
    "max_pending_bytes",
    "max_concurrent_requests",
    "write_limit",
    "gossip_degree_low",
    "seen_max",
    "max_hops",
    "log_max_messages",
    "log_max_bytes",
    "catchup_batch",
    "gossip_history",
    "gossip_fanout",
)
"""Counts that must be at least 1."""
