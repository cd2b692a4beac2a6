"""
The delivered marks a :class:`~.streams.Streams` moves (free of I/O): where they live
(:class:`DeliveryMarks`, the node's message log) and the release marks in memory over
them (:class:`ReleaseMarks`).
"""

from __future__ import annotations

__all__ = ["DeliveryMarks", "ReleaseMarks"]

from typing import Protocol


class DeliveryMarks(Protocol):
    """Where the delivered marks live (the node's message log): per stream key, the
    highest ``seq`` released or skipped, 0 for none."""

    def delivered(self, stream: str, /) -> int: ...

    def mark_delivered(self, stream: str, seq: int, /) -> None: ...

    @property
    def forgotten_before(self) -> float:
        """Wall-clock seconds: the marks forgotten so far had last moved by then."""
        ...


class ReleaseMarks:
    """
    The release marks of :class:`Streams` in memory, over the durable marks of the log.

    A message is *released* (queued for the handlers) before it is *delivered* (its
    handlers ran). The order moves on at release; the durable marks (what a restarted
    node has delivered) move only once the handlers are done (:meth:`settle`), so that a
    crash in between delivers the message again rather than never. A stream's entry
    here is dropped once the durable mark reaches it.
    """

    __slots__ = ("_durable", "_released")

    def __init__(self, durable: DeliveryMarks) -> None:
        self._durable = durable
        self._released: dict[str, int] = {}

    def delivered(self, stream: str, /) -> int:
        """The highest ``seq`` released or skipped (the order's view)."""
        return self._released.get(stream) or self._durable.delivered(stream)

    def mark_delivered(self, stream: str, seq: int, /) -> None:
        if seq > self.delivered(stream):
            self._released[stream] = seq

    @property
    def forgotten_before(self) -> float:
        return self._durable.forgotten_before

    def settle(self, stream: str, seq: int) -> None:
        """Every message of ``stream`` up to ``seq`` was handled: make it durable."""
        self._durable.mark_delivered(stream, seq)
        if self._released.get(stream, 0) <= seq:
            self._released.pop(stream, None)

    def settle_all(self) -> None:
        """Nothing released waits for its handlers: every mark is durable."""
        for stream, seq in self._released.items():
            self._durable.mark_delivered(stream, seq)
        self._released.clear()
