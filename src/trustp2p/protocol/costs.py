"""
What a received package's body costs its peer's budgets beyond its one token: its JSON
values and containers (read at about 0.02-0.3 µs each), the values read the slow way
(:func:`~trustp2p.protocol.jsontext.slow_values`), and a gossip package's size. Counted
on the text at C speed, before or right after it is read. No I/O here.

"""

from __future__ import annotations

__all__ = [
    "CONTAINERS_PER_GOSSIP_TOKEN",
    "GOSSIP_BYTES_PER_TOKEN",
    "SLOW_VALUES_PER_GOSSIP_TOKEN",
    "SLOW_VALUES_PER_TOKEN",
    "VALUES_PER_TOKEN",
    "body_cost",
    "count_chars",
    "gossip_cost",
]


VALUES_PER_TOKEN = 1_000
"""JSON values in a received request's or talk's body that cost one more token of its
peer's request budget, counted as the ``[``, ``{``, ``,`` and ``:`` of its text (a
container opens with one, each value after a container's first follows one, and so
does each key's value). Reading a body costs the event loop about 0.1-0.3 µs per
container and 0.02-0.2 µs per value, less than 0.01 µs per character of a string:
found by an attacker, 1 MB bodies of ``[[],[],...]`` (330,000 lists) took 80 ms each
at 100 packages/s a peer; and with only the brackets counted (attacker49 F2), 1 MiB of
``["x","x",...]`` (259,000 strings) took 43 ms to read, of 95,000 keys 23 ms, at one
token each: 14 a second kept a node's core busy. So a peer makes the node read about
``request_rate`` thousand values a second (100,000 by default), besides its packages."""


SLOW_VALUES_PER_TOKEN = 500
"""Values of a body read the slow way (:func:`~trustp2p.protocol.jsontext.slow_values`:
the standard library's reader, up to 0.4 µs each) that cost one more token: found in
review, 1 MiB bodies of floats with one 19-digit integer took 101-117 ms each at one
token (one peer at 10 a second: a core); now about 500 tokens, 5 s of the default
budget. A gossip package pays one per :data:`SLOW_VALUES_PER_GOSSIP_TOKEN` (its budget
is ten times larger)."""

SLOW_VALUES_PER_GOSSIP_TOKEN = 50
"""The same for a gossip package (review68: read the slow way, one with junk beside its
``data`` was charged nothing for it)."""


def count_chars(text: str, chars: str) -> int:
    """
    How many times the characters of ``chars`` occur in ``text``, as the sum of
    ``text.count(char)`` for each, at memchr speed when they are sparse in ASCII text.

    ``str.count`` of one character checks a character a cycle, one at a time: counting
    ``[`` and ``{`` in a 256 KiB body took 170-250 µs, a fifth of a server's CPU per
    echoed body (py-spy, ``request_response.py --body-size 262144``). ``str.find`` of
    one character goes through memchr, many bytes a cycle: 7.6 µs for the same two.
    Past one match per 4,096 characters, each found by a call, ``str.count`` counts
    them all instead, so a dense text costs about 1.1 times what ``str.count`` does
    (review91 F2: past one in 256, a crafted text cost 2.5 times). Text that isn't ASCII
    goes to ``str.count`` at once: in text of two-byte characters memchr stops at each
    byte ``0x5b`` or ``0x7b`` of other characters (宇, 家: 4.7 times, review91).
    """
    if not text.isascii():
        return sum(text.count(char) for char in chars)
    total = 0
    limit = 16 + (len(text) >> 12)
    find = text.find
    for char in chars:
        found = 0
        at = find(char)
        while at >= 0:
            found += 1
            if found > limit:
                found = text.count(char)
                break
            at = find(char, at + 1)
        total += found
    return total


def body_cost(body_json: str, slow: int = 0) -> int:
    """Tokens ``body_json`` costs beyond its package's one: one per
    :data:`VALUES_PER_TOKEN` brackets, braces, commas and colons in the text (those in
    strings too: a text can't be counted more exactly at C speed; a peer's own requests
    and talks, never others' it passes on), and one per :data:`SLOW_VALUES_PER_TOKEN`
    of the ``slow`` values its reading took the slow way. A short text costs nothing
    for its values, and isn't counted."""
    tokens = slow // SLOW_VALUES_PER_TOKEN
    if len(body_json) < 2 * VALUES_PER_TOKEN:  # can't hold that many values
        return tokens
    return tokens + count_chars(body_json, "[{,:") // VALUES_PER_TOKEN


CONTAINERS_PER_GOSSIP_TOKEN = 100
"""The same for the containers of a gossip package outside its ``data`` (the gossip
budget is ten times the request budget by default: the same containers a second)."""


_ESCAPED_BRACKETS = ("\\u005b", "\\u005B", "\\u007b", "\\u007B")

GOSSIP_BYTES_PER_TOKEN = 16384
"""A gossip package costs a token of its peer's gossip budget more per this many
characters of its body: a message's text is read, parsed and hashed before anything
can tell it is a copy. Found by an attacker: one valid 200 KB message sent again and
again on one connection, a token each, took 98 % of the node's core (193 MB/s read);
talks of the same size, held to ``request_rate``, took 10 %. A relay passes 1,000
messages under 16 KiB a second by default, or 15 of 1 MiB (about 15 MB/s)."""


def gossip_cost(body_json: str, data: object, slow: int = 0) -> int:
    """
    Tokens a gossip package costs beyond its one: one per
    :data:`CONTAINERS_PER_GOSSIP_TOKEN` brackets and braces of its text outside its
    ``data`` string. The application's body travels in ``data`` as a string, and a relay
    passes on what others originated: counting its brackets throttled honest relays
    (found by an attacker); counting none let junk beside it through (found in review:
    ``{"junk": [[],[],...]}`` is read whole before anything looks at it).

    The text's brackets are counted escaped too (``\\u005b``), so that brackets written
    so in ``data``, subtracted once decoded, can't cancel junk beside it, less the text
    that only looks like an escape (``\\\\u005b``: six characters of ``data``, which a
    relay would otherwise pay for); a key given twice only adds text to count (found in
    review). Nothing beyond its one token for a message as relays write it. (What a
    peer can still hide: an escaped bracket after an escaped backslash, seven bytes of
    ``data`` for each bracket of junk, on its own connection only.) And one per
    :data:`SLOW_VALUES_PER_GOSSIP_TOKEN` of the ``slow`` values its reading took the
    slow way (review68 A1).
    """
    tokens = slow // SLOW_VALUES_PER_GOSSIP_TOKEN
    if len(body_json) < 2 * CONTAINERS_PER_GOSSIP_TOKEN:
        return tokens
    brackets = count_chars(body_json, "[{")
    if "\\u" in body_json:  # escapes, less text that only looks like one (\\u005b)
        for escaped in _ESCAPED_BRACKETS:
            brackets += body_json.count(escaped) - body_json.count("\\" + escaped)
    if type(data) is str:
        brackets -= count_chars(data, "[{")
    return tokens + max(brackets, 0) // CONTAINERS_PER_GOSSIP_TOKEN
