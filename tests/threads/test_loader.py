"""Loading thread files from threads-enabled/, and checking event maps."""

from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from trustp2p import EventMap, PackageType, Thread, ThreadLoadError
from trustp2p.threads.heartbeat import HeartbeatThread
from trustp2p.threads.loader import (
    THREADS_AVAILABLE,
    THREADS_ENABLED,
    check_event_map,
    load_thread_classes,
    thread_files,
)

NODE: Any = SimpleNamespace(server=None, client=None)

ECHO = """
from trustp2p import PackageType, Thread


class {name}(Thread):
    @property
    def event_map(self):
        return {{PackageType.REQUEST: {{"{event}": self._handle}}}}

    def _handle(self, socket, package):
        return {{"echo": package.body}}
"""


@pytest.fixture(autouse=True)
def _forget_thread_modules() -> Iterator[None]:
    """Loaded thread modules go in sys.modules; drop them after each test."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.startswith("trustp2p_threads."):
            del sys.modules[name]


@pytest.fixture
def enabled(tmp_path: Path) -> Path:
    (tmp_path / THREADS_AVAILABLE).mkdir()
    (tmp_path / THREADS_ENABLED).mkdir()
    return tmp_path / THREADS_ENABLED


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    return path


def enable(enabled: Path, name: str, source: str) -> Path:
    """Write a thread into threads-available/ and link it from threads-enabled/."""
    target = write(enabled.parent / THREADS_AVAILABLE, name, source)
    link = enabled / name
    link.symlink_to(target)
    return link


def load_error(enabled: Path) -> ThreadLoadError:
    with pytest.raises(ThreadLoadError) as info:
        load_thread_classes(enabled)
    return info.value


# Loading


def test_load_symlinked_thread(enabled: Path) -> None:
    link = enable(enabled, "echo.py", ECHO.format(name="EchoThread", event="echo"))
    (cls,) = load_thread_classes(enabled)
    assert cls.__name__ == "EchoThread"
    assert issubclass(cls, Thread)
    assert cls.path == str(link)
    thread = cls(NODE)
    assert (thread.server, thread.client, thread.path) == (None, None, str(link))
    assert check_event_map(thread) == {PackageType.REQUEST: {"echo": thread._handle}}  # type: ignore[attr-defined]


def test_a_thread_imports_a_helper_module_beside_it(
    enabled: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by a new user: a thread of threads-available/ couldn't import a helper
    module there (``from codec import ...``: ModuleNotFoundError) unless PYTHONPATH
    named the directory. Its directory (the link's target's) is on sys.path, last."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    write(enabled.parent / THREADS_AVAILABLE, "t31_codec.py", "GREETING = 'hi'\n")
    enable(
        enabled,
        "greeter.py",
        """
        from t31_codec import GREETING
        from trustp2p import Thread


        class Greeter(Thread):
            greeting = GREETING
        """,
    )
    (cls,) = load_thread_classes(enabled)
    assert cls.greeting == "hi"  # type: ignore[attr-defined]
    assert sys.path[-1] == str((enabled.parent / THREADS_AVAILABLE).resolve())


def test_load_in_name_order(enabled: Path) -> None:
    enable(enabled, "b_second.py", ECHO.format(name="Second", event="b"))
    write(enabled, "a_first.py", ECHO.format(name="First", event="a"))
    assert [path.name for path in thread_files(enabled)] == ["a_first.py", "b_second.py"]
    classes = load_thread_classes(enabled)
    assert [cls.__name__ for cls in classes] == ["First", "Second"]
    assert [cls.path for cls in classes] == [
        str(enabled / "a_first.py"),
        str(enabled / "b_second.py"),
    ]


def test_skips_private_hidden_and_non_python_files(enabled: Path) -> None:
    write(enabled, "echo.py", ECHO.format(name="EchoThread", event="echo"))
    write(enabled, "_private.py", "this is not python")
    write(enabled, ".hidden.py", "this is not python")
    write(enabled, "notes.txt", "this is not python")
    write(enabled, "README", "this is not python")
    assert thread_files(enabled) == [enabled / "echo.py"]
    assert [cls.__name__ for cls in load_thread_classes(enabled)] == ["EchoThread"]


def test_empty_directory(enabled: Path) -> None:
    assert thread_files(enabled) == []
    assert load_thread_classes(enabled) == []


def test_imported_thread_classes_are_not_counted(enabled: Path) -> None:
    source = "from trustp2p.threads.heartbeat import HeartbeatThread\n" + ECHO.format(
        name="Mine", event="mine"
    )
    write(enabled, "mine.py", source)
    (cls,) = load_thread_classes(enabled)
    assert cls.__name__ == "Mine"
    assert HeartbeatThread.path is None


def test_heartbeat_thread_loads(enabled: Path) -> None:
    source = Path(sys.modules[HeartbeatThread.__module__].__file__ or "").read_text()
    enable(enabled, "heartbeat.py", source)
    (cls,) = load_thread_classes(enabled)
    assert cls.__name__ == "HeartbeatThread"
    assert list(check_event_map(cls(NODE))) == [PackageType.HEARTBEAT_PING]


# Load errors


def test_syntax_error(enabled: Path) -> None:
    path = write(enabled, "broken.py", "def broken(:\n")
    error = load_error(enabled)
    assert error.path == path
    assert error.reason.startswith("import failed: SyntaxError: ")
    assert str(error) == f"{path}: {error.reason}"
    assert isinstance(error.__cause__, SyntaxError)
    assert "trustp2p_threads.broken" not in sys.modules


def test_import_raising(enabled: Path) -> None:
    path = write(enabled, "boom.py", "raise RuntimeError('boom')\n")
    error = load_error(enabled)
    assert error.path == path
    assert error.reason == "import failed: RuntimeError: boom"
    assert str(error) == f"{path}: import failed: RuntimeError: boom"
    assert isinstance(error.__cause__, RuntimeError)
    assert "trustp2p_threads.boom" not in sys.modules


def test_missing_dependency(enabled: Path) -> None:
    write(enabled, "dep.py", "import trustp2p_no_such_module\n")
    error = load_error(enabled)
    assert error.reason == (
        "import failed: ModuleNotFoundError: No module named 'trustp2p_no_such_module'"
    )


def test_error_names_the_broken_file_after_good_ones(enabled: Path) -> None:
    write(enabled, "a.py", ECHO.format(name="Good", event="a"))
    path = write(enabled, "b.py", "1 / 0\n")
    error = load_error(enabled)
    assert error.path == path
    assert error.reason == "import failed: ZeroDivisionError: division by zero"


def test_no_thread_class(enabled: Path) -> None:
    path = write(
        enabled, "empty.py", "from trustp2p import Thread\n\nclass NotAThread:\n    pass\n"
    )
    error = load_error(enabled)
    assert error.path == path
    assert error.reason == "defines no subclass of trustp2p.Thread"


def test_two_thread_classes(enabled: Path) -> None:
    source = ECHO.format(name="BThread", event="b") + ECHO.format(name="AThread", event="a")
    path = write(enabled, "two.py", source)
    error = load_error(enabled)
    assert error.path == path
    assert error.reason == "defines 2 thread classes (AThread, BThread); expected one"


def test_dangling_symlink(enabled: Path) -> None:
    target = enabled.parent / THREADS_AVAILABLE / "gone.py"
    link = enabled / "gone.py"
    link.symlink_to(target)
    error = load_error(enabled)
    assert error.path == link
    assert error.reason == f"dangling symlink to {target}"


def test_relative_dangling_symlink(enabled: Path) -> None:
    link = enabled / "gone.py"
    link.symlink_to(Path("..") / THREADS_AVAILABLE / "gone.py")
    assert load_error(enabled).reason == "dangling symlink to ../threads-available/gone.py"


def test_directory_named_like_a_thread(enabled: Path) -> None:
    (enabled / "package.py").mkdir()
    error = load_error(enabled)
    assert (error.path, error.reason) == (enabled / "package.py", "not a regular file")


# check_event_map


def _handler(socket: Any, package: Any) -> None:
    return None


def _thread(event_map: Any, *, path: str | None = None) -> Thread:
    """A thread whose event_map property returns ``event_map``, or raises it."""

    class MapThread(Thread):
        @property
        def event_map(self) -> Any:
            if isinstance(event_map, Exception):
                raise event_map
            return event_map

    MapThread.path = path
    return MapThread(NODE)


def map_error(thread: Thread) -> ThreadLoadError:
    with pytest.raises(ThreadLoadError) as info:
        check_event_map(thread)
    return info.value


def test_check_event_map_returns_package_types() -> None:
    checked = check_event_map(_thread({30: {"a": _handler}, PackageType.TALK: {"b": print}}))
    assert checked == {PackageType.REQUEST: {"a": _handler}, PackageType.TALK: {"b": print}}
    assert all(type(key) is PackageType for key in checked)


@pytest.mark.parametrize(
    ("event_map", "reason"),
    [
        ({}, "event_map is empty"),
        ([(PackageType.TALK, {"a": _handler})], "event_map must be a mapping, not list"),
        (None, "event_map must be a mapping, not NoneType"),
        ({9: {"a": _handler}}, "event_map has unknown package type 9"),
        ({"REQUEST": {"a": _handler}}, "event_map has unknown package type 'REQUEST'"),
        ({PackageType.TALK: {}}, "event_map[TALK] must be a non-empty mapping of handlers"),
        ({PackageType.TALK: [_handler]}, "event_map[TALK] must be a non-empty mapping of handlers"),
        ({PackageType.TALK: {"": _handler}}, "event_map[TALK] has invalid event name ''"),
        ({PackageType.TALK: {7: _handler}}, "event_map[TALK] has invalid event name 7"),
        ({PackageType.REQUEST: {"a": "_handler"}}, "handler of REQUEST 'a' is not callable"),
        (RuntimeError("nope"), "event_map failed: RuntimeError: nope"),
    ],
    ids=[
        "empty", "list", "none", "unknown-type", "type-name", "empty-inner", "inner-list",
        "blank-event", "int-event", "not-callable", "raises",
    ],
)  # fmt: skip
def test_check_event_map_errors(event_map: Any, reason: str) -> None:
    error = map_error(_thread(event_map))
    assert error.reason == reason
    assert error.path == Path("MapThread")  # no file: the class name stands in
    assert str(error) == f"MapThread: {reason}"


def test_handlers_that_cant_take_socket_and_package_are_refused_at_load() -> None:
    # Found by a new user: on_chat(self, message), a subscriber's shape, in a GOSSIP map
    # loaded, then raised TypeError on every message.
    class Chat:
        def on_chat(self, message: Any) -> None: ...

        def on_rest(self, socket: Any, *rest: Any) -> None: ...

        def on_three(self, socket: Any, package: Any, extra: Any) -> None: ...

        def on_default(self, socket: Any, package: Any, extra: Any = None) -> None: ...

    chat = Chat()
    error = map_error(_thread({PackageType.GOSSIP: {"chat": chat.on_chat}}))
    assert error.reason == (
        "handler of GOSSIP 'chat' can't be called as handler(socket, message):"
        " it is test_handlers_that_cant_take_socket_and_package_are_refused_at_load"
        ".<locals>.Chat.on_chat(message: 'Any') -> 'None'"
    )
    error = map_error(_thread({PackageType.REQUEST: {"a": chat.on_three}}))
    assert error.reason.startswith("handler of REQUEST 'a' can't be called as handler(socket,")
    assert error.reason.endswith(
        "Chat.on_three(socket: 'Any', package: 'Any', extra: 'Any') -> 'None'"
    )
    loaded = {"b": chat.on_rest, "c": chat.on_default, "d": print, "e": lambda s, p: None}
    assert check_event_map(_thread({PackageType.TALK: loaded})) == {PackageType.TALK: loaded}


def _drops_the_socket(handler: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    @functools.wraps(handler)
    def wrapper(socket: Any, package: Any) -> Any:
        return handler(package)

    return wrapper


@_drops_the_socket
def _package_only(package: Any) -> None: ...


def test_handlers_are_checked_as_they_are_called() -> None:
    # Found in review: a decorator made with functools.wraps takes (socket, package)
    # while the function it wraps doesn't; the wrapper is what the node calls.
    loaded = {"a": _package_only, "b": functools.partial(lambda x, s, p: None, 1)}
    assert check_event_map(_thread({PackageType.TALK: loaded})) == {PackageType.TALK: loaded}


def test_check_event_map_names_the_thread_file() -> None:
    error = map_error(_thread({}, path="/srv/threads-enabled/echo.py"))
    assert error.path == Path("/srv/threads-enabled/echo.py")
    assert str(error) == "/srv/threads-enabled/echo.py: event_map is empty"


def test_check_event_map_chains_the_exception() -> None:
    cause = KeyError("k")
    error = map_error(_thread(cause))
    assert error.__cause__ is cause
    assert error.reason == "event_map failed: KeyError: 'k'"


def test_thread_without_event_map() -> None:
    class Bare(Thread):
        pass

    error = map_error(Bare(NODE))
    assert str(error) == "Bare: event_map failed: NotImplementedError: Bare must define event_map"


@pytest.mark.parametrize("event", ["hello", "version"])
def test_reserved_talks_are_refused_with_the_file_and_the_names(tmp_path: Path, event: str) -> None:
    from trustp2p.node.handlers import HandlerRegistry

    class Greeter(Thread):
        path = str(tmp_path / "greeter.py")

        @property
        def event_map(self) -> EventMap:
            return {PackageType.TALK: {event: lambda socket, package: None}}

    registry = HandlerRegistry()
    with pytest.raises(ThreadLoadError) as caught:
        registry.add_thread(Greeter.__new__(Greeter))
    assert str(caught.value) == (
        f"{tmp_path / 'greeter.py'}: TALK {event!r} is reserved by the node "
        "(reserved: hello, version)"
    )


def test_gossip_topics_peers_refuse_are_refused_at_load() -> None:
    from trustp2p.node.handlers import HandlerRegistry

    def topics_thread(topics: list[str]) -> Thread:
        class Listener(Thread):
            path = "listener.py"

            @property
            def event_map(self) -> EventMap:
                return {PackageType.GOSSIP: {t: lambda socket, message: None for t in topics}}

        return Listener.__new__(Listener)

    registry = HandlerRegistry()
    with pytest.raises(ThreadLoadError) as caught:
        registry.add_thread(topics_thread(["x" * 257]))
    assert str(caught.value) == "listener.py: GOSSIP topic of 257 characters: 1 to 256"
    # 1,000 topics, all threads together; one handled twice counts once.
    registry.add_thread(topics_thread([f"t{i}" for i in range(600)]))
    registry.add_thread(topics_thread([f"t{i}" for i in range(400, 1000)]))
    with pytest.raises(ThreadLoadError) as caught:
        registry.add_thread(topics_thread(["t1", "one more"]))
    assert str(caught.value) == "listener.py: more than 1000 GOSSIP topics, all threads together"
