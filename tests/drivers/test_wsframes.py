"""The WebSocket frames the drivers write by hand, read back with websockets' parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from trustp2p.drivers._wsframes import binary_frame_parts, binary_frames

# Each length where the header changes form (RFC 6455 §5.2: 7-bit, 16-bit, 64-bit).
EDGES = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def read_frames(data: bytes, *, masked: bool) -> list[Frame]:
    """Parse ``data`` as a peer does: a server expects masked frames, a client not."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=masked)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - the parser wanted more than data holds
            raise AssertionError("a frame is cut short")
    return frames


@pytest.mark.parametrize("masked", [False, True])
def test_frames_at_each_header_size_read_back(masked: bool) -> None:
    messages = [bytes([n % 251]) * n for n in EDGES]
    data = binary_frames(messages, masked=masked)
    frames = read_frames(data, masked=masked)
    assert [(f.opcode, f.fin, f.data) for f in frames] == [
        (Opcode.BINARY, True, m) for m in messages
    ]
    # Each frame's header is as short as its length allows (the parser accepts longer).
    sizes = sum(2 + (2 if n >= 126 else 0) + (6 if n >= 65536 else 0) for n in EDGES)
    assert len(data) == sizes + (4 * len(EDGES) if masked else 0) + sum(EDGES)


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_any_batch_reads_back(messages: list[bytes], masked: bool) -> None:
    data = binary_frames(messages, masked=masked)
    assert [f.data for f in read_frames(data, masked=masked)] == messages
    for message in messages:
        one = b"".join(binary_frame_parts(message, masked=masked))
        assert [f.data for f in read_frames(one, masked=masked)] == [message]


def test_each_masked_frame_has_its_own_key() -> None:
    data = binary_frames([b"\0" * 4] * 3, masked=True)
    # Zeros masked are the key itself: three frames of 2 + 4 + 4 bytes.
    keys = [data[i + 2 : i + 6] for i in range(0, 30, 10)]
    assert [data[i + 6 : i + 10] for i in range(0, 30, 10)] == keys
    assert len(set(keys)) == 3
