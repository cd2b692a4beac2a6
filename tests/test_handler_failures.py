"""
Handlers that fail, and gossip handlers running when the node stops (tester39 F2, F3,
F6): each handler's failures are counted and logged within a budget of their own,
naming the message; a stop lets a running gossip handler finish within
``close_timeout``, and says which it cancelled past that. Default options, loopback.

"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest
from prometheus_client import generate_latest

from trustp2p import EventMap, Node, Package, PackageType, RemoteError, Socket, Thread
from trustp2p.admin.collector import node_registry
from trustp2p.identity import short_id
from trustp2p.protocol.gossip import GossipMessage

from .compiled import refused_type
from .conftest import MS
from .nodes import MakeNode, wait_for
from .test_admin_metrics import samples
from .test_gossip_behaviour import subscribed


class Buggy(Thread):
    """Every handler raises (``aboom`` after a suspension); ``badret`` returns what
    can't be sent; a subscriber of ``chat`` raises too."""

    def start(self) -> None:
        assert self.node.gossip is not None
        self.node.gossip.subscribe("chat", self.sub)

    @property
    def event_map(self) -> EventMap:
        return {
            PackageType.REQUEST: {"boom": self.boom, "aboom": self.aboom, "badret": self.badret},
            PackageType.TALK: {"tboom": self.boom},
            PackageType.GOSSIP: {"chat": self.chat},
        }

    def boom(self, socket: Socket, package: Package) -> None:
        raise ValueError("a bug")

    async def aboom(self, socket: Socket, package: Package) -> None:
        await asyncio.sleep(0)
        raise ValueError("another bug")

    def badret(self, socket: Socket, package: Package) -> Any:
        return [1, 2]

    def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        raise ValueError(f"can't parse {message.body}")

    def sub(self, message: GossipMessage) -> None:
        raise ValueError("a subscriber's bug")


async def pair(tmp_path: Path, thread: type[Thread], **options: Any) -> tuple[Node, Node, Socket]:
    """A server (``pub``) and a client running ``thread`` (with ``options``), connected."""
    for name in ("pub", "sub"):
        (tmp_path / name).mkdir(exist_ok=True)
    pub = Node(cwd=tmp_path / "pub", server=True, port=0)
    await pub.start()
    sub = Node(cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[thread], **options)
    try:
        await sub.start()
        assert sub.client is not None and pub.server is not None
        await sub.client.wait_connected()
        await pub.server.wait_connected()
    except BaseException:
        await sub.stop()
        await pub.stop()
        raise
    return pub, sub, sub.client.sockets[0]


def errors(caplog: pytest.LogCaptureFixture, start: str) -> list[str]:
    """The ERROR lines that start with ``start``, after the peer's ``[...] ``."""
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    lines = [line.split("] ", 1)[1] if line.startswith("[") else line for line in lines]
    return [line for line in lines if line.startswith(start)]


async def test_gossip_handler_and_subscriber_failures_are_budgeted_and_name_the_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: an ERROR and its traceback for each message and each of them (60 here),
    # naming neither the message nor its origin.
    pub, sub, _ = await pair(tmp_path, Buggy)
    try:
        for n in range(30):
            await pub.publish("chat", {"n": n})
        failures = sub.metrics.handler_failures
        await wait_for(lambda: failures.get(("subscriber", "chat")) == 30)
        assert failures == {("gossip", "chat"): 30, ("subscriber", "chat"): 30}
        handler = errors(caplog, "! gossip handler of 'chat' in Buggy failed")
        subscriber = errors(caplog, "! gossip subscriber of 'chat' failed")
        assert len(handler) == len(subscriber) == 10  # each its own budget
        origin = short_id(pub.peer_id)
        assert handler[0] == (
            f"! gossip handler of 'chat' in Buggy failed on message 1 of {origin} from {pub.url}"
        )
        assert subscriber[9].startswith("! gossip subscriber of 'chat' failed on message 10 of ")
        records = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert all(r.exc_info is not None for r in records)
        text = generate_latest(node_registry(sub)).decode()
        family = "trustp2p_handler_failures_total"
        assert samples(text)[family, (("event", "chat"), ("kind", "gossip"))] == 30
    finally:
        await sub.stop()
        await pub.stop()
    # The rest were at DEBUG, and counted in a line at the stop.
    said = "! 20 more \"gossip handler of 'chat' in Buggy\" events in the last"
    assert said in caplog.text


async def test_a_second_handler_bug_is_not_hidden_by_the_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: one budget for every handler's failures: after boom's 10 lines, the other
    # bugs showed only as a count; and no metric counted them.
    pub, sub, _ = await pair(tmp_path, Buggy)
    server = pub.server
    assert server is not None
    socket = server.sockets[0]  # to the client that runs Buggy
    try:
        for n in range(12):
            with pytest.raises(RemoteError):
                await server.request(socket, "boom", {"n": n})
        for event in ("aboom", "badret"):
            with pytest.raises(RemoteError):
                await server.request(socket, event, {})
        await server.send_talk(socket, "tboom", {})
        await wait_for(lambda: ("talk", "tboom") in sub.metrics.handler_failures)
        assert sub.metrics.handler_failures == {
            ("request", "boom"): 12,
            ("request", "aboom"): 1,
            ("request", "badret"): 1,
            ("talk", "tboom"): 1,
        }
        assert len(errors(caplog, "! handler of REQUEST 'boom' in Buggy failed")) == 10
        assert errors(caplog, "! handler of REQUEST 'aboom' in Buggy failed") == [
            "! handler of REQUEST 'aboom' in Buggy failed"
        ]
        said = "! handler of REQUEST 'badret' in Buggy returned what can't be sent: "
        [line] = errors(caplog, "! handler of REQUEST 'badret'")
        assert line.startswith(said)
        assert re.search(refused_type("body", "dict", "list"), line[len(said) :])
        assert errors(caplog, "! handler of TALK 'tboom' in Buggy failed") == [
            "! handler of TALK 'tboom' in Buggy failed"
        ]
        text = generate_latest(node_registry(sub)).decode()
        family = "trustp2p_handler_failures_total"
        assert samples(text)[family, (("event", "boom"), ("kind", "request"))] == 12
    finally:
        await sub.stop()
        await pub.stop()


class Slow(Thread):
    """A gossip handler that waits for ``release`` on messages ``{"slow": True}``."""

    release: asyncio.Event

    def start(self) -> None:
        self.started = asyncio.Event()
        self.calls: list[int] = []
        self.done: list[int] = []

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"chat": self.chat}}

    async def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        self.calls.append(message.seq)
        self.started.set()
        if message.body.get("slow"):
            await self.release.wait()
        self.done.append(message.seq)


def slow_of(node: Node) -> Slow:
    return next(t for t in node.threads if isinstance(t, Slow))


async def test_a_stop_lets_a_running_gossip_handler_finish_and_it_is_not_called_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the stop cancelled the handler at its await, without a word, and the
    # message was handled again after the restart (tester39 F2).
    caplog.set_level(logging.INFO, logger="trustp2p")
    Slow.release = asyncio.Event()
    pub, sub, _ = await pair(tmp_path, Slow)
    try:
        await pub.publish("chat", {"slow": True})
        await slow_of(sub).started.wait()
        await pub.publish("chat", {"n": 2})  # waits behind message 1
        log = sub.gossip.message_log  # type: ignore[union-attr]
        await wait_for(lambda: log is not None and log.has(f"chat\0{pub.peer_id}", 2))
        stopping = asyncio.ensure_future(sub.stop())
        await wait_for(lambda: "waiting up to 10 s for the gossip handlers running" in caplog.text)
        assert not stopping.done()
        Slow.release.set()
        await stopping
        assert slow_of(sub).done == [1]  # message 2 not started: the node was stopping
        assert "cancelled by the stop" not in caplog.text
        # Restarted: message 1 is not delivered again; 2 is (it was not marked delivered
        # with 1), then 3.
        sub = Node(cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[Slow])
        await sub.start()
        await pub.publish("chat", {"n": 3})
        await wait_for(lambda: slow_of(sub).done == [2, 3])
        assert slow_of(sub).calls == [2, 3]
    finally:
        await sub.stop()
        await pub.stop()


async def test_a_gossip_handler_running_past_close_timeout_is_cancelled_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: cancelled without a word. It gets the message again after a restart, as
    # the README says (at least once).
    Slow.release = asyncio.Event()  # never set
    pub, sub, _ = await pair(tmp_path, Slow, close_timeout=100 * MS)
    try:
        await pub.publish("chat", {"slow": True})
        await slow_of(sub).started.wait()
        await sub.stop()
        assert slow_of(sub).done == []
        [line] = [r for r in caplog.records if "cancelled by the stop" in r.getMessage()]
        assert line.levelno == logging.WARNING
        assert line.getMessage() == (
            f"x gossip handler of 'chat' in Slow cancelled by the stop, on message 1 of"
            f" {short_id(pub.peer_id)} from {pub.url}: it gets the message again after a"
            " restart"
        )
        Slow.release.set()
        sub = Node(cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[Slow])
        await sub.start()
        await wait_for(lambda: slow_of(sub).done == [1])
    finally:
        await sub.stop()
        await pub.stop()


class Stopper(Thread):
    """Its gossip handler stops the node: in its own task, or (``in_task``) in a task
    it starts (``asyncio.wait_for`` makes one on 3.11)."""

    in_task = False
    calls: ClassVar[list[object]] = []

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"chat": self.chat}}

    async def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        self.calls.append(message.body)
        if not message.body.get("shutdown"):
            return
        if self.in_task:
            await asyncio.wait_for(asyncio.ensure_future(self.node.stop()), 120)
        else:
            await self.node.stop()


class TaskStopper(Stopper):
    in_task = True


@pytest.mark.parametrize("thread", [Stopper, TaskStopper])
async def test_a_gossip_handler_that_stops_its_node_is_not_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, thread: type[Thread]
) -> None:
    """review57: the stop waited ``close_timeout`` for the handler that called it,
    itself waiting for the stop, then cancelled it (a "shutdown" message: 10 s, and the
    message again after a restart); review58: only the task that called the stop was
    left out, not a handler's stop in a task it started; review59: its message came
    again after each restart (and stopped the node again): it counts as delivered."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    Stopper.calls = []
    pub, sub, _ = await pair(tmp_path, thread, close_timeout=60.0)
    try:
        await pub.publish("chat", {"shutdown": True})
        await wait_for(lambda: sub.state.value == "stopped")  # (before: after 60 s)
        assert "waiting up to" not in caplog.text
        assert "cancelled by the stop" not in caplog.text
        assert "the node was stopped from the delivery of message 1 of" in caplog.text
        sub = Node(cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[thread])
        await sub.start()
        assert sub.client is not None
        await sub.client.wait_connected()
        await pub.publish("chat", {"after": True})
        await wait_for(lambda: {"after": True} in Stopper.calls)
        assert Stopper.calls == [{"shutdown": True}, {"after": True}]  # (before: twice)
    finally:
        await sub.stop()
        await pub.stop()


class TwoStoppers(Thread):
    """Topics ``a`` and ``b``: each handler of a "shutdown" message stops the node, the
    one of ``a`` once the one of ``b`` started (so that both stop it)."""

    calls: ClassVar[list[str]] = []
    started: ClassVar[dict[str, asyncio.Event]] = {}

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"a": self.handle, "b": self.handle}}

    async def handle(self, socket: Socket | None, message: GossipMessage) -> None:
        self.calls.append(message.topic)
        if message.body.get("shutdown"):
            self.started[message.topic].set()
            if message.topic == "a":
                await self.started["b"].wait()
            await self.node.stop()


async def test_a_second_handler_that_stops_the_node_while_it_stops_is_not_waited_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review60 F3: a handler that stopped the node while it stopped (a second topic's
    "shutdown" message) was waited for close_timeout, then cancelled, and got its
    message again after the restart, which it stopped at once. Its message counts as
    delivered too, and its delivery ends at once."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    TwoStoppers.calls = []
    TwoStoppers.started = {"a": asyncio.Event(), "b": asyncio.Event()}
    pub, sub, _ = await pair(tmp_path, TwoStoppers, close_timeout=60.0)
    try:
        await wait_for(lambda: subscribed(pub, "b", 1))
        await pub.publish("a", {"shutdown": True})
        await pub.publish("b", {"shutdown": True})
        await wait_for(lambda: sub.state.value == "stopped")  # (before: after 60 s)
        assert sorted(TwoStoppers.calls) == ["a", "b"]
        assert "cancelled by the stop" not in caplog.text
        sub = Node(cwd=tmp_path / "sub", client=True, peers=[pub.url], threads=[TwoStoppers])
        await sub.start()
        assert sub.client is not None
        await sub.client.wait_connected()
        await pub.publish("a", {"after": True})
        await wait_for(lambda: TwoStoppers.calls.count("a") == 2)
        assert sorted(TwoStoppers.calls) == ["a", "a", "b"]  # (before: b again, stopped)
        assert sub.state.value == "running"
    finally:
        await sub.stop()
        await pub.stop()


class Saver(Thread):
    """Its gossip handler works a little, then hands the rest to a task of its thread."""

    state: ClassVar[list[str]] = []

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"chat": self.chat}}

    async def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        self.state.append("handling")
        await asyncio.sleep(0.2)  # (the stop begins meanwhile)
        self.create_task(self.save())
        self.state.append("handed over")

    async def save(self) -> None:
        self.state.append("saved")


async def test_a_handler_finishing_during_the_stop_may_start_a_task_of_its_thread(
    tmp_path: Path,
) -> None:
    """review61: the threads' tasks were cancelled (their owner closed) while the
    handlers running finished: ``create_task`` at a handler's end raised
    NodeStateError, a failure, and its message counted as delivered was lost. The
    threads' tasks are cancelled once the handlers ended."""
    Saver.state = []
    pub, sub, _ = await pair(tmp_path, Saver, close_timeout=10.0)
    try:
        await pub.publish("chat", {})
        await wait_for(lambda: Saver.state == ["handling"])
        await sub.stop()
        assert Saver.state[:2] == ["handling", "handed over"]
        assert not sub.metrics.handler_failures
    finally:
        await sub.stop()
        await pub.stop()


class Detacher(Slow):
    """Message 1's handler starts a task that stops the node once ``go`` is set; then
    message 2 (slow) is handled."""

    go: asyncio.Event

    async def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        if message.seq == 1:
            asyncio.get_running_loop().create_task(self.stop_later())
        await super().chat(socket, message)

    async def stop_later(self) -> None:
        await self.go.wait()
        await self.node.stop()


async def test_a_stop_from_a_task_an_earlier_handler_started_waits_for_the_running_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """review59: every task a handler starts has its delivery in its context; such a
    task stopping the node later left out the handler then running on the topic (of
    another message): cancelled at once, and its message came again after a restart."""
    caplog.set_level(logging.INFO, logger="trustp2p")
    Slow.release, Detacher.go = asyncio.Event(), asyncio.Event()
    pub, sub, _ = await pair(tmp_path, Detacher, close_timeout=60.0)
    try:
        await pub.publish("chat", {"n": 1})
        await pub.publish("chat", {"slow": True})
        await wait_for(lambda: slow_of(sub).calls == [1, 2])
        Detacher.go.set()
        await wait_for(lambda: "waiting up to" in caplog.text)  # (before: not waited for)
        Slow.release.set()
        await wait_for(lambda: sub.state.value == "stopped")
        assert slow_of(sub).done == [1, 2]
        assert "cancelled by the stop" not in caplog.text
    finally:
        await sub.stop()
        await pub.stop()


class Hooky(Thread):
    """Its hooks and its stop() raise (tester39: ``hooks_raise.py``)."""

    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"x": lambda socket, package: None}}

    def on_socket_connection(self, socket: Socket) -> None:
        raise RuntimeError("connection hook bug")

    async def on_socket_close(self, socket: Socket, *args: Any) -> None:
        raise RuntimeError("close hook bug")

    def stop(self) -> None:
        raise RuntimeError("stop bug")


async def test_hook_failures_are_budgeted_and_counted_as_handler_failures_are(
    make_node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: an ERROR with its traceback for every connection, and no count.
    server = await make_node(server=True, threads=[Hooky])
    failures = server.metrics.handler_failures
    clients = [await make_node(client=True, peers=[server.url]) for _ in range(12)]
    await wait_for(lambda: failures.get(("hook", "on_socket_connection")) == 12)
    for client in clients:
        await client.stop()
    await wait_for(lambda: failures.get(("hook", "on_socket_close")) == 12)
    assert len(errors(caplog, "! on_socket_connection of Hooky failed")) == 10
    assert len(errors(caplog, "! on_socket_close of Hooky failed")) == 10
    records = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert all(r.exc_info is not None for r in records)
    text = generate_latest(node_registry(server)).decode()
    family = "trustp2p_handler_failures_total"
    assert samples(text)[family, (("event", "on_socket_close"), ("kind", "hook"))] == 12
    await server.stop()
    assert failures[("hook", "stop")] == 1
    assert errors(caplog, "! stop of Hooky failed") == ["! stop of Hooky failed"]
    said = "! 2 more 'on_socket_connection of Hooky' events in the last"
    assert said in caplog.text


class Closing(Thread):
    """A gossip handler that waits for what its thread's ``stop()`` ends (a backend's
    queue closing, say)."""

    def start(self) -> None:
        self.closed = asyncio.Event()
        self.ended: list[str] = []

    @property
    def event_map(self) -> EventMap:
        return {PackageType.GOSSIP: {"chat": self.chat}}

    async def chat(self, socket: Socket | None, message: GossipMessage) -> None:
        self.ended.append("waiting")
        await self.closed.wait()
        self.ended.append("returned")

    def stop(self) -> None:
        self.closed.set()


async def test_a_handler_waiting_for_what_its_threads_stop_ends_does_not_hold_the_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # R57-3: the stop waited close_timeout for the handlers before calling the threads'
    # stop(): this handler held it 60 s, then was cancelled (its message again after a
    # restart). Now stop() runs while the handlers finish.
    caplog.set_level(logging.INFO, logger="trustp2p")
    pub, sub, _ = await pair(tmp_path, Closing, close_timeout=60.0)
    thread = next(t for t in sub.threads if isinstance(t, Closing))
    try:
        await pub.publish("chat", {})
        await wait_for(lambda: thread.ended == ["waiting"])
        async with asyncio.timeout(30):  # (before: 60 s)
            await sub.stop()
        assert thread.ended == ["waiting", "returned"]
        assert "waiting up to 60 s for the gossip handlers running" in caplog.text
        assert "cancelled by the stop" not in caplog.text
    finally:
        await sub.stop()
        await pub.stop()
