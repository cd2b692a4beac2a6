"""
The thread bootstrap: loads ``<cwd>/threads-enabled/*.py``.

Files are loaded in name order; symlinks are followed (``threads-enabled`` usually holds
links into ``threads-available``); names starting with ``_`` or ``.`` and files not
ending in ``.py`` are skipped. Each file must define exactly one :class:`Thread`
subclass with a valid, non-empty event map. Anything else stops the node from starting
with a :exc:`ThreadLoadError` naming the file and the reason; so does a thread whose
:meth:`~Thread.start` raises (:func:`start_thread`).

"""

from __future__ import annotations

__all__ = [
    "THREADS_AVAILABLE",
    "THREADS_ENABLED",
    "check_event_map",
    "check_handler",
    "enabled_thread_classes",
    "load_thread_classes",
    "make_thread",
    "make_threads",
    "start_thread",
    "thread_files",
]

import importlib.util
import inspect
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..exceptions import ThreadLoadError
from ..protocol.package import PackageType
from .base import EventMap, Thread

THREADS_ENABLED = "threads-enabled"
THREADS_AVAILABLE = "threads-available"


def thread_files(directory: Path) -> list[Path]:
    """The files of ``directory`` that hold threads, in load order."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.suffix == ".py" and not path.name.startswith(("_", "."))
    )


def enabled_thread_classes(
    cwd: Path | None, log: logging.Logger, *, others: bool
) -> list[type[Thread]]:
    """
    The thread classes of ``<cwd>/threads-enabled/`` (none without a ``cwd``). A missing
    directory is logged: a WARNING when no thread comes from elsewhere (not ``others``),
    as with a mistyped ``--cwd``, else INFO.

    Raises:
        ThreadLoadError: If ``cwd`` is not a directory, or a file can't be loaded.

    """
    if cwd is None:
        return []
    if not cwd.is_dir():
        raise ThreadLoadError(cwd, "cwd is not a directory")
    enabled = cwd / THREADS_ENABLED
    if enabled.is_dir():
        return load_thread_classes(enabled)
    level = logging.INFO if others else logging.WARNING
    log.log(level, "! %s doesn't exist: no thread loaded from it", enabled)
    return []


def load_thread_classes(directory: Path) -> list[type[Thread]]:
    """
    Import every thread file of ``directory`` and return its thread class.

    Raises:
        ThreadLoadError: If a file can't be loaded; see the module docstring.

    """
    classes = []
    for path in thread_files(directory):
        cls = _load_file(path)
        cls.path = str(path)
        classes.append(cls)
    return classes


def _load_file(path: Path) -> type[Thread]:
    if path.is_symlink() and not path.exists():
        raise ThreadLoadError(path, f"dangling symlink to {path.readlink()}")
    if not path.is_file():
        raise ThreadLoadError(path, "not a regular file")
    module_name = f"trustp2p_threads.{path.stem.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - .py files always have one
        raise ThreadLoadError(path, "can't be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    home = str(path.resolve().parent)  # (threads-available/, through the link)
    if home not in sys.path:  # its helper modules import by name (found by a new user);
        sys.path.append(home)  # last: a helper can't shadow the standard library
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise ThreadLoadError(path, f"import failed: {type(exc).__name__}: {exc}") from exc
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Thread)
        and obj.__module__ == module_name
        and not inspect.isabstract(obj)
    ]
    if not classes:
        raise ThreadLoadError(path, "defines no subclass of trustp2p.Thread")
    if len(classes) > 1:
        names = ", ".join(sorted(cls.__name__ for cls in classes))
        raise ThreadLoadError(
            path, f"defines {len(classes)} thread classes ({names}); expected one"
        )
    return classes[0]


def check_event_map(thread: Thread) -> dict[PackageType, dict[str, object]]:
    """
    Check a thread's event map and return it with its keys as :class:`PackageType`.

    Raises:
        ThreadLoadError: If the map is empty or malformed.

    """
    where = thread.path or type(thread).__name__
    try:
        event_map: EventMap = thread.event_map
    except Exception as exc:
        raise ThreadLoadError(where, f"event_map failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(event_map, Mapping):
        raise ThreadLoadError(where, f"event_map must be a mapping, not {type(event_map).__name__}")
    if not event_map:
        raise ThreadLoadError(where, "event_map is empty")
    checked: dict[PackageType, dict[str, object]] = {}
    for key, events in event_map.items():
        try:
            package_type = PackageType(key)
        except ValueError:
            raise ThreadLoadError(where, f"event_map has unknown package type {key!r}") from None
        if not isinstance(events, Mapping) or not events:
            raise ThreadLoadError(
                where, f"event_map[{package_type.name}] must be a non-empty mapping of handlers"
            )
        for event, handler in events.items():
            if not isinstance(event, str) or not event:
                raise ThreadLoadError(
                    where, f"event_map[{package_type.name}] has invalid event name {event!r}"
                )
            if not callable(handler):
                raise ThreadLoadError(
                    where, f"handler of {package_type.name} {event!r} is not callable"
                )
            _check_arity(where, package_type, event, handler)
        checked[package_type] = dict(events)
    return checked


def _check_arity(where: str, package_type: PackageType, event: str, handler: Any) -> None:
    """Whether ``handler`` can be called as ``handler(socket, package)``: found by a new
    user, a GOSSIP handler written as ``on_chat(self, message)`` (a subscriber's shape)
    loaded, then raised TypeError on every message."""
    second = "message" if package_type is PackageType.GOSSIP else "package"
    mismatch = _call_mismatch(handler, ("socket", second))
    if mismatch is not None:
        raise ThreadLoadError(where, f"handler of {package_type.name} {event!r} {mismatch}")


def check_handler(handler: object, params: tuple[str, ...], what: str = "handler") -> None:
    """
    Check that ``handler`` can be called with one positional argument per name of
    ``params``, as threads' handlers are checked at load: ``subscribe()`` checks its
    handler with it (tester31 F11: a string, or a lambda of 0 or 2 arguments, was
    accepted, then failed on every message, each consumed).

    Raises:
        TypeError: If it isn't callable, or can't be called that way.

    """
    if not callable(handler):
        raise TypeError(f"{what} must be callable, not {type(handler).__name__}")
    mismatch = _call_mismatch(handler, params)
    if mismatch is not None:
        raise TypeError(f"{what} {mismatch}")


def _call_mismatch(handler: Any, params: tuple[str, ...]) -> str | None:
    """Why ``handler`` can't be called with ``len(params)`` positional arguments
    (``"can't be called as handler(...)..."``), or ``None`` if it can (or has no
    signature to read, as some builtins: then as it is)."""
    try:
        signature = inspect.signature(handler, follow_wrapped=False)  # what is called
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(*(None for _ in params))
    except TypeError:
        name = getattr(handler, "__qualname__", type(handler).__name__)
        return f"can't be called as handler({', '.join(params)}): it is {name}{signature}"
    return None


def make_thread(cls: type[Thread], node: Any) -> Thread:
    """
    ``cls(node)``: the thread a node runs.

    Raises:
        ThreadLoadError: If the constructor raises (``__cause__`` is what it raised).

    """
    try:
        return cls(node)
    except Exception as exc:
        where = cls.path or cls.__qualname__
        raise ThreadLoadError(where, f"{cls.__name__}(node) failed: {exc!r}") from exc


def make_threads(node: Any, classes: list[type[Thread]]) -> list[Thread]:
    """
    The threads of ``classes`` made for ``node``, in order, their handlers registered
    (``node.handlers``).

    Raises:
        ThreadLoadError: If a constructor raises, or an event map is invalid.

    """
    threads = []
    for cls in classes:
        thread = make_thread(cls, node)
        node.handlers.add_thread(thread)
        threads.append(thread)
        # A thread file's at INFO: an operator sees that a symlink took (a tester).
        level = logging.INFO if cls.path else logging.DEBUG
        node.log.log(level, "= loaded thread %s from %s", cls.__name__, cls.path or cls.__module__)
    return threads


async def start_thread(thread: Thread) -> None:
    """
    Call ``thread.start()``, sync or async.

    Raises:
        ThreadLoadError: If it raises: the thread can't work, and the node doesn't start
            (``__cause__`` is what it raised).

    """
    try:
        result = thread.start()
        if inspect.isawaitable(result):
            await result
    except Exception as exc:
        thread.node.metrics.handler_failed("hook", "start")
        where = thread.path or type(thread).__qualname__
        raise ThreadLoadError(where, f"start() failed: {exc!r}") from exc
