"""The command line: main(argv) in-process, plus server and client as subprocesses."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trustp2p import RemoteError
from trustp2p.cli import main
from trustp2p.options import NodeOptions
from trustp2p.storage.peerstore import PeerSource

from .conftest import wait_for
from .processes import SRC, Spawned, free_port

COMMANDS = ["init", "server", "client", "node", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_and_log_level(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"Usage: trustp2p {command}" in out
    assert "--log-level" in out


def test_init_lays_out_an_application(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = tmp_path / "app"
    assert main(["init", str(app)]) == 0
    available = app / "threads-available" / "heartbeat.py"
    enabled = app / "threads-enabled" / "heartbeat.py"
    assert "class HeartbeatThread(Thread)" in available.read_text()
    assert enabled.is_symlink()
    assert os.readlink(enabled) == "../threads-available/heartbeat.py"
    assert enabled.resolve() == available.resolve()
    # A second run leaves the user's files alone.
    available.write_text(available.read_text() + "\n# edited\n")
    assert main(["init", str(app)]) == 0
    assert available.read_text().endswith("# edited\n")
    assert "left as it is" in capsys.readouterr().out


def test_client_needs_a_peer(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["client", "--cwd", str(tmp_path)]) == 2
    assert "no server to dial: give --connect URL, or peers in" in capsys.readouterr().err


def test_a_client_runs_on_the_peers_its_store_knows(tmp_path: Path) -> None:
    """Found by a tester: a client restarted without --connect was refused although its
    peer store knew its servers (a `trustp2p node` started on them)."""
    from trustp2p.storage.peerstore import STORE_PATH, PeerStore

    async def remember() -> None:
        store = await PeerStore.open(tmp_path / STORE_PATH)
        await store.add_urls([f"ws://127.0.0.1:{free_port()}"], PeerSource.EXCHANGE)
        await store.close()

    asyncio.run(remember())
    client = Spawned("client", "--cwd", str(tmp_path))
    client.wait_for_output("node started")
    assert client.stop() == 0, client.output
    assert "no --connect: dialling the 1 peer the peer store knows" in client.output


def test_a_client_beside_a_server_reads_its_own_store(tmp_path: Path) -> None:
    """Found in review: with a server running in its directory (the README's layout) a
    client is ``node-2``, and the check read ``node``'s store: refused although its own
    knew its server (or, the other way round, started and dialled nothing)."""
    other, here = tmp_path / "other", tmp_path / "here"
    for path in (other, here):
        (path / "threads-enabled").mkdir(parents=True)
    far_port, near_port = free_port(), free_port()
    far = Spawned("server", "--cwd", str(other), "--port", str(far_port))
    near = Spawned("server", "--cwd", str(here), "--port", str(near_port))  # holds "node"
    try:
        far.wait_for_output("node started")
        near.wait_for_output("node started")
        first = Spawned("client", "--cwd", str(here), "--connect", f"ws://127.0.0.1:{far_port}")
        first.wait_for_output("= connected")
        assert first.stop() == 0, first.output
        assert "this one is identity/node-2.key" in first.output
        again = Spawned("client", "--cwd", str(here), "--log-level", "info")
        again.wait_for_output(f"[ws://127.0.0.1:{far_port}] = connected")
        assert again.stop() == 0, again.output
        assert "no --connect: dialling the 1 peer the peer store knows" in again.output
    finally:
        for server in (far, near):
            server.stop()


def test_out_of_descriptors_anywhere_in_the_start_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a new user: with ``ulimit -n 14``, a driver module imported late in the
    start failed with a 50-line traceback; other limits gave one line."""

    def out_of_descriptors(*args: object) -> int:
        for arg in args:
            getattr(arg, "close", lambda: None)()  # (the coroutine never ran)
        raise OSError(errno.EMFILE, "Too many open files", "…/trustp2p/drivers/ws.py")

    monkeypatch.setattr("trustp2p.cli.base.run_on_loop", out_of_descriptors)
    assert main(["server", "--cwd", str(tmp_path), "--port", "0"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "trustp2p: error: out of file descriptors (Too many open files): raise the limit"
        " (ulimit -n)"
    )


def test_peers_from_the_file_or_the_environment_serve_a_client_and_warn_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by a tester: `client` refused to start without --connect (click required
    # it before the file or the environment was read), and `server` ignored them
    # without a word while `trustp2p config` showed them in effect.
    url = f"ws://127.0.0.1:{free_port()}"
    monkeypatch.setenv("TRUSTP2P_PEERS", url)
    client = Spawned("client", "--cwd", str(tmp_path))
    client.wait_for_output("node started")
    assert client.stop() == 0, client.output
    said = "trustp2p.cli: ! peers are ignored: a server dials nothing (`trustp2p node` accepts"
    server = Spawned("server", "--cwd", str(tmp_path), "--port", "0")
    server.wait_for_output("node started")
    assert server.stop() == 0, server.output
    assert f"WARNING {said}" in server.output and "TRUSTP2P_PEERS" in server.output
    monkeypatch.delenv("TRUSTP2P_PEERS")
    (tmp_path / "trustp2p.toml").write_text(f'peers = ["{url}"]\n')
    server = Spawned("server", "--cwd", str(tmp_path), "--port", "0")
    server.wait_for_output("node started")
    assert server.stop() == 0, server.output
    # A file shared by a client and a server (the README's layout): said, not warned of.
    assert f"INFO    {said}" in server.output and "trustp2p.toml" in server.output, server.output
    assert "admin token" not in server.output


def test_an_admin_token_without_an_admin_listener_is_warned_of(tmp_path: Path) -> None:
    # Found by a tester, who meant to turn the admin listener on: it started in silence.
    server = Spawned("server", "--cwd", str(tmp_path), "--port", "0", "--admin-token", "x" * 16)
    server.wait_for_output("node started")
    assert server.stop() == 0, server.output
    assert "! the admin token protects nothing: no admin listener (--admin)" in server.output


def test_invalid_option_value_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["server", "--cwd", str(tmp_path), "--heartbeat-interval", "-1"]) == 2
    assert "heartbeat_interval must be a positive number of seconds" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--request-rate", "-1"], "request_rate must be a positive number per second, not -1"),
        (["--max-package-size", "10"], "max_package_size must be an int of at least 1024"),
    ],
)
def test_option_errors_say_what_a_value_must_be(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert main(["server", "--cwd", str(tmp_path), *flags]) == 2
    assert message in capsys.readouterr().err


def test_limit_flags_reach_the_node_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import trustp2p.apps.serve

    seen: dict[str, object] = {}

    async def fake_serve(options: NodeOptions) -> int:
        seen.update(dataclasses.asdict(options))
        return 0

    monkeypatch.setattr(trustp2p.apps.serve, "serve_process", fake_serve)
    argv = ["node", "--cwd", str(tmp_path), "--request-rate", "50", "--request-burst", "60"]
    argv += ["--ip-rate", "1.5", "--ip-burst", "4", "--max-send-queue", "8", "--limit-loopback"]
    argv += ["--invalid-ratio", "0.2", "--block-duration", "60", "--gossip-fanout", "2"]
    argv += ["--storm-connections", "30", "--storm-window", "5", "--storm-cooldown", "20"]
    argv += ["--name", "relay"]
    assert main(argv) == 0
    assert seen["name"] == "relay"
    assert {k: seen[k] for k in ("request_rate", "request_burst", "ip_rate", "ip_burst")} == {
        "request_rate": 50.0,
        "request_burst": 60,
        "ip_rate": 1.5,
        "ip_burst": 4,
    }
    assert (seen["max_send_queue"], seen["limit_loopback"], seen["invalid_ratio"]) == (8, True, 0.2)
    assert (seen["block_duration"], seen["gossip_fanout"]) == (60.0, 2)
    storm = (seen["storm_connections"], seen["storm_window"], seen["storm_cooldown"])
    assert storm == (30, 5.0, 20.0)


def test_relay_topic_flags_reach_the_node_options_of_a_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """tester30 F1: a hub carries topics no thread of its handles (its clients' chat)."""
    import trustp2p.apps.serve

    seen: list[NodeOptions] = []

    async def fake_serve(options: NodeOptions) -> int:
        seen.append(options)
        return 0

    monkeypatch.setattr(trustp2p.apps.serve, "serve_process", fake_serve)
    argv = ["server", "--cwd", str(tmp_path), "--relay-topic", "chat", "--relay-topic", "kv"]
    assert main(argv) == 0
    assert main(["node", "--cwd", str(tmp_path), "--relay-topic", "chat"]) == 0
    assert [options.relay_topics for options in seen] == [("chat", "kv"), ("chat",)]
    assert main(["server", "--cwd", str(tmp_path), "--relay-topic", ""]) == 2
    assert "relay_topics: a topic is a string of 1 to 256 characters, not ''" in (
        capsys.readouterr().err
    )


def test_broken_thread_stops_the_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "threads-enabled").mkdir()
    (tmp_path / "threads-enabled" / "broken.py").write_text("import nowhere_to_be_found\n")
    assert main(["server", "--cwd", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err
    assert "broken.py: import failed: ModuleNotFoundError" in err


def test_server_and_client_subprocesses_exchange_heartbeats(tmp_path: Path) -> None:
    # Two application directories: each node has its own identity (identity/node.key).
    server_app, client_app = tmp_path / "server", tmp_path / "client"
    assert main(["init", str(server_app)]) == 0
    assert main(["init", str(client_app)]) == 0
    port = free_port()
    timings = [
        "--heartbeat-interval",
        "0.05",
        "--heartbeat-jitter",
        "0",
        "--heartbeat-timeout",
        "0.05",
    ]
    server = Spawned(
        "server", "--cwd", str(server_app), "--port", str(port), "--log-level", "debug", *timings
    )
    timings += ["--reconnect-initial", "0.05", "--reconnect-max", "0.2"]  # client options
    client = Spawned(
        "client",
        "--cwd",
        str(client_app),
        "--connect",
        f"ws://127.0.0.1:{port}",
        "--log-level",
        "debug",
        *timings,
    )
    try:
        # (The server's own output if it never listens: a run once waited 30 s for the
        # client's pong with the server's reason unseen, under load.)
        server.wait_for_output("= listening on")
        # The client retries until the server listens, then pings flow.
        client.wait_for_output("> HEARTBEAT_PONG 'pong'")
        server.wait_for_output("< HEARTBEAT_PONG 'pong'")
    finally:
        client_code = client.stop()
        server_code = server.stop()
    client_out, server_out = client.output, server.output
    assert client_code == 0, client_out
    assert server_code == 0, server_out
    assert "< HEARTBEAT_PING 'ping'" in client_out, client_out
    assert "> HEARTBEAT_PONG 'pong'" in client_out
    assert '{"sleep":false}' in client_out
    assert "< HEARTBEAT_PONG 'pong'" in server_out, server_out
    # Clean shutdown: the client's threads stopped and it closed with 1001.
    assert "x node stopped" in client_out
    assert "connection closed (1001 node stopping)" in server_out
    assert "Traceback" not in client_out + server_out


def test_insecure_server_speaks_the_plain_protocol(tmp_path: Path) -> None:
    """--insecure: the original's protocol, so a plain peer (like the original) talks."""
    import asyncio

    from trustp2p import Node

    port = free_port()
    server = Spawned(
        "server",
        "--cwd",
        str(tmp_path),
        "--port",
        str(port),
        "--insecure",
        "--log-level",
        "debug",
    )

    async def ask() -> dict[str, object]:
        client = Node(
            client=True,
            secure=False,
            peers=[f"ws://127.0.0.1:{port}"],
            reconnect_initial=0.05,
            reconnect_max=0.2,
        )
        async with client:
            assert client.client is not None
            async with asyncio.timeout(10):
                await client.client.wait_connected()
            try:
                await client.client.request(client.client.sockets[0], "hello?", {})
            except RemoteError as exc:
                return exc.body
            raise AssertionError("the server has no handler: it must answer an error")

    try:
        answer = asyncio.run(ask())
    finally:
        code = server.stop()
    assert answer == {"error": "no handler for REQUEST 'hello?'"}
    assert code == 0
    assert "< TALK 'version'" in server.output


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ws://", "has no host"),
        ("ws://127.0.0.1:99999", "Port out of range"),
        ("ws://localhost", "names no port: write it, e.g. ws://localhost:1107"),
        ("ws://localhost", "(WebSocket's default, 80, is rarely what was meant)"),
        ("wss://example.org", "(WebSocket's default, 443, is rarely what was meant)"),
        ("ws://127.0.0.1:0", "out of range (1..65535)"),
        ("http://127.0.0.1:1107", "has scheme 'http'"),
        ("ws://user:pw@127.0.0.1:1107", "holds credentials"),
        # Found by an attacker's test: "Error: Invalid IPv6 URL", naming neither.
        ("ws://[::1", "peer URL 'ws://[::1' is invalid: Invalid IPv6 URL"),
    ],
)
def test_bad_urls_are_refused_before_the_node_starts(
    url: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["client", "--cwd", str(tmp_path), "--connect", url]) == 2
    err = capsys.readouterr().err
    assert reason in err
    assert "Error: --connect: " in err  # the flag typed, not the option "peers"
    assert not (tmp_path / "identity").exists()  # nothing started


@pytest.mark.parametrize("moment", ["threads-enabled", "listening on", "node started"])
def test_ctrl_c_at_any_moment_exits_130_quietly(tmp_path: Path, moment: str) -> None:
    """SIGINT while the node starts (loading threads, binding) or once it runs: exit
    status 130, as shells expect of Ctrl-C, and no traceback."""
    process = Spawned("server", "--cwd", str(tmp_path), "--port", "0")
    process.wait_for_output(moment)
    process.process.send_signal(signal.SIGINT)
    code = process.process.wait(timeout=20)
    process.stop()
    assert code == 130, process.output
    assert "Traceback" not in process.output


_PRINT_SIGNALS = """
import signal, subprocess, sys
import tests.conftest  # as pytest does
check = "import signal as s; print(s.getsignal(s.SIGINT) is s.default_int_handler, "
check += "s.getsignal(s.SIGHUP) == s.SIG_DFL)"
subprocess.run([sys.executable, "-c", check], check=True)
"""


def test_the_tests_children_take_sigint_when_the_tests_were_started_ignoring_it() -> None:
    """tester39 F7: `make test &` from a script (SIGINT ignored) or under nohup
    (SIGHUP): the children inherited the ignored signal, so the Ctrl-C tests failed by
    timeout and left their nodes running. The tests' own process still ignores them."""
    root = Path(__file__).resolve().parents[1]
    command = f"trap '' INT HUP; exec {sys.executable} -c '{_PRINT_SIGNALS}'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), SRC])}
    done = subprocess.run(
        ["sh", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True True\n"  # (before: False False, both ignored)


def _exit_code(process: Spawned) -> int | None:
    """The process's exit status within 10 s; None, and the process killed, if it
    didn't exit (a failing test leaves no process behind)."""
    try:
        return process.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.process.kill()
        return None
    finally:
        process.stop()


_HANGING_START = """
import asyncio
from trustp2p import EventMap, PackageType, Thread

class HangingStart(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"x": lambda socket, package: None}}

    async def start(self) -> None:
        self.log.info("start() waits for a backend that never comes")
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if STUBBORN == "returns":
                    return
                if STUBBORN:
                    continue
                raise
"""


@pytest.mark.parametrize(
    ("signum", "stubborn", "code"),
    [
        (signal.SIGTERM, False, 0),
        (signal.SIGINT, False, 130),
        (signal.SIGTERM, True, 0),
        (signal.SIGTERM, "returns", 0),  # (review: the node was left running, unstopped)
    ],
)
def test_a_signal_during_a_start_that_hangs_stops_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signum: int, stubborn: object, code: int
) -> None:
    """Found by a tester: a signal during the start was acted on only once the start
    ended (after a slow thread start(), the node listened, then stopped), and never if a
    start() hung: only kill -9 ended the process. The start is cancelled now; a start()
    that won't be cancelled is left behind after close_timeout."""
    (tmp_path / "threads-enabled").mkdir()
    thread = f"STUBBORN = {stubborn!r}\n" + _HANGING_START
    (tmp_path / "threads-enabled" / "hang.py").write_text(thread)
    monkeypatch.setenv("TRUSTP2P_CLOSE_TIMEOUT", "1")
    process = Spawned("server", "--cwd", str(tmp_path), "--port", "0")
    process.wait_for_output("start() waits for a backend")
    process.process.send_signal(signum)
    assert _exit_code(process) == code, process.output
    assert "x stopping during the start: the start is undone" in process.output
    assert "Traceback" not in process.output
    if stubborn == "returns":  # the start went on: the node is stopped as it runs
        assert "x stopping node" in process.output and "x node stopped" in process.output
    else:
        assert "listening on" not in process.output
    if stubborn is True:
        assert "didn't end when cancelled" in process.output


_SLOW_STOP = """
import asyncio
from trustp2p import EventMap, PackageType, Thread

class SlowStop{n}(Thread):
    @property
    def event_map(self) -> EventMap:
        return {{PackageType.TALK: {{"x{n}": lambda socket, package: None}}}}

    async def stop(self) -> None:
        await asyncio.sleep(0.7)
        self.log.info("stop() {n} done")
"""


def test_a_start_undone_after_a_signal_stops_every_thread_it_started(tmp_path: Path) -> None:
    """Found in review: the undo of a start a signal cancelled was given close_timeout
    in all; then the process cancelled what was left, the node's own stop with it: the
    second thread's stop() was cut off, and the stores weren't closed."""
    enabled = tmp_path / "threads-enabled"
    enabled.mkdir()
    for n in (1, 2):  # (loaded in name order: both start before the hanging one)
        (enabled / f"a{n}.py").write_text(_SLOW_STOP.format(n=n))
    (enabled / "hang.py").write_text("STUBBORN = False\n" + _HANGING_START)
    process = Spawned("server", "--cwd", str(tmp_path), "--port", "0", "--close-timeout", "1")
    process.wait_for_output("start() waits for a backend")
    process.process.send_signal(signal.SIGTERM)
    assert _exit_code(process) == 0, process.output
    for said in ("stop() 1 done", "stop() 2 done", "x failed start undone"):
        assert said in process.output, process.output
    assert "exiting without" not in process.output


def test_a_node_started_with_sigint_ignored_keeps_ignoring_it(tmp_path: Path) -> None:
    """A node a shell starts in the background (``trustp2p server ... &``) inherits an
    ignored SIGINT: a Ctrl-C in that terminal is for the foreground job. It stopped the
    node (found by a tester); SIGTERM stops it."""
    command = f"trap '' INT; exec {sys.executable} -m trustp2p server --cwd {tmp_path} --port 0"
    process = Spawned("sh", "-c", command, command=True)
    process.wait_for_output("node started")
    process.process.send_signal(signal.SIGINT)
    code = process.stop()  # SIGTERM: 0; had the SIGINT stopped it, 130
    assert code == 0, process.output
    assert "Ctrl-C" not in process.output


@pytest.mark.parametrize("mode", [[], ["--insecure"]])
def test_a_second_ctrl_c_drops_a_frozen_peer_at_once(tmp_path: Path, mode: list[str]) -> None:
    """A frozen peer never answers our close frame: the stop waits ``close_timeout``
    for it (a minute here). A second Ctrl-C drops the connections (found by a tester:
    a node with a frozen peer took 12 s to stop, saying nothing)."""
    port = free_port()
    for name in "sc":
        (tmp_path / name).mkdir()
    server = Spawned("server", "--cwd", str(tmp_path / "s"), "--port", str(port),
                     "--close-timeout", "60", *mode)  # fmt: skip
    client = Spawned("client", "--cwd", str(tmp_path / "c"), "--connect",
                     f"ws://127.0.0.1:{port}", *mode)  # fmt: skip
    try:
        server.wait_for_output("= connected to us")
        client.process.send_signal(signal.SIGSTOP)
        server.process.send_signal(signal.SIGINT)
        server.wait_for_output("closing 1 connection(s), each within close_timeout (60 s)")
        time.sleep(0.1)  # (within 0.05 s of the first, a signal is the same request)
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=20) == 130, server.output  # not 60 s
        assert "Ctrl-C again: dropping the connections not closed yet" in server.output
        assert "Traceback" not in server.output
    finally:
        client.process.send_signal(signal.SIGCONT)
        client.stop()
        server.stop()


_HANGING_STOP = """
import asyncio
from trustp2p import EventMap, PackageType, Thread

class HangingStop(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"x": lambda socket, package: None}}

    async def stop(self) -> None:
        self.log.info("stop() waits for a backend that never answers")
        await asyncio.Event().wait()
"""


def test_a_second_sigterm_cuts_short_a_stop_that_hangs_and_says_what_it_waited_for(
    tmp_path: Path,
) -> None:
    """tester39 F8: a thread's stop() that hung held the stop for close_timeout (a
    minute here) without a word, and a second SIGTERM didn't shorten it. The stop now
    says what it waits for after 3 s; a second SIGTERM gives it up, and says so."""
    (tmp_path / "threads-enabled").mkdir()
    (tmp_path / "threads-enabled" / "hang.py").write_text(_HANGING_STOP)
    process = Spawned("server", "--cwd", str(tmp_path), "--port", "0", "--close-timeout", "60")
    process.wait_for_output("node started")
    process.process.send_signal(signal.SIGTERM)
    process.wait_for_output("x the stop waits for stop() of ")  # (3 s after the SIGTERM)
    process.process.send_signal(signal.SIGTERM)
    assert _exit_code(process) == 0, process.output  # within 10 s, not 60
    output = process.output
    assert re.search(
        r"x the stop waits for stop\(\) of \S*hang\.py \(60 s at most; SIGTERM again cuts"
        r" the stop short\)",
        output,
    ), output
    said = r"x SIGTERM again: dropping the connections not closed yet; not waiting for"
    assert re.search(said + r" stop\(\) of \S*hang\.py any more", output), output
    assert "stop() waits for a backend" in output and "x node stopped" in output
    assert "Traceback" not in output and "exiting without" not in output


_SLOW_START = """
import asyncio
from trustp2p import EventMap, PackageType, Thread

class SlowStart(Thread):
    @property
    def event_map(self) -> EventMap:
        return {PackageType.TALK: {"y": lambda socket, package: None}}

    async def start(self) -> None:
        self.log.info("start() is slow")
        await asyncio.sleep(60)
"""


def test_a_second_sigterm_cuts_short_the_undoing_of_a_start(tmp_path: Path) -> None:
    """review61 F4: a SIGTERM during a slow start undoes it; a thread's stop() that
    hung then held the process close_timeout (a minute here), and a second SIGTERM
    was ignored: only one after the start ended counted."""
    (tmp_path / "threads-enabled").mkdir()
    (tmp_path / "threads-enabled" / "a_hang.py").write_text(_HANGING_STOP)
    (tmp_path / "threads-enabled" / "b_slow.py").write_text(_SLOW_START)
    process = Spawned("server", "--cwd", str(tmp_path), "--port", "0", "--close-timeout", "60")
    process.wait_for_output("start() is slow")
    process.process.send_signal(signal.SIGTERM)
    process.wait_for_output("x the stop waits for stop() of ")  # (3 s after the SIGTERM)
    process.process.send_signal(signal.SIGTERM)
    assert _exit_code(process) == 0, process.output  # within 10 s, not 60
    assert "SIGTERM again cuts the stop short" in process.output
    assert "x SIGTERM again: dropping the connections not closed yet" in process.output


@pytest.mark.parametrize(
    ("command", "own", "foreign"),
    [
        ("server", ["--port", "--max-inbound", "--storm-window"], ["--connect", "--reconnect-max"]),
        ("client", ["--connect", "--reconnect-max"], ["--port", "--max-inbound", "--ip-rate"]),
        ("node", ["--port", "--connect", "--max-inbound", "--reconnect-max"], []),
    ],
)
def test_help_groups_options_and_shows_each_role_its_own(
    command: str, own: list[str], foreign: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    for heading in ("Node options:", "Limits and blocks options:", "Logging options:"):
        assert heading in text
    assert text.index("Node options:") < text.index("Logging options:")
    for flag in own:
        assert flag in text
    for flag in foreign:
        assert f"{flag} " not in text, flag


@pytest.mark.parametrize("command", ["id", "peers", "config", "server", "client", "node"])
def test_a_missing_directory_is_an_error_not_a_new_node(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert main([command, "--cwd", str(missing)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not missing.exists()  # no identity made in a directory nobody meant


async def test_one_sigterm_delivered_twice_is_one_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``timeout 10 trustp2p server`` signals the node, then its process group: two
    SIGTERMs before the stop began. The node logged a WARNING "SIGTERM again: dropping
    the connections not closed yet" and dropped them (found running as a user would)."""
    from trustp2p.apps.serve import serve

    caplog.set_level(logging.INFO, logger="trustp2p")
    running = asyncio.ensure_future(serve(NodeOptions(server=True, port=0, cwd=tmp_path)))
    await wait_for(lambda: any("node started" in r.getMessage() for r in caplog.records))
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # both handled before the stop begins
    assert await running == 0
    assert not [r.getMessage() for r in caplog.records if "again" in r.getMessage()]


_LEFT_BEHIND = """
import asyncio, time
from trustp2p import PackageType, Thread

class LeftBehind(Thread):
    @property
    def event_map(self):
        return {PackageType.TALK: {"x": lambda socket, package: None}}

    async def start(self):
        self.create_task(self._stubborn())
        self.create_task(asyncio.to_thread(time.sleep, 60))  # blocking work, off the loop

    async def _stubborn(self):
        while True:
            try:
                await asyncio.sleep(100)
            except asyncio.CancelledError:  # as a bare except: does
                pass
"""


def test_a_node_exits_after_its_stop_whatever_its_threads_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a tester: a thread task that catches its CancelledError held the stop for
    ever (SIGTERM, again, Ctrl-C: nothing), and work in asyncio.to_thread kept the
    process 120 s after "x node stopped", without a word. Waited close_timeout at most
    each, then said and left."""
    (tmp_path / "threads-enabled").mkdir()
    (tmp_path / "threads-enabled" / "left.py").write_text(_LEFT_BEHIND)
    monkeypatch.setenv("TRUSTP2P_CLOSE_TIMEOUT", "1")
    process = Spawned("server", "--cwd", str(tmp_path), "--port", "0")
    process.wait_for_output("node started")
    # A thread file loaded is said at INFO (a tester: did the symlink take?).
    assert "INFO    trustp2p.node.node: = loaded thread LeftBehind from " in process.output
    assert process.stop() == 0, process.output  # within 10 s
    assert "tasks of" in process.output and "didn't end within 1 s of being cancelled" in (
        process.output
    )
    assert "x node stopped" in process.output
    said = (
        r"x exiting without what the threads left running 1 s after the stop: 1 task\(s\)"
        r" that didn't end when cancelled \(LeftBehind._stubborn\); \d thread\(s\) still at"
        r" work \(asyncio.to_thread, run_in_executor\)"
    )
    assert re.search(said, process.output), process.output


def test_a_signal_once_the_node_stopped_does_not_kill_the_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a tester: a second SIGTERM 0.1 s after the first, once the node had
    said "x node stopped", killed the process (exit status 143, not 0): the handlers
    were removed, and the default action came back, while the process still ended.
    Here the process waits for what a thread left running (close_timeout) meanwhile."""
    (tmp_path / "threads-enabled").mkdir()
    (tmp_path / "threads-enabled" / "left.py").write_text(_LEFT_BEHIND)
    monkeypatch.setenv("TRUSTP2P_CLOSE_TIMEOUT", "2")
    process = Spawned("server", "--cwd", str(tmp_path), "--port", "0")
    process.wait_for_output("node started")
    process.process.send_signal(signal.SIGTERM)
    process.wait_for_output("x node stopped")
    process.process.send_signal(signal.SIGTERM)
    process.process.send_signal(signal.SIGINT)  # a Ctrl-C pressed again: no traceback
    assert process.process.wait(timeout=20) == 0, process.output
    process.stop()
    assert "x exiting without what the threads left running 2 s" in process.output
    assert "Traceback" not in process.output


def test_sighup_stops_a_node_cleanly(tmp_path: Path) -> None:
    """A closed terminal or a dropped ssh session sends SIGHUP: it killed the node as
    kill -9 would (no stop, no line, the stores' last counts lost; found by a tester).
    A clean stop now, exit status 129; a node started under nohup keeps ignoring it."""
    process = Spawned("server", "--cwd", str(tmp_path), "--port", "0")
    process.wait_for_output("node started")
    process.process.send_signal(signal.SIGHUP)
    assert process.process.wait(timeout=20) == 129, process.output
    process.stop()
    assert "x node stopped" in process.output and "Traceback" not in process.output
    command = f"trap '' HUP; exec {sys.executable} -m trustp2p server --cwd {tmp_path} --port 0"
    ignoring = Spawned("sh", "-c", command, command=True)
    ignoring.wait_for_output("node started")
    ignoring.process.send_signal(signal.SIGHUP)
    assert ignoring.stop() == 0, ignoring.output  # SIGTERM's status: the SIGHUP did nothing
