"""
``publish()``'s checks of a payload (:func:`checked_payload`), and its wait for the peers
that carry its topic, carried out on their sockets:
:class:`~trustp2p.protocol.gossip.PublishPacing` decides whom it waits for and how long.

"""

from __future__ import annotations

__all__ = [
    "NobodyCarries",
    "OwnTurns",
    "check_publishing",
    "checked_payload",
    "keep_task",
    "sign_own",
    "take_seq",
    "wait_for_peers",
    "wait_until",
]

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..drivers.base import Socket
from ..exceptions import ConnectionClosed, NodeStateError
from ..protocol.deliver import ConnId
from ..protocol.gossip import (
    GossipMessage,
    PublishPacing,
    message_size_limit,
    payload_size,
    payload_text,
    sign_message,
    stream_key,
)
from ..protocol.gossip.pacing import PROGRESS_TICK
from ..protocol.package import Body
from .gossip_validate import Validation, Validator, judge

if TYPE_CHECKING:
    from ..storage.msglog import MessageLog
    from .node import Node

logger = logging.getLogger("trustp2p.node.gossip")


def checked_payload(topic: str, data: Body, max_package_size: int | None) -> tuple[Body, int]:
    """
    The payload a message of ``topic`` carries for ``data``, as every node receives it
    (this one too: not the caller's dict), and its size in bytes, about.

    Raises:
        ValueError: If the topic is empty or too long, ``data`` holds NaN or a string
            that isn't valid Unicode, or the message would take more than a quarter of
            ``max_package_size``.
        TypeError: If ``data`` is not a JSON-serializable dict.

    """
    text = payload_text(topic, data)
    data = json.loads(text)  # what every node receives, this one too: not the caller's
    size, cap = payload_size(text), message_size_limit(max_package_size)
    if cap is not None and size > cap:
        raise ValueError(
            f"message of about {size} bytes exceeds {cap}, a quarter of "
            "max_package_size (so that catch-up answers always fit in a package)"
        )
    return data, size


async def sign_own(
    node: Node, log: MessageLog, topic: str, data: Body, validator: Validator | None, ms: int
) -> tuple[GossipMessage, int]:
    """
    Sign ``data`` as this node's next message of ``topic`` (``ms``: its timestamp, the
    seq the next free one now: :func:`take_seq` takes it) and let the topic's
    ``validator`` judge it as peers running the same rule will; return it and its size
    (:func:`checked_payload`). Outside ``publish()``'s lock: a validator may publish,
    and a slow one holds up no other topic's publishes (found in review).

    Raises:
        ValueError: If the validator rejects it (not published, no seq taken: found by
            a tester, an application's bug published two messages its own rule refused,
            and every peer running that rule blocked the node for an hour), or see
            :func:`checked_payload`.
        TypeError: See :func:`checked_payload`.

    """
    identity = node.identity
    assert identity is not None
    # Check everything before taking a seq: one not used is a gap subscribers wait for.
    payload, size = checked_payload(topic, data, node.options.max_package_size)
    key = stream_key(topic, identity.peer_id)
    message = sign_message(identity, topic, log.last_used(key) + 1, ms, payload)
    if validator is None:
        return message, size
    with _judging(topic):
        verdict = await judge(node, validator, message, None)
    if verdict is Validation.REJECT:
        raise ValueError(
            f"the validator of {topic!r} rejects this message: not published (peers "
            "running the same rule would count it against this node)"
        )
    return message, size


def check_publishing(publishing: bool) -> None:
    """Raise :exc:`NodeStateError` unless ``publishing``."""
    if not publishing:
        raise NodeStateError(
            "the node is stopping: publish() works until the threads' stop() returned"
        )


class _Judging:
    """A topic's own publish being judged, while ``active``."""

    __slots__ = ("active", "topic")

    def __init__(self, topic: str) -> None:
        self.topic, self.active = topic, True


_JUDGING: contextvars.ContextVar[tuple[_Judging, ...]] = contextvars.ContextVar(
    "trustp2p_judging", default=()
)
"""The own publishes being judged in this context (a validator's, and the tasks it
starts, while it runs: not after, nor the tasks of the publish's turn, a topic's
delivery among them: found in review): :class:`OwnTurns`."""


@contextlib.contextmanager
def _judging(topic: str) -> Iterator[None]:
    marker = _Judging(topic)
    token = _JUDGING.set((*_JUDGING.get(), marker))
    try:
        yield
    finally:
        marker.active = False
        _JUDGING.reset(token)


_NO_TURN = contextlib.nullcontext()


class OwnTurns:
    """
    Per topic with a validator, one own publish at a time judged and numbered
    (:func:`sign_own`, then :func:`take_seq`): found in review, two overlapping ones were
    judged with the same seq, the second published with the next (a rule on seqs judged
    another message than the one sent), and numbered in the order their validators
    returned, not the calls'. A publish made while judging one (by a validator, or a
    task it started) waits for no turn: validators of two topics publishing to each
    other's waited for each other for ever (found in review); one to a topic judged in
    its chain raises (unguarded, it recursed 246 times).
    """

    __slots__ = ("_locks",)

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}  # (the node's own topics: its code's)

    def turn(self, topic: str, judged: bool) -> contextlib.AbstractAsyncContextManager[None]:
        """The turn of a publish to ``topic``: none unless ``judged`` (it has a
        validator).

        Raises:
            ValueError: (Entered) if a publish to ``topic`` is being judged in this
                context: its validator publishes to it again.

        """
        return self._turn(topic) if judged else _NO_TURN

    @contextlib.asynccontextmanager
    async def _turn(self, topic: str) -> AsyncIterator[None]:
        judging = {j.topic for j in _JUDGING.get() if j.active}
        if topic in judging:
            raise ValueError(f"the validator of {topic!r} publishes to {topic!r}, its own topic")
        if judging:  # (a validator's publish: waits for no turn; judged with the seq free
            yield  # then, it may be numbered after another's of its topic)
        else:
            async with self._locks.setdefault(topic, asyncio.Lock()):
                yield


def take_seq(node: Node, log: MessageLog, message: GossipMessage) -> GossipMessage:
    """``message`` (:func:`sign_own`'s) with its seq taken: signed again with the next
    free one if another was taken meanwhile (another publish, a lost log's numbers)."""
    identity = node.identity
    assert identity is not None
    seq = log.next_seq(stream_key(message.topic, identity.peer_id))
    if seq == message.seq:
        return message
    return sign_message(identity, message.topic, seq, message.timestamp, message.body)


class NobodyCarries:
    """
    Says (INFO) when ``publish()`` finds no connected peer carrying its topic: once
    per topic, and again only after a publish found one and a later one none. Found by
    a new user whose two clients of a hub exchanged nothing, and nothing said so: a node
    relays only the topics it carries (GossipSub), and the hub's threads handled none.
    """

    __slots__ = ("_said",)

    def __init__(self) -> None:
        self._said: set[str] = set()  # topics said to be carried by nobody, since

    def said(self, topic: str, *, carrying: bool) -> None:
        """A message of ``topic`` was published; some connected peer carries it, or not."""
        if carrying:
            self._said.discard(topic)
        elif topic not in self._said:
            self._said.add(topic)
            logger.info("= no connected peer carries topic %r: what is published there is "
                        "kept in the log, and reaches subscribers that connect and catch "
                        "up (a hub relays only the topics it carries: give it relay_topics, "
                        "--relay-topic %s)", topic, topic)  # fmt: skip


async def wait_for_peers(
    pacing: PublishPacing[ConnId],
    sockets: Iterable[Socket],
    clock: Callable[[], float],
    size: int = 0,
) -> None:
    """
    Wait for the write buffers of ``sockets`` (the open connections that carry the
    message's topic) to drain, those and as long as ``pacing`` says for a message of
    ``size`` bytes, all at once; then tell it how long each took. A peer has drained
    once its buffer is under the mark, or once it took the message's size (what we
    wrote to it less what is still on its way: our buffers and the kernel's, which takes
    from ours in large steps).

    The application's own burst thus waits for the peers that carry the topic to take
    it, as send() does, so that it doesn't fill their send queues; as long as
    ``pacing`` says (:data:`~trustp2p.protocol.gossip.pacing.PUBLISH_WAIT` at most), not
    for slow peers (what they miss meanwhile, they catch up). Found by attackers: one
    peer that read nothing, then one that read just before each wait's second was up,
    held every publish().
    """
    by_id = {socket.id: socket for socket in sockets if not socket.closed}
    behind = {peer: socket.write_paused for peer, socket in by_id.items()}
    peers, timeout = pacing.plan(behind, size)
    if not peers:
        return
    start = clock()
    took: dict[ConnId, float | None] = dict.fromkeys(peers)

    async def drain(peer: ConnId) -> None:
        socket = by_id[peer]
        first = _taken(socket)
        with contextlib.suppress(ConnectionClosed):
            while socket.write_paused and not socket.closed:
                taken = _taken(socket)
                if taken is not None and first is not None and pacing.has_taken(taken - first):
                    break
                with contextlib.suppress(TimeoutError):  # (sampling: real time passing)
                    async with asyncio.timeout(PROGRESS_TICK):
                        await socket.drain()
        took[peer] = clock() - start

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            for peer in peers:
                group.create_task(drain(peer))
    pacing.waited(took, clock() - start)


def _taken(socket: Socket) -> int | None:
    """The bytes ``socket``'s peer has taken so far; None if the driver can't tell."""
    in_flight = socket.bytes_in_flight()
    return None if in_flight <= 0 else socket.stats.bytes_out - in_flight


async def wait_until(
    changed: Callable[[], asyncio.Event],
    count: Callable[[], int],
    wanted: int,
    node: Node,
) -> int:
    """Wait until ``count()`` is ``wanted`` or more, looking again each time the event
    ``changed()`` gives is set (it is set and replaced at each change, and at the
    node's stop); return it.

    Raises:
        NodeStateError: If ``node`` is stopping or stopped, at once or when it stops:
            what is waited for can't come any more.

    """
    while (have := count()) < wanted:
        if (state := node.state.value) in ("stopping", "stopped"):
            raise NodeStateError(f"the node is {state}, not running")
        await changed().wait()
    return have


def keep_task(
    tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]
) -> asyncio.Task[None]:
    """``work`` in a task held in ``tasks`` until it ends (the loop holds tasks weakly);
    its failure is retrieved there, as its caller may have been cancelled meanwhile."""
    task = asyncio.ensure_future(work)
    tasks.add(task)

    def ended(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # (said to the caller, if it still waits)

    task.add_done_callback(ended)
    return task
