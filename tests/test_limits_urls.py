"""Unit tests of the sans-I/O limits (token buckets, per-address limits, netgroups) and
of peer URL parsing and validation."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from trustp2p.identity import Identity
from trustp2p.protocol.limits import AddressLimiter, TokenBucket, is_loopback, netgroup
from trustp2p.protocol.urls import (
    MAX_URL_LENGTH,
    check_dial_url,
    is_unspecified,
    split_peer_url,
    validate_url,
    validate_urls,
)

# A fixed key: test ids must be the same in every pytest-xdist worker.
PEER_ID = Identity(Ed25519PrivateKey.from_private_bytes(bytes(range(32)))).peer_id


# TokenBucket


def test_token_bucket_starts_full_and_spends_its_burst() -> None:
    bucket = TokenBucket(rate=1, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.debt == 1


def test_token_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    assert not bucket.take(0.25)  # half a token
    assert bucket.take(0.5)  # one token: 0.5 s at 2/s
    assert not bucket.take(0.5)
    assert not bucket.full(1.0)  # 1 token, not 3
    assert bucket.full(2.0)
    # Refilling stops at the burst: a long pause gives 3 tokens, not 20.
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]


def test_token_bucket_debt_counts_refusals_until_it_is_full_again() -> None:
    bucket = TokenBucket(rate=1, burst=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert not bucket.take(0.0)
    assert not bucket.take(0.5)
    assert bucket.debt == 2
    # A token came back, but the bucket wasn't full: the debt stays.
    assert bucket.take(1.0)
    assert bucket.debt == 2
    assert not bucket.take(1.0)
    assert bucket.debt == 3
    # Full again: the next take clears the debt.
    assert bucket.take(3.0)
    assert bucket.debt == 0


def test_token_bucket_ignores_a_clock_going_back() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=10.0)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert bucket.take(11.0)


@pytest.mark.parametrize(
    ("rate", "burst", "message"),
    [
        (0, 5, "need rate > 0 and burst >= 1, not 0 and 5"),
        (-1, 5, "need rate > 0 and burst >= 1, not -1 and 5"),
        (1, 0, "need rate > 0 and burst >= 1, not 1 and 0"),
        (1, 0.5, "need rate > 0 and burst >= 1, not 1 and 0.5"),
    ],
)
def test_token_bucket_checks_its_arguments(rate: float, burst: float, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        TokenBucket(rate, burst, 0.0)


# AddressLimiter


def test_address_limiter_concurrency_and_release() -> None:
    limiter = AddressLimiter(max_concurrent=2, rate=100, burst=100)
    assert limiter.admit("10.0.0.1", 0.0) is None
    assert limiter.admit("10.0.0.1", 0.0) is None
    assert limiter.open_from("10.0.0.1") == 2
    assert limiter.admit("10.0.0.1", 0.0) == "too many connections from your address (limit 2)"
    assert limiter.open_from("10.0.0.1") == 2  # a refusal isn't counted
    # Another address has its own count.
    assert limiter.admit("10.0.0.2", 0.0) is None
    limiter.release("10.0.0.1")
    assert limiter.open_from("10.0.0.1") == 1
    assert limiter.admit("10.0.0.1", 0.0) is None
    limiter.release("10.0.0.1")
    limiter.release("10.0.0.1")
    assert limiter.open_from("10.0.0.1") == 0


def test_address_limiter_rate_and_burst() -> None:
    limiter = AddressLimiter(max_concurrent=None, rate=0.5, burst=3)
    for _ in range(3):
        assert limiter.admit("10.0.0.1", 0.0) is None
        limiter.release("10.0.0.1")
    assert limiter.admit("10.0.0.1", 0.0) == "connecting too often (limit 0.5/s, burst 3)"
    assert limiter.admit("10.0.0.1", 1.0) == "connecting too often (limit 0.5/s, burst 3)"
    assert limiter.admit("10.0.0.1", 2.0) is None  # one token per 2 s
    assert limiter.admit("10.0.0.1", 2.0) == "connecting too often (limit 0.5/s, burst 3)"
    # Other addresses have their own bucket.
    assert limiter.admit("10.0.0.2", 2.0) is None


def test_address_limiter_defaults_message() -> None:
    limiter = AddressLimiter(exempt_loopback=False)
    for _ in range(8):
        assert limiter.admit("127.0.0.1", 0.0) is None
    assert limiter.admit("127.0.0.1", 0.0) == "too many connections from your address (limit 8)"
    for _ in range(8):
        limiter.release("127.0.0.1")
    for _ in range(8):  # 16 in the burst, 8 spent
        assert limiter.admit("127.0.0.1", 0.0) is None
        limiter.release("127.0.0.1")
    assert limiter.admit("127.0.0.1", 0.0) == "connecting too often (limit 0.2/s, burst 16)"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.255.254", "::1", "localhost"])
def test_address_limiter_exempts_loopback(host: str) -> None:
    limiter = AddressLimiter(max_concurrent=1, rate=0.001, burst=1)
    for _ in range(50):
        assert limiter.admit(host, 0.0) is None
    # Loopback connections are still counted, so that release() balances.
    assert limiter.open_from(host) == 50
    for _ in range(50):
        limiter.release(host)
    assert limiter.open_from(host) == 0


def test_address_limiter_can_limit_loopback() -> None:
    limiter = AddressLimiter(max_concurrent=1, rate=0.001, burst=5, exempt_loopback=False)
    assert limiter.admit("127.0.0.1", 0.0) is None
    assert limiter.admit("127.0.0.1", 0.0) == "too many connections from your address (limit 1)"


def test_address_limiter_forgets_refilled_buckets_past_max_tracked() -> None:
    limiter = AddressLimiter(max_concurrent=None, rate=1, burst=2, max_tracked=3)
    for i in range(3):
        assert limiter.admit(f"10.0.0.{i}", 0.0) is None
    assert limiter.admit("10.0.0.0", 0.0) is None  # 10.0.0.0's burst is spent
    # At t=10 every bucket refilled: they carry no information and go.
    assert limiter.admit("10.0.0.10", 10.0) is None
    assert limiter.tracked == 1
    # An address that was forgotten gets a full burst again.
    assert limiter.admit("10.0.0.0", 10.0) is None
    assert limiter.admit("10.0.0.0", 10.0) is None
    assert limiter.admit("10.0.0.0", 10.0) == "connecting too often (limit 1/s, burst 2)"


def test_address_limiter_stays_within_max_tracked() -> None:
    """review38: past the bound only refilled buckets were forgotten, so a flood of new
    addresses (none of them refilled yet) grew the table without bound, each new one
    scanning all of it. The least recently seen go too now, /64s and /48s alike."""
    limiter = AddressLimiter(max_concurrent=None, rate=0.01, burst=1, max_tracked=100)
    for i in range(1000):
        assert limiter.admit(f"10.0.{i // 256}.{i % 256}", i * 0.001) is None
        assert limiter.admit(f"2001:db8:{i:x}:1::1", i * 0.001) is None  # a /48 each
    assert limiter.tracked <= 200
    # A busy address, seen last, is still remembered: it stays limited.
    assert limiter.admit("10.0.3.231", 1.0) == "connecting too often (limit 0.01/s, burst 1)"


def test_address_limiter_forgets_the_least_recently_seen() -> None:
    limiter = AddressLimiter(max_concurrent=None, rate=0.01, burst=1, max_tracked=100)
    assert limiter.admit("192.0.2.1", 0.0) is None  # its burst spent
    for i in range(1000):
        assert limiter.admit(f"10.0.{i // 256}.{i % 256}", 0.0) is None
        if i % 50 == 0:  # it keeps trying: seen lately, it stays limited
            assert limiter.admit("192.0.2.1", 0.0) == "connecting too often (limit 0.01/s, burst 1)"
    assert limiter.admit("10.0.0.0", 0.0) is None  # (forgotten: a full burst again)


def test_a_slash_48_refusal_leaves_no_slash_64_behind() -> None:
    """review39: the /64's bucket was made and its token spent before its /48 refused
    it, so a /48's fresh /64s pushed other addresses out of the table."""
    limiter = AddressLimiter(max_concurrent=None, rate=0.01, burst=1, max_tracked=1000)
    admitted = [limiter.admit(f"2001:db8:0:{i:x}::1", 0.0) for i in range(100)]
    assert admitted.count(None) == 16  # the /48's share: 16 x burst 1
    assert limiter.tracked == 16 + 1  # those /64s and the /48, not 100 /64s


# Netgroups


@pytest.mark.parametrize(
    ("host", "group"),
    [
        ("10.1.2.3", "10.1.0.0/16"),
        ("10.1.255.255", "10.1.0.0/16"),
        ("10.2.0.1", "10.2.0.0/16"),
        ("203.0.113.7", "203.0.0.0/16"),
        ("2001:db8:1:2::1", "2001:db8::/32"),
        ("2001:db8:ffff::1", "2001:db8::/32"),
        ("2001:db9::1", "2001:db9::/32"),
        ("::ffff:10.1.2.3", "10.1.0.0/16"),  # IPv4-mapped: its IPv4 group
        ("::ffff:0a01:0203", "10.1.0.0/16"),
        ("seed.example.org", "example.org"),  # a name: its last two labels
        ("a1.attacker.example", "attacker.example"),
        ("Seed.Example.ORG.", "example.org"),
    ],
)
def test_netgroup(host: str, group: str) -> None:
    assert netgroup(host) == group


def test_ipv4_mapped_peers_share_the_group_of_their_ipv4_address() -> None:
    assert netgroup("::ffff:192.0.2.1") == netgroup("192.0.2.200")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("::2", False),
        ("example.org", False),
        ("", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_ipv4_mapped_loopback_is_loopback() -> None:
    assert is_loopback("::ffff:127.0.0.1")


# split_peer_url


def test_split_peer_url_without_id() -> None:
    assert split_peer_url("ws://127.0.0.1:1107") == ("ws://127.0.0.1:1107", None)
    assert split_peer_url("tcp://h:1/") == ("tcp://h:1/", None)


def test_split_peer_url_with_id() -> None:
    assert split_peer_url(f"ws://127.0.0.1:1107/p2p/{PEER_ID}") == ("ws://127.0.0.1:1107", PEER_ID)
    assert split_peer_url(f"tcp://h:1/p2p/{PEER_ID}/") == ("tcp://h:1", PEER_ID)


@pytest.mark.parametrize(
    ("url", "tail"),
    [
        ("ws://h:1/p2p/", ""),
        ("ws://h:1/p2p/nope", "nope"),
        (f"ws://h:1/p2p/{PEER_ID}x", f"{PEER_ID}x"),
        (f"ws://h:1/p2p/{PEER_ID}?q", f"{PEER_ID}?q"),
        (f"ws://h:1/p2p/{PEER_ID.upper()}", PEER_ID.upper()),
    ],
)
def test_split_peer_url_refuses_a_bad_id(url: str, tail: str) -> None:
    message = f"{url!r} ends in {tail!r}, which is not a peer id"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        split_peer_url(url)


# validate_url


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:1107",
        "ws://127.0.0.1:1107/",
        "wss://seed.example.org:443",
        "tcp://10.1.2.3:1",
        "tcp://10.1.2.3:65535",
        "ws://[2001:db8::1]:1107",
        "ws://my_service:1107",  # a Docker Compose service's name (found by a tester)
        f"ws://127.0.0.1:1107/p2p/{PEER_ID}",
        f"tcp://127.0.0.1:1107/p2p/{PEER_ID}/",
    ],
)
def test_validate_url_accepts(url: str) -> None:
    assert validate_url(url) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        (1107, "URL is a int, not a string"),
        (None, "URL is a NoneType, not a string"),
        (b"ws://h:1", "URL is a bytes, not a string"),
        (["ws://h:1"], "URL is a list, not a string"),
        (
            "ws://h:1/p2p/nope",
            "invalid URL 'ws://h:1/p2p/nope': 'ws://h:1/p2p/nope' ends in 'nope', "
            "which is not a peer id",
        ),
        ("ws://h:99999", "invalid URL 'ws://h:99999': Port out of range 0-65535"),
        (
            "ws://h:abc",
            "invalid URL 'ws://h:abc': Port could not be cast to integer value as 'abc'",
        ),
        (
            "ws://[zz]:1",
            "invalid URL 'ws://[zz]:1': 'zz' does not appear to be an IPv4 or IPv6 address",
        ),
        ("http://h:1", "URL 'http://h:1' has scheme 'http'; expected one of ws, wss, tcp"),
        ("h:1", "URL 'h:1' lacks a scheme such as ws://"),  # (tester48 F10: "has scheme")
        ("//h:1", "URL '//h:1' lacks a scheme such as ws://"),
        ("127.0.0.1:1", "URL '127.0.0.1:1' lacks a scheme such as ws://"),
        (
            "file:///etc/passwd",
            "URL 'file:///etc/passwd' has scheme 'file'; expected one of ws, wss, tcp",
        ),
        ("ws://user:secret@h:1", "URL 'ws://user:secret@h:1' holds credentials"),
        ("ws://user@h:1", "URL 'ws://user@h:1' holds credentials"),
        ("ws://:pw@h:1", "URL 'ws://:pw@h:1' holds credentials"),
        ("ws://:1107", "URL 'ws://:1107' has no host"),
        ("ws://a b:1107", "URL 'ws://a b:1107' has an invalid host"),
        ("ws://-a:1107", "URL 'ws://-a:1107' has an invalid host"),
        ("ws://h", "URL 'ws://h' has no valid port"),
        ("ws://h:0", "URL 'ws://h:0' has no valid port"),
        ("ws://h:1/x", "URL 'ws://h:1/x' has a path, query or fragment"),
        (
            "ws://h:1/x/p2p/" + PEER_ID,
            f"URL 'ws://h:1/x/p2p/{PEER_ID}' has a path, query or fragment",
        ),
        ("ws://h:1?a=b", "URL 'ws://h:1?a=b' has a path, query or fragment"),
        ("ws://h:1#f", "URL 'ws://h:1#f' has a path, query or fragment"),
        # What a node bound to every interface announced before listen_urls: its peers
        # stored and passed it on, and a dial of it reaches the dialler's own host.
        (
            "ws://0.0.0.0:1107",
            "URL 'ws://0.0.0.0:1107' names the unspecified address, which nobody can dial",
        ),
        (
            "tcp://[::]:1107",
            "URL 'tcp://[::]:1107' names the unspecified address, which nobody can dial",
        ),
    ],
)
def test_validate_url_rejects(url: object, why: str) -> None:
    assert validate_url(url) == why


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ws://h", "e.g. ws://h:1107 (WebSocket's default, 80, is rarely what was meant)"),
        ("wss://h/", "e.g. wss://h:1107 (WebSocket's default, 443, is rarely what was meant)"),
        ("tcp://[::1]", "e.g. tcp://[::1]:1107 (tcp:// has no default port)"),
        # tester47 F2: the port goes before the peer id, not after it.
        (f"ws://h/p2p/{PEER_ID}", f"e.g. ws://h:1107/p2p/{PEER_ID} (WebSocket's default, 80,"),
        (f"tcp://h/p2p/{PEER_ID}", f"e.g. tcp://h:1107/p2p/{PEER_ID} (tcp:// has no default"),
    ],
)
def test_check_dial_url_shows_where_the_missing_port_goes(url: str, says: str) -> None:
    reason = check_dial_url(url)
    assert reason is not None
    assert reason.startswith(f"URL {url!r} names no port: write it, ")
    assert says in reason


@pytest.mark.parametrize(
    ("url", "unspecified"),
    [
        ("ws://0.0.0.0:1107", True),
        ("ws://[::]:1107/p2p/" + PEER_ID, True),
        ("ws://127.0.0.1:1107", False),
        ("ws://example.org:1107", False),
        ("not a url", False),
    ],
)
def test_is_unspecified(url: str, unspecified: bool) -> None:
    assert is_unspecified(url) is unspecified


def test_an_announced_unspecified_address_is_dropped_without_blame() -> None:
    # Earlier builds announced ws://0.0.0.0:P when listening on every interface: such
    # peers mustn't be penalised while a network upgrades (found in review).
    urls = ["ws://0.0.0.0:1107", "ws://node.example:1107", "tcp://[::]:1107"]
    assert validate_urls(urls, limit=8) == (["ws://node.example:1107"], None)


def test_validate_url_length_limit() -> None:
    base = "ws://h:1/p2p/"
    assert MAX_URL_LENGTH == 256
    # A host of dot-separated labels of at most 63 characters, as DNS allows.
    host = ".".join(["a" * 62] * 4)[: MAX_URL_LENGTH - len("ws://:1")]
    ok = "ws://" + host + ":1"
    assert len(ok) == MAX_URL_LENGTH
    assert validate_url(ok) is None
    long = "ws://" + "a" * (MAX_URL_LENGTH - len("ws://:1") + 1) + ":1"
    assert validate_url(long) == f"URL of {MAX_URL_LENGTH + 1} characters exceeds {MAX_URL_LENGTH}"
    # The length is checked first, before any parsing.
    assert validate_url(base + "x" * 300) == "URL of 313 characters exceeds 256"


@pytest.mark.parametrize("url", ["ws://a b:1", "ws://%00:1", "ws://-:1", "ws://a..b:1"])
def test_validate_url_rejects_a_host_that_is_no_host(url: str) -> None:
    assert validate_url(url) is not None


# validate_urls


def test_validate_urls_keeps_the_good_ones_and_names_the_first_problem() -> None:
    urls, problem = validate_urls(
        [
            "ws://10.0.0.1:1",
            "http://10.0.0.2:1",
            "ws://u:p@10.0.0.3:1",
            "ws://10.0.0.1:1",
            7,
            "tcp://10.0.0.4:2",
        ],
        limit=100,
    )
    assert urls == ["ws://10.0.0.1:1", "tcp://10.0.0.4:2"]
    assert problem == "URL 'http://10.0.0.2:1' has scheme 'http'; expected one of ws, wss, tcp"


def test_validate_urls_duplicates() -> None:
    urls, problem = validate_urls(["ws://h:1", "ws://h:2", "ws://h:1", "ws://h:1"], limit=4)
    assert urls == ["ws://h:1", "ws://h:2"]
    assert problem == "URL 'ws://h:1' appears twice"


def test_validate_urls_duplicates_spelled_differently() -> None:
    urls, problem = validate_urls(["ws://h:1", "WS://H:1", "ws://h:1/", "ws://h:1?"], limit=10)
    assert urls == ["ws://h:1"]
    assert problem is not None


def test_validate_urls_limit() -> None:
    many = [f"ws://10.0.{i // 256}.{i % 256}:1107" for i in range(101)]
    assert validate_urls(many[:100], limit=100) == (many[:100], None)
    # One over the limit: the whole list is refused, without looking at its URLs.
    assert validate_urls(many, limit=100) == ([], "list of 101 URLs exceeds the limit of 100")
    assert validate_urls(["bad"] * 10_000, limit=100) == (
        [],
        "list of 10000 URLs exceeds the limit of 100",
    )
    assert validate_urls([], limit=0) == ([], None)
    assert validate_urls(["ws://h:1"], limit=0) == ([], "list of 1 URLs exceeds the limit of 0")


@pytest.mark.parametrize(
    ("value", "name"),
    [(None, "NoneType"), ("ws://h:1", "str"), ({"ws://h:1": 1}, "dict"), (("ws://h:1",), "tuple")],
)
def test_validate_urls_wants_a_list(value: object, name: str) -> None:
    assert validate_urls(value, limit=100) == ([], f"expected a list of URLs, not {name}")
