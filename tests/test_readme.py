"""
Every code block of the README runs, verbatim.

Each block is found by its position under a heading and handled by one of the checks
below; a block that no check claims fails :func:`test_every_block_is_checked`, so a new
example can't go untested. What a check may not run verbatim is in :data:`NOT_RUN`, with
the reason.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

import trustp2p
from trustp2p.cli import cli

from .processes import Spawned, free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SRC = str(ROOT / "src")

NOT_RUN = {
    "make test": "it is this suite: `.ci/run` runs it",
    "make docs": "`make test` runs it",
    "make bench": "a benchmark of minutes; BENCHMARKS.md records its figures",
}
"""Commands shown but not run here, and why."""


@dataclass(frozen=True)
class Block:
    heading: str
    language: str
    text: str
    line: int


def readme_blocks() -> list[Block]:
    """The fenced code blocks of the README, with the heading each sits under."""
    blocks: list[Block] = []
    heading = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#") and not line.startswith("#!"):
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            start = i
            language = line[3:].strip()
            i += 1
            body: list[str] = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            blocks.append(Block(heading, language, "\n".join(body) + "\n", start + 1))
        i += 1
    return blocks


def block(heading: str, index: int = 0) -> Block:
    found = [b for b in readme_blocks() if b.heading == heading]
    assert len(found) > index, f"README has no block {index} under {heading!r}"
    return found[index]


def run(args: list[str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@functools.cache
def trustp2p_help(command: str) -> str:
    """``trustp2p COMMAND --help``, run in-process (a process each took seconds)."""
    result = CliRunner().invoke(cli, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return result.output


# The checks, by the heading a block sits under.


def check_synopsis(text: str) -> None:
    """A synopsis of commands (with placeholders): each command exists and takes every
    option shown for it."""
    for line in text.splitlines():
        words = line.split("#")[0].split()
        if not words or words[0] != "trustp2p":
            continue
        command = words[1]
        helptext = trustp2p_help(command)
        for option in re.findall(r"--[a-z][a-z-]*", " ".join(words[2:])):
            assert option in helptext, f"`trustp2p {command} --help` lacks {option}"


def check_commands(text: str) -> None:
    """Shell commands: each is run, or listed in :data:`NOT_RUN`."""
    for line in text.splitlines():
        command = line.split("#")[0].strip()
        if command and command not in NOT_RUN:
            pytest.fail(f"README command {command!r} is neither run nor in NOT_RUN")


CHECKS: dict[tuple[str, int], Callable[[Block], None]] = {}
"""(heading, index among that heading's blocks) -> how the block is checked; the tests
below register themselves."""


def checks(
    heading: str, index: int = 0
) -> Callable[[Callable[..., object]], Callable[..., object]]:
    def register(test: Callable[..., object]) -> Callable[..., object]:
        CHECKS[(heading, index)] = lambda b: None  # claimed by that test
        return test

    return register


CHECKS[("Command line", 0)] = lambda b: check_synopsis(b.text)
CHECKS[("Peer store", 0)] = lambda b: check_synopsis(b.text)
CHECKS[("Gossip and catch-up", 1)] = lambda b: check_synopsis(b.text)  # the hub's flag
CHECKS[("Development", 0)] = lambda b: check_commands(b.text)


def test_every_block_is_checked() -> None:
    unclaimed = []
    seen: dict[str, int] = {}
    for b in readme_blocks():
        index = seen.get(b.heading, 0)
        seen[b.heading] = index + 1
        check = CHECKS.get((b.heading, index))
        if check is None:
            unclaimed.append(f"line {b.line} ({b.heading!r} #{index})")
        else:
            check(b)
    assert not unclaimed, f"README blocks no test runs: {unclaimed}"


@pytest.mark.slow
@checks("Quick start")
def test_quick_start_demo_runs_verbatim() -> None:
    """``make demo``, as a new user types it (``make test`` is this suite)."""
    lines = [line.split("#")[0].strip() for line in block("Quick start").text.splitlines()]
    assert lines == ["make demo", "make test"]
    result = run(shlex.split(lines[0]), ROOT, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


@checks("A complete thread")
def test_the_complete_thread_works_between_a_server_and_a_client(tmp_path: Path) -> None:
    """The thread file and its symlink, as the README gives them; a server and a client
    started in that directory greet each other and answer the echo."""
    text = README.read_text()
    intro = text[text.index("## A complete thread") :]
    ln = re.search(r"`(ln -s [^`]+)`", intro)
    assert ln is not None
    (tmp_path / "myapp" / "threads-available").mkdir(parents=True)
    (tmp_path / "myapp" / "threads-enabled").mkdir()
    (tmp_path / "myapp" / "threads-available" / "echo.py").write_text(
        block("A complete thread").text
    )
    assert run(shlex.split(ln.group(1)), tmp_path).returncode == 0
    port = free_port()
    server = Spawned("server", "--cwd", "myapp", "--port", str(port), cwd=tmp_path)
    client = Spawned(
        "client", "--cwd", "myapp", "--connect", f"ws://127.0.0.1:{port}", cwd=tmp_path
    )
    try:
        wait_until(
            lambda: client.says("echo answered {'echo': {'n': 1}}") and server.says("greets us"),
            timeout=20,
        )
    finally:
        codes = client.stop(), server.stop()
    assert codes == (0, 0)
    assert not client.says("Traceback") and not server.says("Traceback")


@checks("Using it as a library")
def test_the_library_example_exits_0_with_no_warning(tmp_path: Path) -> None:
    # The README's ports, 1107 and 1108, may be taken on a developer's machine.
    example = block("Using it as a library").text
    assert "port=1107" in example and "port=1108" in example
    server_port = free_port()
    node_port = next(port for port in iter(free_port, None) if port != server_port)
    example = example.replace("1107", str(server_port)).replace("1108", str(node_port))
    (tmp_path / "example.py").write_text(example)
    result = run([sys.executable, "example.py"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "True",
        "{'echo': {'hi': 1}}",
        "{'size': 3} b'cba'",
        "the server answered: no handler for REQUEST 'nobody'",
    ]
    assert "WARNING" not in result.stderr and "Traceback" not in result.stderr, result.stderr


@checks("Gossip and catch-up")
async def test_the_gossip_fragment_runs_on_a_node(tmp_path: Path) -> None:
    """The fragment runs as written, with ``node`` a running node."""
    code = compile(
        block("Gossip and catch-up").text, "README.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    async with trustp2p.Node(trustp2p.NodeOptions(server=True, port=0)) as node:
        namespace: dict[str, object] = {"node": node}
        result = eval(code, namespace)  # the README's own code
        if result is not None:
            await result
        assert isinstance(namespace["message_id"], str)
        assert node.gossip is not None and "chat" not in node.gossip.topics


@checks("Watching a running node")
def test_watching_a_running_node(tmp_path: Path) -> None:
    """The command as written (DIR and the port filled in: 9107 may be taken here),
    then ``trustp2p status`` against it, as the text says."""
    (line,) = block("Watching a running node").text.split("\n")[:1]
    port = free_port()
    args = shlex.split(line.replace("DIR", str(tmp_path)).replace("9107", str(port)))
    assert args[:2] == ["trustp2p", "server"]
    server = Spawned(*args[1:], "--port", "0")
    try:
        server.wait_for_output("node started")
        status = run(
            [sys.executable, "-m", "trustp2p", "status", "--admin", f"127.0.0.1:{port}", "--json"],
            tmp_path,
        )
        assert status.returncode == 0, status.stderr
        assert '"peer_id"' in status.stdout
    finally:
        assert server.stop() == 0


@checks("Configuration and logs")
def test_the_configuration_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file as written, the variable the text sets, and ``trustp2p config``."""
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "trustp2p.toml").write_text(block("Configuration and logs").text)
    result = subprocess.run(
        [sys.executable, "-m", "trustp2p", "config", "--cwd", "myapp", "--json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": SRC, "TRUSTP2P_REQUEST_RATE": "30"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows["max_inbound"] == {"value": 50, "source": "file"}
    assert rows["request_rate"] == {"value": 30.0, "source": "env"}
    assert rows["peers"] == {"value": ["ws://127.0.0.1:1107"], "source": "file"}
    assert rows["gossip_mode"] == {"value": "flood", "source": "file"}
