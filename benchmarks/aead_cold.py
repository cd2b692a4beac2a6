"""
What one AEAD call of the secure channel costs when its code and data are cold, as in a
sequential round trip, against the same call in a tight loop.

    .venv/bin/python benchmarks/aead_cold.py

In a sequential request/response each process wakes for one message, runs some 70 us
of Python, and sleeps: the ``ChaCha20Poly1305`` code and context of ``cryptography``
(OpenSSL underneath) are out of the caches by the next message. ``timeit`` measures the
call hot. Here each call follows a pass over 8 MiB (which evicts the caches of this
machine) and some Python, and is timed alone with ``perf_counter_ns``; the median of
2,000 calls is printed, with the same for a copy of the data (what a channel without
encryption would do at that point) as the floor. Seal and open of the secure channel's
165-byte plaintext (the request/response benchmark's 164-byte package and its flag).
AES-256-GCM is timed beside it for comparison (Noise's other cipher; the channel uses
ChaCha20-Poly1305).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import timeit
from collections.abc import Callable
from functools import partial

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

PLAINTEXT = os.urandom(165)
_EVICT = bytearray(8 * 1024 * 1024)


def _evict() -> None:
    _EVICT[::64] = bytes(len(_EVICT) // 64)
    sum(range(2000))


def cold_us(call: Callable[[], object], count: int) -> float:
    """Median microseconds of ``call`` right after the caches were evicted."""
    times = []
    for _ in range(count):
        _evict()
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


def hot_us(call: Callable[[], object], count: int) -> float:
    """Best of 5 ``timeit`` runs, microseconds per call."""
    return min(timeit.repeat(call, number=count * 10, repeat=5)) / (count * 10) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="calls timed per figure")
    args = parser.parse_args(argv)
    nonce = bytes(12)
    calls: dict[str, Callable[[], object]] = {}
    for aead in (ChaCha20Poly1305(os.urandom(32)), AESGCM(os.urandom(32))):
        name = type(aead).__name__
        calls[f"seal ({name}.encrypt)"] = partial(aead.encrypt, nonce, PLAINTEXT, None)
        sealed = aead.encrypt(nonce, PLAINTEXT, None)
        calls[f"open ({name}.decrypt)"] = partial(aead.decrypt, nonce, sealed, None)
    calls["copy (bytes + 16-byte tag)"] = lambda: PLAINTEXT + bytes(16)
    print(f"{'call, 165 bytes':34} {'hot us':>8} {'cold us':>8}")
    for name, call in calls.items():
        print(f"{name:34} {hot_us(call, args.count):8.2f} {cold_us(call, args.count):8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
