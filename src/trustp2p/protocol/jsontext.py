"""
Compact JSON text for package bodies, fast.

``orjson`` (a dependency) writes and reads the text when it can: on a 256 KiB body it is
about 50 times faster than the standard library at writing and twice as fast at reading.
The standard library's ``json`` takes over for what orjson refuses (integers beyond 64
bits, non-string keys, nesting past 255 levels, lone surrogates) and gives the error
messages, so that every body either side accepts is accepted the same way.

What the text looks like (``docs/original-wire-format.md`` asks an implementation to say):
compact, in the caller's key order, non-ASCII characters kept as UTF-8; floats in the
shortest form that reads back the same, ``1.0`` as ``1.0``, ``-0.0`` as ``-0.0``,
``1e16`` as ``1e+16``, ``1e-7`` as ``1e-7``, ``1e-5`` as ``0.00001`` (JavaScript writes
``1``, ``0``, ``10000000000000000``, ``1e-7``, ``0.00001``). Only a request's tag depends
on it, and receivers never recompute tags. Integers of any size are written, and of up
to :data:`MAX_INT_DIGITS` digits read, exactly (JavaScript reads those beyond 2**53 as
the nearest float); NaN and the infinities are refused both ways. A lone surrogate
read (``"\\ud800"``: JavaScript's ``JSON.stringify`` writes one for a string that holds
it) becomes U+FFFD, as JavaScript's ``TextEncoder`` writes it in UTF-8, so that what is
read can be written.
"""

from __future__ import annotations

__all__ = [
    "MAX_INT_DIGITS",
    "Unwritable",
    "dumps",
    "loads",
    "read_json",
    "slow_values",
    "text_size",
]

import gc
import json
import re
from typing import Any

from .costs import count_chars

try:
    import orjson
except ImportError:  # pragma: no cover - orjson is a dependency; this is a safety net
    orjson = None  # type: ignore[assignment]


class Unwritable(ValueError):
    """JSON text that reads, but whose value :func:`dumps` can't write back as UTF-8."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _not_serializable(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


MAX_INT_DIGITS = 400
"""Most digits of an integer in a text :func:`loads` reads (2**1024 has 309): reading
and writing back a long one costs the square of its length (found by an attacker: 1 MiB
of 4,299-digit integers took 126 ms to read, bracket-free, so at one request token)."""


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits (at most {MAX_INT_DIGITS})")
    return int(text)


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_bounded_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_int=_bounded_int)
_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ORJSON_OPTIONS = (
    orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS if orjson else 0
)

# json.dumps() and JSONDecoder.decode() wrap C functions in several Python calls: the
# fallback calls the C parts directly, as JSONEncoder.iterencode(_one_shot=True) does.
_c_encode = (
    json.encoder.c_make_encoder(  # type: ignore[attr-defined]
        None,  # no cycle check: a cycle ends in RecursionError, reported as ValueError
        _not_serializable,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
    if getattr(json.encoder, "c_make_encoder", None) is not None
    else None
)
_scan_once = _json_decoder.scan_once  # type: ignore[attr-defined]
_bounded_scan_once = _bounded_decoder.scan_once  # type: ignore[attr-defined]


def text_size(text: str) -> int:
    """
    What ``text`` weighs in the bounds that say bytes (the message log's and the held
    messages' payload, the recent cache, the gossip budget): its length for ASCII,
    else the larger of its UTF-8 size and what CPython holds it in, counted as 2 bytes
    a character, or 4 with a character beyond U+FFFF (then the whole string takes 4
    bytes a character). Found by an attacker (attacker37 N3): counted as characters,
    messages of 4-byte characters held 4 times ``log_max_bytes`` in memory and on
    disk. Two encodings in C, about 1 ms a MiB (found in review: a scan for the widest
    character took 12 to 27 ms a MiB, about 11 times a message); a function of the
    text alone, so that what is added and removed counts the same.
    """
    if text.isascii():  # (a flag)
        return len(text)
    size = len(text)
    utf8 = len(text.encode("utf-8", "surrogatepass"))
    wide = len(text.encode("utf-16-le", "surrogatepass")) > 2 * size  # (a surrogate pair)
    return max(utf8, (4 if wide else 2) * size)


def dumps(value: dict[str, Any]) -> str:
    """
    ``value`` as compact JSON text.

    Raises:
        TypeError: If it holds something JSON can't represent.
        ValueError: If it holds NaN or an infinity, or is nested too deeply, or holds a
            reference cycle.

    """
    if orjson is not None:
        try:
            data = orjson.dumps(value, option=_ORJSON_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError: let the standard library say
            pass
        else:
            # orjson writes NaN and the infinities as null: refuse them. The loop, inline
            # (this runs per package), passes the usual body: strings and integers only;
            # a walk only where null was written (a handler echoing a peer's 1 MB of
            # [{},...] walked it: 0.1 s).
            for child in value.values():
                if type(child) is not str and type(child) is not int:
                    if b"null" in data and _has_float(value, _INF):
                        _stdlib_dumps(value)
                    break
            return data.decode()
    return _stdlib_dumps(value)


def _stdlib_dumps(value: Any) -> str:
    if _c_encode is None:  # pragma: no cover - interpreters without the C encoder
        text: str = _json_encoder.encode(value)
        return text
    try:
        return "".join(_c_encode(value, 0))
    except RecursionError:
        raise ValueError("body is nested too deeply, or holds a reference cycle") from None


_INF = float("inf")


ORJSON_MAX_DEPTH = 255
"""Nesting orjson writes; deeper values go to the standard library, whose writer
recurses (and may fail before the 1,024 levels orjson reads)."""


def _has_float(value: Any, limit: float) -> bool:
    """Whether ``value`` holds a float that isn't strictly between ``-limit`` and
    ``limit`` (NaN included). Walks the containers, not the text: cheap for a large
    string, and no dearer than the text for many small values."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict or (kind is not list and isinstance(item, dict)):
            items: Any = item.values()
        elif kind is list or isinstance(item, list | tuple):
            items = item
        elif isinstance(item, float):
            if not -limit < item < limit:
                return True
            continue
        else:
            continue
        for child in items:  # strings and integers, the common values, stay off the stack
            if type(child) is not str and type(child) is not int:
                stack.append(child)
    return False


_DIGITS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))  # digits as "0"
_LONG_NUMBER = b"0" * 19  # 2**63 has 19 digits: integers orjson reads exactly have fewer
_HUGE_NUMBER = b"0" * (MAX_INT_DIGITS + 1)


def _exact(text: str, value: Any) -> bool:
    """Whether orjson read ``text`` as ``value`` exactly, and can write it back: no
    integer beyond 64 bits (which orjson reads as a float: the text has no run of 19
    digits, anywhere, so none), no nesting past :data:`ORJSON_MAX_DEPTH` (fewer brackets
    than that, or orjson writes it). Checked on the text at C speed: a walk of the value
    in Python took 0.37 s for 1 MB of ``[{},{},...]`` on every package (found by an
    attacker: a few MB/s of such bodies took the event loop from every other peer)."""
    if _LONG_NUMBER in text.encode("utf-8", "surrogatepass").translate(_DIGITS):
        return False
    if count_chars(text, "[{") > ORJSON_MAX_DEPTH:
        try:
            orjson.dumps(value, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            return False
    return True


GC_PAUSE_CHARS = 65_536
"""Texts at least this long are read with the cyclic garbage collector paused: every list
read is a container it tracks, and 1 MB of ``[[],[],...]`` set off hundreds of
collections (86 ms to read, 31 ms paused; in a process with a large heap, 350-540 ms)."""


def loads(text: str) -> Any:
    """
    The value of JSON text.

    Raises:
        json.JSONDecodeError: If it isn't JSON.
        ValueError: If it holds NaN or an infinity; :exc:`Unwritable` if it holds what
            :func:`dumps` can't write back as UTF-8: a number too large for a float
            (``1e999``), nesting deeper than the writer takes. (A lone surrogate,
            ``"\\ud800"``, is read as U+FFFD.)
        RecursionError: If it is nested too deeply.

    """
    if len(text) < GC_PAUSE_CHARS or not gc.isenabled():
        return _loads(text)
    gc.disable()  # either reader: the standard library's (a long number) reads it twice
    try:
        return _loads(text)
    finally:
        gc.enable()


def read_json(text: str) -> Any:
    """
    ``json.loads(text)``: the same value, or the same error, read by orjson when it
    reads the text the same way (no run of 19 digits, nesting orjson writes back: see
    :func:`_exact`), the standard library's reader otherwise (NaN, ``1e999``, a lone
    surrogate, integers beyond 64 bits, deep nesting). For what the standard library
    must keep deciding (gossip ``data``: every node, of every version, accepts the same
    texts) at orjson's speed: a 200 KB list of floats read in 0.9 ms against 8.9 (found
    in review: a relay spent 53 ms on 1 MiB of them, at one gossip token).

    Raises:
        json.JSONDecodeError: If it isn't JSON.
        ValueError: If an integer has more digits than Python converts.
        RecursionError: If it is nested too deeply.

    """
    if orjson is not None:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the standard library reads it, or says why not
        else:
            if _exact(text, value):
                return value
    return json.loads(text)


_slow_values = 0


def slow_values() -> int:
    """Values (``,`` and ``:`` of the text, plus one) that the standard library's reader
    took so far in this process: the slow way (a run of 19 digits, in a string too, a
    lone surrogate, deep nesting, what orjson refuses), about 0.4 µs a value (floats)
    against orjson's 0.01-0.05; a string costs little more there than with orjson. The
    difference around a read is what that read cost (found in review: a 1 MiB body of
    floats with one 19-digit integer took 101-117 ms, at one request token; charged by
    its characters, an honest body of 64-bit ids was charged 25 times its cost)."""
    return _slow_values


def _loads(text: str) -> Any:
    global _slow_values
    if orjson is not None:
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the standard library reads what orjson refuses, or says why not
        else:
            # orjson reads an integer beyond 64 bits as a float: read it exactly. As in
            # dumps(), the usual body passes without a call.
            if type(value) is dict:
                for child in value.values():
                    if type(child) is not str and type(child) is not int:
                        break
                else:
                    return value
            # Deep nesting goes the slow way too: what it reads must be written back.
            if _exact(text, value):
                return value
    _slow_values += text.count(",") + text.count(":") + 1
    # A run of digits past MAX_INT_DIGITS (in a string, maybe): each integer checked.
    bounded = _HUGE_NUMBER in text.encode("utf-8", "surrogatepass").translate(_DIGITS)
    try:
        value, end = (_bounded_scan_once if bounded else _scan_once)(text, 0)
    except StopIteration:
        end = -1
    if end != len(text):  # leading or trailing space, or an error: decode() tells
        value = (_bounded_decoder if bounded else _json_decoder).decode(text)
    return _writable(value)


_SURROGATE = re.compile(r"[\ud800-\udfff]")  # (re reads the escapes)


def _writable(value: Any) -> Any:
    """``value``, its lone surrogates made U+FFFD; raise :exc:`Unwritable` unless it
    can then be written back (what orjson refused and the standard library read: a body
    accepted is one a handler can send back)."""
    try:
        _stdlib_dumps(value).encode()
    except UnicodeEncodeError:  # a lone surrogate: the stdlib's text escapes it
        text = json.dumps(value, ensure_ascii=False)  # (an infinity: refused below)
        return _writable(json.loads(_SURROGATE.sub("\ufffd", text)))
    except ValueError as exc:  # 1e999 read as an infinity, or nested too deeply to write
        reason = "a number out of range" if "Out of range" in str(exc) else str(exc)
        raise Unwritable(reason) from None
    return value
