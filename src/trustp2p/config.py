"""
Where a node's options come from: command-line flags, ``TRUSTP2P_*`` environment
variables, ``<cwd>/trustp2p.toml``, and the defaults of :class:`NodeOptions`, in that
order of precedence.

Every :class:`NodeOptions` field that a text can hold is configurable this way. The
command decides the role (``server``, ``client``), ``--cwd`` the directory; thread
classes and an identity object exist only in Python. In the file, keys are the field
names (``max_inbound``, or ``max-inbound``); in the environment, ``TRUSTP2P_`` and the
name in capitals (``TRUSTP2P_MAX_INBOUND``). Environment values are text: booleans are
``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``), lists are
comma-separated (``TRUSTP2P_PEERS=ws://a:1107,ws://b:1107``), and ``none`` clears an
option that may be unset (``TRUSTP2P_MAX_INBOUND=none``), as the string ``"none"``
does in the file. An unknown key is an error that names the closest valid one.
Variables starting with ``TRUSTP2P_TESTS_`` or ``TRUSTP2P_BENCH_`` belong to the test
suite and the benchmarks, not to nodes; ``TRUSTP2P_LOG_LEVEL``, ``TRUSTP2P_LOG_FORMAT``
and ``TRUSTP2P_LOOP`` to the command's flags of those names (:data:`FLAGS_ONLY`).
"""

from __future__ import annotations

__all__ = [
    "CONFIG_FILE",
    "ENV_PREFIX",
    "FLAGS_ONLY",
    "Setting",
    "Source",
    "configurable",
    "load_settings",
    "with_origins",
]

import dataclasses
import difflib
import enum
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .options import NodeOptions

CONFIG_FILE = "trustp2p.toml"
"""The configuration file, in a node's working directory."""

ENV_PREFIX = "TRUSTP2P_"
"""The prefix of the environment variables that set options."""

NOT_OPTIONS = ("TRUSTP2P_TESTS_", "TRUSTP2P_BENCH_", "TRUSTP2P_COMPILE", "TRUSTP2P_BUILD_")
"""Prefixes of ``TRUSTP2P_*`` variables that are not node options."""

FLAGS_ONLY = {"log_level": "--log-level", "log_format": "--log-format", "loop": "--loop"}
"""Settings of the command, not of the node: their flags read ``TRUSTP2P_<NAME>``
(click's ``envvar``), and this module passes those variables over; a file can't hold
them, as logging starts before it is read (tester39 F10: each stopped the start with
"unknown option" and a wrong hint)."""

_NOT_CONFIGURABLE = frozenset({"cwd", "server", "client", "threads", "identity"})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class Source(enum.Enum):
    """Where an option's value came from."""

    DEFAULT = "default"
    FILE = "file"
    ENV = "env"
    FLAG = "flag"


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One option's effective value, and where it came from (``origin``: the file's
    path or the variable's name, for messages)."""

    name: str
    value: Any
    source: Source
    origin: str = ""


def configurable() -> dict[str, str]:
    """The configurable options: name -> the kind of value (``int``, ``float``,
    ``bool``, ``str`` or ``list``), with ``?`` appended when it may be unset."""
    kinds: dict[str, str] = {}
    for field in dataclasses.fields(NodeOptions):
        if field.name in _NOT_CONFIGURABLE:
            continue
        hint = str(field.type)
        optional = hint.endswith("| None")
        base = hint.split("|")[0].strip()
        kind = "list" if base.startswith("tuple[str") else base
        kind = "str" if kind.startswith("Literal") else kind
        if kind in _EXPECTED:  # (a tester: store_shelf, no text, crashed the loader)
            kinds[field.name] = kind + ("?" if optional else "")
    return kinds


def load_settings(
    cwd: Path | None,
    env: Mapping[str, str],
    flags: Mapping[str, Any],
    flag_names: Mapping[str, str] | None = None,
) -> dict[str, Setting]:
    """
    Every configurable option's effective value and its source.

    Args:
        cwd: The node's directory, holding :data:`CONFIG_FILE` (optional).
        env: The environment (``os.environ``).
        flags: Options given on the command line, by field name.
        flag_names: The flag each option was given with, where it isn't ``--`` and the
            name with dashes (``peers``: ``--connect``).

    Raises:
        ConfigError: For an unreadable file, an unknown key (naming the closest valid
            one) or a value of the wrong kind (naming the option and the kind).

    """
    kinds = configurable()
    defaults = NodeOptions(server=True)
    settings = {name: Setting(name, getattr(defaults, name), Source.DEFAULT) for name in kinds}
    if cwd is not None and (cwd / CONFIG_FILE).is_file():
        path = cwd / CONFIG_FILE
        for key, raw in _read_file(path).items():
            flag = FLAGS_ONLY.get(key.replace("-", "_"))
            if flag is not None:
                raise ConfigError(
                    f"key {key!r} in {path}: {key} is a command-line setting only: pass "
                    f"{flag}, or set TRUSTP2P_{flag[2:].replace('-', '_').upper()}"
                )
            name = _known(key.replace("-", "_"), kinds, f"key {key!r} in {path}")
            value = _from_file(raw, kinds[name], f"{name} in {path}")
            settings[name] = Setting(name, value, Source.FILE, str(path))
    for variable, text in env.items():
        if not variable.startswith(ENV_PREFIX) or variable.startswith(NOT_OPTIONS):
            continue
        key = variable.removeprefix(ENV_PREFIX).lower()
        if key in FLAGS_ONLY:  # (the command's flag reads it)
            continue
        name = _known(key, kinds, f"environment variable {variable}", prefix=ENV_PREFIX)
        value = _from_env(text, kinds[name], variable)
        settings[name] = Setting(name, value, Source.ENV, variable)
    for name, value in flags.items():
        if name in kinds:
            flag = (flag_names or {}).get(name, "--" + name.replace("_", "-"))
            settings[name] = Setting(name, value, Source.FLAG, flag)
    return settings


def with_origins(message: str, settings: Mapping[str, Setting]) -> str:
    """
    An option's error message followed by where each option it names was set, for an
    operator who set it in a file or a unit's environment long ago:
    ``port must be an integer in 0..65535, not 99999 (set by TRUSTP2P_PORT)``.

    An option is named by its name as a word; a name of one word (``port``, ``name``)
    only where the message starts with it. Options at their defaults add nothing.
    """
    origins: dict[str, str] = {}  # name -> "set by X" / "set in FILE"
    for name, setting in settings.items():
        if setting.source is Source.DEFAULT:
            continue
        if "_" in name:
            named = re.search(rf"\b{name}\b", message) is not None
        else:
            named = re.match(rf"{name}[ :]", message) is not None
        if named:
            where = "in" if setting.source is Source.FILE else "by"
            origins[name] = f"set {where} {setting.origin}"
    if not origins:
        return message
    if len(origins) == 1:
        [origin] = origins.values()
        return f"{message} ({origin})"
    each = "; ".join(f"{name} {origin}" for name, origin in origins.items())
    return f"{message} ({each})"


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"can't read {path}: {exc}") from None


def _known(key: str, kinds: Mapping[str, str], where: str, prefix: str = "") -> str:
    if key in kinds:
        return key
    if key.lower() in ("server", "client"):  # (a tester: "did you mean secure?")
        raise ConfigError(
            f"unknown option: {where}; the command decides the role (trustp2p server,"
            " client or node)"
        )
    close = difflib.get_close_matches(key, list(kinds), n=1, cutoff=0.6)
    hint = f"; did you mean {prefix}{close[0].upper() if prefix else close[0]}?" if close else ""
    raise ConfigError(f"unknown option: {where}{hint}")


def _from_file(raw: Any, kind: str, where: str) -> Any:
    base, optional = kind.rstrip("?"), kind.endswith("?")
    if optional and raw == "none":
        return None
    if base == "list" and isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return tuple(raw)
    if base == "float" and type(raw) in (int, float):
        return float(raw)
    if base in ("int", "bool", "str") and type(raw).__name__ == base:
        return raw
    raise ConfigError(f"{where} must be {_EXPECTED[base]}, not {raw!r}")


_EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "str": "a string",
    "list": "a list of strings",
}
"""What a value of each kind must be, for error messages."""


def _from_env(text: str, kind: str, variable: str) -> Any:
    base, optional = kind.rstrip("?"), kind.endswith("?")
    value = text.strip()
    if optional and value.lower() == "none":
        return None
    try:
        if base == "int":
            return int(value)
        if base == "float":
            return float(value)
    except ValueError:
        raise ConfigError(f"{variable} must be {_EXPECTED[base]}, not {text!r}") from None
    if base == "bool":
        if value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{variable} must be true or false, not {text!r}")
    if base == "list":
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return text
