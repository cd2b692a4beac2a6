"""TopicQueues: gossip delivery topic by topic, and when the marks may all be settled."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from trustp2p.node.gossip_delivery import TopicQueues
from trustp2p.tasks import TaskOwner

from .conftest import wait_for


def message(topic: str, n: int) -> Any:
    return SimpleNamespace(topic=topic, id=f"{topic}-{n}")


class Recorder:
    def __init__(self) -> None:
        self.done: list[str] = []
        self.idle = 0
        self.gates: dict[str, asyncio.Event] = {}

    async def work(self, kind: str, msg: Any, source: object) -> None:
        gate = self.gates.get(msg.topic)
        if gate is not None:
            await gate.wait()
        if msg.id.endswith("-bad"):
            raise ValueError("a failing handler")
        self.done.append(msg.id)

    def settled(self) -> None:
        self.idle += 1


async def test_one_topic_waits_the_other_goes_on_and_idle_waits_for_both() -> None:
    # Settling every mark while a topic's messages still wait for their handlers would
    # mark them delivered before they were: idle() comes when no topic has any left.
    tasks = TaskOwner(logging.getLogger("test"))
    recorder = Recorder()
    recorder.gates["a"] = asyncio.Event()
    queues = TopicQueues(tasks, recorder.work, recorder.settled)
    for n in range(3):
        queues.put("deliver", message("a", n), None)
        queues.put("deliver", message("b", n), None)
    assert len(queues) == 6
    await wait_for(lambda: recorder.done == ["b-0", "b-1", "b-2"])
    assert recorder.idle == 0 and len(queues) == 2  # a-0 is at its gate
    recorder.gates["a"].set()
    await wait_for(lambda: recorder.idle == 1)
    assert recorder.done[3:] == ["a-0", "a-1", "a-2"] and len(queues) == 0
    await tasks.aclose()


async def test_a_failing_message_is_logged_and_the_next_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tasks = TaskOwner(logging.getLogger("test"))
    recorder = Recorder()
    queues = TopicQueues(tasks, recorder.work, recorder.settled)
    queues.put("deliver", message("a", "bad"), None)
    queues.put("deliver", message("a", 1), None)
    await wait_for(lambda: recorder.idle == 1)
    assert recorder.done == ["a-1"]
    assert "! gossip delivery of a-bad failed" in caplog.text
    await tasks.aclose()


async def test_cancelled_delivery_settles_nothing_and_closed_queues_take_nothing() -> None:
    tasks = TaskOwner(logging.getLogger("test"))
    recorder = Recorder()
    recorder.gates["a"] = asyncio.Event()
    queues = TopicQueues(tasks, recorder.work, recorder.settled)
    queues.put("deliver", message("a", 0), None)
    await asyncio.sleep(0)  # the topic's task waits at the gate
    await tasks.aclose()  # the node stops: what wasn't handled stays undelivered
    assert recorder.idle == 0 and len(queues) == 0
    queues.put("deliver", message("a", 1), None)  # a late arrival while stopping
    assert len(queues) == 0 and len(tasks) == 0
