"""Body JSON text: orjson's fast path and the standard library's, one behaviour."""

from __future__ import annotations

import datetime
import gc
import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, strategies as st

from trustp2p.protocol import jsontext

from ..conftest import gc_runs
from ..strategies import json_values

JSON = json_values(
    floats=st.floats(allow_nan=False, allow_infinity=False), text=st.text(), max_leaves=20
)


@pytest.fixture(params=["orjson", "stdlib"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on both paths: with orjson, and as where it isn't installed."""
    if request.param == "stdlib":
        monkeypatch.setattr(jsontext, "orjson", None)
    return str(request.param)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (1e16, "1e+16"),
        (1.2345678901234568e20, "1.2345678901234568e+20"),
        ("é/\u2028\n\x01", '"é/\u2028\\n\\u0001"'),
        (2**70, str(2**70)),
        (-(2**63) - 1, str(-(2**63) - 1)),
        (None, "null"),
    ],
)
def test_the_documented_text(value: Any, text: str) -> None:
    assert jsontext.dumps({"v": value}) == f'{{"v":{text}}}'


@pytest.mark.parametrize(("value", "orjson_text"), [(1e-7, "1e-7"), (1e-5, "0.00001")])
def test_small_floats_are_written_as_javascript_does(value: float, orjson_text: str) -> None:
    assert jsontext.dumps({"v": value}) == f'{{"v":{orjson_text}}}'


@given(st.dictionaries(st.text(max_size=8), JSON, max_size=5))
def test_both_paths_read_back_what_either_writes(body: dict[str, Any]) -> None:
    text = jsontext.dumps(body)
    assert jsontext.loads(text) == body
    assert json.loads(text) == body  # the standard library reads it the same
    stdlib = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    assert jsontext.loads(stdlib) == body


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinities_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match=r"not JSON compliant|Out of range"):
        jsontext.dumps({"v": [1, None, bad]})
    with pytest.raises(ValueError, match=r"not JSON compliant|Out of range"):
        jsontext.dumps({"v": {"w": (None, bad)}})


@pytest.mark.usefixtures("path")
def test_what_json_cannot_represent_is_a_type_error() -> None:
    for value in (datetime.datetime(2026, 1, 1), object(), {1, 2}, b"bytes"):
        with pytest.raises(TypeError, match="not JSON serializable"):
            jsontext.dumps({"v": value})


@pytest.mark.usefixtures("path")
def test_nesting_and_cycles() -> None:
    deep: Any = []
    for _ in range(300):  # past orjson's 255 levels, within the standard library's
        deep = [deep]
    assert jsontext.loads(jsontext.dumps({"v": deep})) == {"v": deep}
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(ValueError, match="nested too deeply"):
        jsontext.dumps(cycle)


@pytest.mark.usefixtures("path")
def test_integers_beyond_64_bits_read_exactly() -> None:
    text = '{"a":123456789012345678901234567890,"b":[-9223372036854775809],"c":1e300}'
    assert jsontext.loads(text) == {
        "a": 123456789012345678901234567890,
        "b": [-9223372036854775809],
        "c": 1e300,
    }


@pytest.mark.parametrize(
    "text",
    [
        '{"a":[{"b":[18446744073709551616]}]}',
        '{"a":[[-9223372036854775809,1]]}',
        '{"a":[{"b":"12345678901234567890123"}],"c":[1.5]}',  # digits in a string
        '{"a":[1234567890123456789.5]}',
        '{"a":[' + ",".join(["{}"] * 300) + "]}",  # brackets past 255, flat
    ],
)
def test_nested_values_are_read_exactly(text: str) -> None:
    # Found by an attacker: nested values were checked for integers orjson reads as
    # floats by a walk in Python, 0.37 s for 1 MB of [{},{},...] on the event loop; the
    # text is checked instead. What it reads is what the standard library reads.
    value = jsontext.loads(text)
    assert value == json.loads(text)
    assert repr(value) == repr(json.loads(text))  # 2**64 as an int, not a float


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('{"a":NaN}', ValueError),
        ('{"a":Infinity}', ValueError),
        ('{"a":1', json.JSONDecodeError),
        ('{"a":"\x01"}', json.JSONDecodeError),
    ],
)
def test_bad_text_raises_the_standard_library_errors(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        jsontext.loads(text)


@pytest.mark.usefixtures("path")
def test_whitespace_is_read() -> None:
    assert jsontext.loads(' {"a": 1} ') == {"a": 1}


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"a":1e999}', "a number out of range"),
        ('{"a":-1e400}', "a number out of range"),
    ],
)
def test_what_could_not_be_written_back_is_refused(text: str, reason: str) -> None:
    # Found by an attacker's test: these were read (lone surrogate, 1e999 as inf, deep
    # nesting the writer refuses), so a handler echoing the body failed, with an ERROR
    # and a traceback per request. A body accepted is now a body that can be sent back.
    with pytest.raises(ValueError, match=re.escape(reason)):
        jsontext.loads(text)


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('{"a":"\\ud800"}', {"a": "\ufffd"}),
        ('{"\\udc00x":["\\ud800\\ud800",1e999]}', None),
        ('{"a":"\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a pair: one character
    ],
)
def test_a_lone_surrogate_is_read_as_the_replacement_character(
    text: str, value: dict[str, object] | None
) -> None:
    # Found by a tester against the original: JavaScript's JSON.stringify writes a lone
    # surrogate as "\ud800", and such a response was refused (the request then timed
    # out). It reads as U+FFFD, as JavaScript's TextEncoder writes it in UTF-8, and
    # what is read can be written back.
    if value is None:  # what can't be written for another reason is still refused
        with pytest.raises(ValueError, match="a number out of range"):
            jsontext.loads(text)
        return
    assert jsontext.loads(text) == value
    assert jsontext.loads(jsontext.dumps(value)) == value


@pytest.mark.usefixtures("path")
@pytest.mark.parametrize("depth", [256, 300, 1000, 1010, 1023])
def test_deep_nesting_is_read_only_if_it_can_be_written(depth: int) -> None:
    # Found in review: orjson reads up to 1,024 levels, the writer's fallback (the
    # standard library's, past orjson's 255) recurses and may fail sooner.
    text = '{"a":' + "[" * depth + "]" * depth + "}"
    try:
        value = jsontext.loads(text)
    except (ValueError, RecursionError):
        return
    assert jsontext.loads(jsontext.dumps(value)) == value


_LEAVES = ['"x"', '"\\ud800"', '"\\udc00x"', "1", "1e308", "1e999", "-1e999", "2e-400", "123" * 30]


@given(st.sampled_from(_LEAVES), st.integers(0, 1200), st.booleans())
def test_what_is_read_can_be_written(leaf: str, depth: int, in_object: bool) -> None:
    # Deep nesting too, whatever the depth of the stack the test runs on.
    opening, closing = ('{"k":', "}") if in_object else ("[", "]")
    text = opening * depth + leaf + closing * depth
    try:
        value = jsontext.loads(text)
    except (ValueError, RecursionError):
        return
    jsontext._stdlib_dumps(value).encode()  # raises if it can't be written back


@pytest.mark.parametrize(
    "extra",
    ["", ',"id":"1234567890123456789"', f',"n":{2**70}', ',"s":"\\ud800"'],
    ids=["orjson", "19-digit-string", "wide-integer", "lone-surrogate"],
)
def test_long_texts_are_read_with_the_collector_paused(extra: str) -> None:
    # Found by an attacker: 1 MB of [[],[],...] set off hundreds of collections (every
    # list is a container the collector tracks): 86 ms a read, 31 ms paused. And in
    # review: on the standard library's path too (a long number, a lone surrogate),
    # where the text is read twice: 941 collections, 330 ms.
    text = '{"x":[' + "[]," * 99_999 + "[]]" + extra + "}"
    assert len(text) >= jsontext.GC_PAUSE_CHARS
    with gc_runs() as begun:
        value = jsontext.loads(text)
        during = len(begun)
    assert gc.isenabled()
    gc.disable()  # an application that turned the collector off keeps it off
    try:
        assert jsontext.loads(text) == value
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert len(value["x"]) == 100_000
    assert during <= 1  # the one that follows the read, not hundreds


def test_text_size_counts_the_widest_of_memory_and_utf8() -> None:
    """attacker37 N3: bounds in bytes counted characters, and payloads of 4-byte
    characters held 4 times them in memory and on disk."""
    assert jsontext.text_size("abc") == 3
    assert jsontext.text_size("é" * 10) == 20  # 1 byte in memory, 2 in UTF-8
    assert jsontext.text_size("中" * 10) == 30  # 2 in memory, 3 in UTF-8
    assert jsontext.text_size("Ā" * 10) == 20  # 2 in memory, 2 in UTF-8
    assert jsontext.text_size("\U0001f600" * 10) == 40
    assert jsontext.text_size("x" * 99 + "\U0001f600") == 400  # the whole string is wide


@given(st.text())
def test_text_size_bounds_utf8_and_memory(text: str) -> None:
    """At least its UTF-8 size and what CPython holds it in (1, 2 or 4 bytes a
    character, the widest character's), at most 4 bytes a character."""
    utf8 = len(text.encode("utf-8", "surrogatepass"))
    width = 1 if not text or max(text) < "\u0100" else 2 if max(text) < "\U00010000" else 4
    assert max(utf8, width * len(text)) <= jsontext.text_size(text) <= 4 * len(text)


@pytest.mark.parametrize("sign", ["", "-"])
def test_integers_past_max_int_digits_are_refused_unread(sign: str) -> None:
    """Reading (and writing back) a long integer costs the square of its length: an
    attacker's 1 MiB of 4,299-digit integers took 126 ms, at one request token."""
    most = "9" * jsontext.MAX_INT_DIGITS
    assert jsontext.loads(f'{{"n":{sign}{most}}}') == {"n": int(sign + most)}
    with pytest.raises(ValueError, match=r"an integer of 401 digits \(at most 400\)"):
        jsontext.loads(f'{{"n":[1,{sign}{most}9]}}')


def test_a_long_run_of_digits_in_a_string_is_no_integer() -> None:
    digits = "1" * (10 * jsontext.MAX_INT_DIGITS)
    assert jsontext.loads(f'{{"s":"{digits}","n":{"9" * 30}}}') == {"s": digits, "n": int("9" * 30)}


# read_json(): json.loads() at orjson's speed where orjson reads the same (gossip data:
# found in review, a relay spent 53 ms on 1 MiB of floats read by the standard library).


def _typed(value: Any) -> str:
    """The value as text that tells 1 from 1.0 and -0.0 from 0.0, NaN included."""
    return json.dumps(value)


@given(json_values(max_leaves=20))
def test_read_json_reads_what_json_loads_reads(value: Any) -> None:
    text = json.dumps(value)  # NaN and the infinities written as the stdlib does
    assert _typed(jsontext.read_json(text)) == _typed(json.loads(text))


_JSONISH = st.text(alphabet='{}[]:,"\\ 0123456789.-+eEaNnIfinityrulsx\ud800', max_size=30)


@given(_JSONISH)
def test_read_json_refuses_what_json_loads_refuses(text: str) -> None:
    try:
        expected = _typed(json.loads(text))
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            jsontext.read_json(text)
    else:
        assert _typed(jsontext.read_json(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "[1.5,2.25,-0.0,1e308,5e-324]",
        '{"a":1,"a":2.0,"b":[{}]}',
        "NaN",
        "[Infinity,-Infinity]",
        "1e999",
        '"\\ud800"',
        str(2**64),
        '"1234567890123456789"',
        "[" * 300 + "]" * 300,
        " [1] ",
    ],
)
def test_read_json_is_json_loads_where_orjson_differs(text: str) -> None:
    assert _typed(jsontext.read_json(text)) == _typed(json.loads(text))


@pytest.mark.parametrize(
    "text",
    [
        "[" * 2000 + "]" * 2000,  # (too deep for json.loads before Python 3.13, not after)
        "[" * 200_000 + "]" * 200_000,
        "1" * 4301,
        "\ufeff{}",
        "{",
        "",
    ],
)
def test_read_json_raises_what_json_loads_raises(text: str) -> None:
    try:
        expected = json.loads(text)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            jsontext.read_json(text)
    else:
        assert _typed(jsontext.read_json(text)) == _typed(expected)
