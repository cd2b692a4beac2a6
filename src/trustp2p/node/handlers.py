"""
The handler registry: which thread handles which (package type, event).

Built once when the node loads its threads; the node's dispatch, gossip delivery and
any user thread look handlers up here.

"""

from __future__ import annotations

__all__ = ["RESERVED_TALKS", "SILENCE_GRACE", "ExplicitAnswers", "HandlerEntry", "HandlerRegistry"]

from collections.abc import Iterator, KeysView

from ..exceptions import ThreadLoadError
from ..protocol.gossip import MAX_PEER_TOPICS, MAX_TOPIC_LENGTH
from ..protocol.handshake import HELLO_EVENT, VERSION_EVENT
from ..protocol.package import REQUEST_TYPES, RESPONSE_TYPES, PackageType
from ..threads.base import Handler, Thread
from ..threads.loader import check_event_map

HandlerEntry = tuple[Thread, Handler]
"""A thread and one of its handlers."""

_Key = tuple[PackageType, str]

RESERVED_TALKS = frozenset({HELLO_EVENT, VERSION_EVENT})
"""TALK events the node uses to introduce itself: no thread may handle them (a thread's
``hello`` would be read as the peer's introduction)."""


class HandlerRegistry:
    """
    Handlers by (package type, event), in thread load order.

    A REQUEST, RESPONSE, HEARTBEAT_PING or HEARTBEAT_PONG event has one handler (its
    answer is the response); talks and gossip topics may have several, called in order.

    """

    def __init__(self) -> None:
        self._entries: dict[_Key, list[HandlerEntry]] = {}
        self._topics = 0  # GOSSIP topics handled
        self.explicit = ExplicitAnswers()
        """The requests answered with ``send_response()`` lately."""

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[_Key]:
        return iter(self._entries)

    @property
    def handled(self) -> KeysView[_Key]:
        """The ``(package type, event)`` pairs some thread handles: a live view, for the
        per-connection protocol's checks (``in`` on it costs no Python call)."""
        return self._entries.keys()

    def handles(self, package_type: PackageType, event: str) -> bool:
        """Whether some thread handles ``event`` for ``package_type``."""
        return (package_type, event) in self._entries

    def get(self, package_type: PackageType, event: str) -> list[HandlerEntry]:
        """The handlers of ``event`` for ``package_type``; empty when there are none."""
        return self._entries.get((package_type, event), [])

    def events(self, package_type: PackageType) -> list[str]:
        """The events handled for ``package_type``, in registration order."""
        return [event for kind, event in self._entries if kind is package_type]

    def _check_topic(self, where: str, topic: str) -> None:
        """A GOSSIP topic the node can subscribe to (what its peers accept)."""
        if not 0 < len(topic) <= MAX_TOPIC_LENGTH:
            raise ThreadLoadError(
                where, f"GOSSIP topic of {len(topic)} characters: 1 to {MAX_TOPIC_LENGTH}"
            )
        if (PackageType.GOSSIP, topic) not in self._entries:
            if self._topics >= MAX_PEER_TOPICS:
                raise ThreadLoadError(
                    where, f"more than {MAX_PEER_TOPICS} GOSSIP topics, all threads together"
                )
            self._topics += 1

    def add_thread(self, thread: Thread) -> None:
        """
        Register every handler of ``thread``'s event map.

        Raises:
            ThreadLoadError: If the event map is malformed, names a TALK the node
                reserves (:data:`RESERVED_TALKS`), a request or response event another
                thread already handles, or a GOSSIP topic peers refuse (empty, over 256
                characters, past the 1,000th).

        """
        where = thread.path or type(thread).__qualname__
        for package_type, events in check_event_map(thread).items():
            for event, handler in events.items():
                if package_type is PackageType.TALK and event in RESERVED_TALKS:
                    reserved = ", ".join(sorted(RESERVED_TALKS))
                    raise ThreadLoadError(
                        where, f"TALK {event!r} is reserved by the node (reserved: {reserved})"
                    )
                if package_type is PackageType.GOSSIP:
                    self._check_topic(where, event)
                entries = self._entries.setdefault((package_type, event), [])
                if entries and (package_type in REQUEST_TYPES or package_type in RESPONSE_TYPES):
                    other = entries[0][0]
                    raise ThreadLoadError(
                        where,
                        f"{package_type.name} {event!r} is already handled by "
                        f"{other.path or type(other).__name__}",
                    )
                entries.append((thread, handler))  # type: ignore[arg-type]


SILENCE_GRACE = 10.0
"""Seconds a request handler that returned None has to answer (``Thread.answer``,
``send_response()``) before it is warned of, once: found by a new user, whose handler
answered from a task 0.1 s later and was warned of all the same."""


class ExplicitAnswers:
    """
    The requests (connection id and tag) asked and answered lately (the last ``keep``),
    once ``send_response()`` answered any, and those whose handler returned None and
    that weren't answered yet: to tell a request handler that answers later (or
    answered already) from one that forgot its ``return`` (found by a tester, whose
    requester waited ``response_timeout``, 300 s, with nothing logged on either side),
    and one that answers twice (another's: the peer counted the others as unmatched,
    unsaid). An answer is one too many when every request of its tag asked on its
    connection was answered: two identical requests pending at once (a peer that
    doesn't merge them, or a requester that timed out and asked again) are two to
    answer (found in review: said to be answered twice).
    """

    __slots__ = ("_doubled", "_keep", "_open", "_said", "_silent", "grace", "used")

    def __init__(self, keep: int = 1024, grace: float = SILENCE_GRACE) -> None:
        self._keep = keep
        self.grace = grace
        """Seconds a handler that returned None has to answer (:data:`SILENCE_GRACE`)."""
        self._open: dict[tuple[int, str], int] = {}  # requests not answered yet, or 0
        self._silent: set[tuple[int, str]] = set()  # returned None, not answered yet
        self._said: set[tuple[str, str]] = set()
        self._doubled: set[tuple[str, str]] = set()
        self.used = False
        """Whether ``send_response()`` answered any request yet: only then are requests
        counted (:meth:`asked`, and answers returned by handlers: :meth:`add`)."""

    def add(self, conn: int, tag: str) -> bool:
        """A response with ``tag`` was sent on ``conn``: True if each request of that
        tag asked there was answered already (then ask :meth:`first_double`). A request
        not seen asked (before :attr:`used`) is this answer's."""
        key = (conn, tag)
        self.used = True
        self._silent.discard(key)
        waiting = self._open.pop(key, 1)
        self._remember(key, max(waiting - 1, 0))
        return waiting == 0

    def asked(self, conn: int, tag: str) -> None:
        """A request ``tag`` arrived on ``conn``: one more to answer (the same request
        asked again, once answered, is answered afresh)."""
        key = (conn, tag)
        self._remember(key, self._open.pop(key, 0) + 1)
        self._silent.discard(key)

    def _remember(self, key: tuple[int, str], waiting: int) -> None:
        self._open[key] = waiting  # (last: the newest)
        if len(self._open) > self._keep:
            del self._open[next(iter(self._open))]

    def returned_none(self, conn: int, tag: str) -> bool:
        """A request handler returned None for the request ``tag`` on ``conn``: True
        if it isn't answered yet (then ask :meth:`first_silence` :attr:`grace` seconds
        later)."""
        key = (conn, tag)
        if self._open.get(key) == 0:
            return False
        self._silent.add(key)
        return True

    def first_silence(self, thread: str, event: str, conn: int, tag: str) -> bool:
        """:attr:`grace` seconds after :meth:`returned_none`: True if nothing answered
        ``tag`` since, the first time for that thread and event (said once: a handler
        that always answers late isn't told each time)."""
        key = (conn, tag)
        if key not in self._silent:
            return False
        self._silent.discard(key)
        if (thread, event) in self._said:
            return False
        self._said.add((thread, event))
        return True

    def first_double(self, where: str, event: str) -> bool:
        """A request of ``event`` was answered twice: True the first time for ``where``
        (a thread, or ``send_response()``) and that event (said once)."""
        if (where, event) in self._doubled:
            return False
        self._doubled.add((where, event))
        return True
