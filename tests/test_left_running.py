"""
Work that catches its CancelledError at a stop and goes on (review61 F2, review63 F2 and
F3): a gossip handler or validator, a hook or handler in a connection's worker, a
request handler, a thread's task. The stop waits for it what is left of
``close_timeout`` (a short grace once hurried), then leaves it running, said at WARNING;
what it ran on is not handled again after a restart, and nothing of its turn or of its
worker's inbox runs once it returns. Loopback, the stubborn work ends only when the
test lets it.

"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, ClassVar

import pytest

from trustp2p import EventMap, Node, Package, PackageType, Socket, Thread
from trustp2p.identity import short_id
from trustp2p.node.gossip import Validation
from trustp2p.node.stopping import StopWaits
from trustp2p.protocol.gossip import GossipMessage

from .conftest import MS
from .nodes import MakeNode, wait_for
from .test_handler_failures import pair


class Stubborn:
    """What the stubborn work of a test shares: it runs until ``release``, catching
    every cancel (``loops``), or the first only (then it returns once released)."""

    release: ClassVar[asyncio.Event]
    running: ClassVar[asyncio.Event]
    ended: ClassVar[asyncio.Event]
    cancels: ClassVar[int] = 0
    loops: ClassVar[bool] = True
    fails: ClassVar[bool] = False  # raises once released

    @classmethod
    def reset(cls, *, loops: bool = True, fails: bool = False) -> None:
        cls.release, cls.running, cls.ended = asyncio.Event(), asyncio.Event(), asyncio.Event()
        cls.cancels, cls.loops, cls.fails = 0, loops, fails

    @classmethod
    async def run(cls) -> None:
        cls.running.set()
        try:
            while not cls.release.is_set():
                try:
                    await cls.release.wait()
                except asyncio.CancelledError:
                    cls.cancels += 1
                    if not cls.loops:
                        break
            await cls.release.wait()  # (not looping: cancelled again, it would end)
        finally:
            # Set just before it returns: what would run after it in its task (the next
            # handler, the next item of an inbox) runs in the same step, before the test
            # sees this.
            cls.ended.set()
        if cls.fails:
            raise ValueError("a bug, after the stop")


async def stop_hurried(node: Node, hurried: bool, waiting: str) -> None:
    """Stop ``node``; if ``hurried``, call ``stop_waits.hurry()`` once it waits for
    something that starts with ``waiting``. Returns once the stop did (before: never,
    while the stubborn work ran)."""
    stopping = asyncio.ensure_future(node.stop())
    if hurried:
        await wait_for(lambda: any(w.startswith(waiting) for w in node.stop_waits.waiting))
        node.stop_waits.hurry()
    async with asyncio.timeout(30):  # (before: for as long as the stubborn work ran)
        await stopping
    assert not Stubborn.ended.is_set()  # it returned before the stubborn work ended


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and text in r.getMessage()
    ]


class Chat(Thread):
    """Its gossip handler of ``chat`` is stubborn on message 1; a subscriber after it."""

    handled: ClassVar[list[int]] = []
    subscribed: ClassVar[list[int]] = []

    def start(self) -> None:
        assert self.node.gossip is not None
        self.node.gossip.subscribe("chat", self.after)

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"chat": self.chat}}

    async def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        if message.seq == 1:
            await Stubborn.run()
        self.handled.append(message.seq)

    def after(self, message: GossipMessage) -> None:
        self.subscribed.append(message.seq)


@pytest.mark.parametrize(
    ("loops", "hurried", "fails"),
    [(True, False, False), (True, True, False), (False, False, False), (False, True, True)],
)
async def test_a_gossip_handler_going_on_past_its_cancel_is_left_running_said_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, loops: bool, hurried: bool, fails: bool
) -> None:
    """review61 F2: a handler that caught its CancelledError held the stop, hurried or
    not, as long as it ran (for ever, looping). review63 F2: bounded, it was left
    running unsaid, waited for twice (a second halt()), and ran to its end after the
    stop, yet got its message again after the restart."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    Stubborn.reset(loops=loops, fails=fails)
    Chat.handled, Chat.subscribed = [], []
    pub, sub, _ = await pair(tmp_path, Chat, close_timeout=60.0 if hurried else 100 * MS)
    try:
        await pub.publish("chat", {})
        await wait_for(Stubborn.running.is_set)
        await stop_hurried(sub, hurried, "1 gossip handler(s) running")
        assert Stubborn.cancels == 1  # one wait, one cancel
        assert caplog.text.count("x waiting up to") == 1
        where = f"message 1 of {short_id(pub.peer_id)} from {pub.url}"
        assert warnings(caplog, "didn't end when cancelled") == [
            f"x gossip handler of 'chat' in Chat didn't end when cancelled, on {where}: it"
            " runs on after the stop; the message counts as delivered if it returns before"
            " the message log closes, else it is handed over again after a restart"
        ]
        Stubborn.release.set()
        await wait_for(Stubborn.ended.is_set)
        assert Chat.handled == ([] if fails else [1])
        assert Chat.subscribed == []  # nothing of its turn after it: the node stopped
        if fails:  # its failure is still logged
            await wait_for(lambda: "! gossip handler of 'chat' in Chat failed" in caplog.text)
        else:
            ended = (
                f"x gossip handler of 'chat' in Chat, left running at the stop, ended, on {where}"
            )
            await wait_for(lambda: ended in caplog.text)
        Chat.handled = []
        sub = Node(cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[Chat])
        await sub.start()
        await pub.publish("chat", {"n": 2})
        await wait_for(lambda: Chat.subscribed == [1, 2])
        # It returned (or failed) once the log had closed: its message is handed over
        # again, at least once (review67 F1: counted at once, one that ended cancelled
        # after a slow unwinding lost it); once, then 2.
        assert Chat.handled == ([2] if fails else [1, 2])
    finally:
        Stubborn.release.set()
        await sub.stop()
        await pub.stop()


class Unwinding(Thread):
    """Its gossip handler of ``chat`` unwinds slowly when cancelled (a database closed:
    until ``unwound``), then ends cancelled."""

    handled: ClassVar[list[int]] = []
    running: ClassVar[asyncio.Event]
    unwound: ClassVar[asyncio.Event]
    ended: ClassVar[asyncio.Event]

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"chat": self.chat}}

    async def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        if message.seq == 1 and not self.unwound.is_set():
            self.running.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await self.unwound.wait()  # longer than CANCEL_GRACE
                self.ended.set()
                raise
        self.handled.append(message.seq)


async def test_a_handler_unwinding_slowly_gets_its_message_again_after_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review67 F1 (HIGH): a handler that ended cancelled after a cleanup longer than
    CANCEL_GRACE was left running and its message counted as delivered: lost. It is
    handed over again after a restart, as any handler cut short."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    Unwinding.handled = []
    Unwinding.running, Unwinding.unwound, Unwinding.ended = (asyncio.Event() for _ in "123")
    pub, sub, _ = await pair(tmp_path, Unwinding, close_timeout=100 * MS)
    try:
        await pub.publish("chat", {})
        await wait_for(Unwinding.running.is_set)
        await sub.stop()  # left running after close_timeout and CANCEL_GRACE
        assert warnings(caplog, "didn't end when cancelled")
        Unwinding.unwound.set()
        await wait_for(Unwinding.ended.is_set)
        sub = Node(cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[Unwinding])
        await sub.start()
        await pub.publish("chat", {"n": 2})
        await wait_for(lambda: Unwinding.handled == [1, 2])  # message 1 again, then 2
    finally:
        Unwinding.unwound.set()
        await sub.stop()
        await pub.stop()


class Checked(Thread):
    """The validator of ``chat`` is stubborn on message 1 (the first time)."""

    handled: ClassVar[list[int]] = []
    validated: ClassVar[list[int]] = []

    def start(self) -> None:
        assert self.node.gossip is not None
        self.node.gossip.set_validator("chat", self.validate)

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"chat": self.chat}}

    async def validate(self, message: GossipMessage) -> Validation:
        self.validated.append(message.seq)
        if not Stubborn.release.is_set():
            await Stubborn.run()
        return Validation.ACCEPT

    def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        self.handled.append(message.seq)


async def test_a_validator_going_on_past_its_cancel_is_left_running_and_its_verdict_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review61 F2 for a validator: it held the stop. Left running, its verdict,
    coming after the stop, is dropped; the message is validated again after a
    restart, and handled then, once."""
    Stubborn.reset()
    Checked.handled, Checked.validated = [], []
    pub, sub, _ = await pair(tmp_path, Checked, close_timeout=100 * MS)
    try:
        await pub.publish("chat", {})
        await wait_for(Stubborn.running.is_set)
        await stop_hurried(sub, False, "")
        where = f"message 1 of {short_id(pub.peer_id)} from {pub.url}"
        assert warnings(caplog, "didn't end when cancelled") == [
            f"x validator of 'chat' didn't end when cancelled, on {where}: it runs on after"
            " the stop; the message is validated again after a restart"
        ]
        Stubborn.release.set()
        await wait_for(Stubborn.ended.is_set)
        assert Checked.handled == []  # its ACCEPT came after the stop: dropped
        sub = Node(cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[Checked])
        await sub.start()
        await wait_for(lambda: Checked.handled == [1])  # caught up, validated again
        assert Checked.validated == [1, 1]
    finally:
        Stubborn.release.set()
        await sub.stop()
        await pub.stop()


class Hooked(Thread):
    """Its ``on_socket_open`` hook is stubborn; its talks and ``on_socket_close``
    hook, queued behind it in the connection's worker, are recorded."""

    done: ClassVar[list[str]] = []

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"x": self.talk}}

    async def on_socket_open(self, socket: Socket) -> None:
        await Stubborn.run()

    def talk(self, socket: Socket, package: Package) -> None:
        self.done.append("talk")

    def on_socket_close(self, socket: Socket) -> None:
        self.done.append("closed")


class After(Thread):
    """A second thread, whose hook comes after the stubborn one."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"y": lambda socket, package: None}}

    def on_socket_open(self, socket: Socket) -> None:
        Hooked.done.append("after")


@pytest.mark.parametrize(("hurried", "fails"), [(False, True), (True, False)])
async def test_a_hook_going_on_past_its_cancel_is_left_running_and_its_worker_takes_no_more(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, hurried: bool, fails: bool
) -> None:
    """review61 F2 (its p9): a hook that caught its CancelledError held the stop (the
    CLI's too, hurried). review63 F3: bounded, it was left behind unsaid, and its worker
    went on with its inbox after the stop."""
    Stubborn.reset(fails=fails)
    Hooked.done = []
    for name in ("pub", "sub"):
        (tmp_path / name).mkdir()
    pub = Node(cwd=tmp_path / "pub", server=True, port=0)
    await pub.start()
    options: dict[str, Any] = {"close_timeout": 60.0 if hurried else 100 * MS}
    sub = Node(
        cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[Hooked, After], **options
    )
    try:
        await sub.start()
        await wait_for(Stubborn.running.is_set)
        assert pub.server is not None
        await pub.server.wait_connected()
        for n in range(2):
            await pub.server.send_talk(pub.server.sockets[0], "x", {"n": n})
        conn = sub.connection(sub.sockets[0])
        assert conn is not None and conn.worker is not None
        await wait_for(lambda: len(conn.worker._inbox or ()) == 2)  # type: ignore[union-attr]
        await stop_hurried(sub, hurried, "the hooks and handlers of 1 connection(s)")
        assert warnings(caplog, "didn't end when cancelled") == [
            f"[{pub.url}] x on_socket_open of Hooked didn't end when cancelled: it runs"
            " on after the stop; 3 item(s) of its inbox dropped"  # 2 talks, on_socket_close
        ]
        Stubborn.release.set()
        await wait_for(Stubborn.ended.is_set)
        assert Hooked.done == []  # nothing after it: the next hook, the inbox
        if fails:  # its failure is still logged
            await wait_for(lambda: "! on_socket_open of Hooked failed" in caplog.text)
    finally:
        Stubborn.release.set()
        await sub.stop()
        await pub.stop()


class Slow(Thread):
    """A request handler that is stubborn."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.REQUEST: {"slow": self.slow}}

    async def slow(self, socket: Socket, package: Package) -> dict[str, Any]:
        await Stubborn.run()
        return {}


async def test_a_request_handler_going_on_past_its_cancel_is_left_running_and_said(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """review61 F2: the node's tasks cancelled were waited for without a bound; a
    request handler that caught its CancelledError held the stop."""
    Stubborn.reset()
    server = await make_node(server=True, threads=[Slow], close_timeout=100 * MS)
    client = await make_node(client=True, peers=[server.url])
    assert client.client is not None
    await client.client.wait_connected()
    asking = asyncio.ensure_future(client.client.request(client.client.sockets[0], "slow", {}))
    try:
        await wait_for(Stubborn.running.is_set)
        [socket] = server.sockets
        await stop_hurried(server, False, "")
        assert warnings(caplog, "didn't end when cancelled") == [
            "x 1 task(s) of the node didn't end when cancelled: they run on after the stop"
            f" (request 'slow' from {socket.peer})"
        ]
    finally:
        Stubborn.release.set()
        await wait_for(Stubborn.ended.is_set)
        asking.cancel()
        await asyncio.gather(asking, return_exceptions=True)


class Tasked(Thread):
    """Its task is stubborn."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"y": lambda socket, package: None}}

    def start(self) -> None:
        self.create_task(Stubborn.run())


async def test_a_hurried_stop_says_the_tasks_of_a_thread_it_leaves_running(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """Hurried, the tasks of a thread that didn't end when cancelled were left
    running without a word (said only at close_timeout)."""
    Stubborn.reset()
    node = await make_node(server=True, threads=[Tasked], close_timeout=60.0)
    try:
        await wait_for(Stubborn.running.is_set)
        await stop_hurried(node, True, "the tasks of Tasked")
        assert warnings(caplog, "didn't end") == [
            "! tasks of Tasked didn't end when cancelled (the stop was cut short): they run"
            " on after the stop"
        ]
    finally:
        Stubborn.release.set()
        await wait_for(Stubborn.ended.is_set)


async def test_work_cancelled_has_a_grace_to_end_hurried_too() -> None:
    """What the stop cancelled gets :data:`CANCEL_GRACE` to unwind, hurried too: only
    what doesn't end then is left running (a cancelled task that awaits in its
    ``finally`` isn't said to run on after the stop)."""
    waits = StopWaits(logging.getLogger("test"))
    waits.hurry()
    Stubborn.reset()

    async def unwinds() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            for _ in range(3):
                await asyncio.sleep(0)

    tasks = [asyncio.ensure_future(unwinds()), asyncio.ensure_future(Stubborn.run())]
    try:
        await wait_for(Stubborn.running.is_set)
        for task in tasks:
            task.cancel()
        assert await waits.wait_cancelled("work", tasks, 60.0) == {tasks[1]}
        assert tasks[0].cancelled()
    finally:
        Stubborn.release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
