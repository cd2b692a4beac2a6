"""
The build: pure Python, or with the hot modules compiled by mypyc (``setup.py``,
``TRUSTP2P_COMPILE=1``; ``make test-compiled`` runs the whole suite on that build).
These checks hold in both.
"""

from __future__ import annotations

import abc
import importlib
import inspect
import sys
from importlib.machinery import EXTENSION_SUFFIXES

import pytest
from click.testing import CliRunner

import trustp2p
from trustp2p import PackageType, Socket
from trustp2p.cli import cli
from trustp2p.protocol.package import build_package, decode, encode
from trustp2p.security.channel import SecureSocket
from trustp2p.testing import Network


def _is_extension(name: str) -> bool:
    path = getattr(importlib.import_module(name), "__file__", None) or ""
    return any(path.endswith(suffix) for suffix in EXTENSION_SUFFIXES)


def test_compiled_modules_are_the_ones_imported_from_extensions() -> None:
    compiled = trustp2p.compiled_modules()
    assert all(_is_extension(name) for name in compiled)
    loaded = [name for name in list(sys.modules) if name.startswith("trustp2p.")]
    assert {name for name in loaded if _is_extension(name)} <= set(compiled)
    expected = f"compiled ({len(compiled)} modules)" if compiled else "pure Python"
    assert trustp2p.build_name() == expected


def test_version_names_the_build() -> None:
    result = CliRunner().invoke(cli, ["--version"], prog_name="trustp2p")
    assert result.exit_code == 0
    assert result.output == f"trustp2p {trustp2p.__version__}, {trustp2p.build_name()}\n"


@pytest.mark.parametrize("name", ["trustp2p.protocol.package", "trustp2p.node.connections"])
def test_abstract_classes_in_compiled_modules_keep_their_own_caches(name: str) -> None:
    # mypyc builds a class without ABCMeta.__new__: one deriving from an abstract class
    # would share its base's isinstance caches (security/secure_socket.py stays pure for it).
    module = importlib.import_module(name)
    for _, cls in inspect.getmembers(module, inspect.isclass):
        if isinstance(cls, abc.ABCMeta) and cls.__module__ == name:
            assert "_abc_impl" in vars(cls), cls


async def test_a_plain_socket_is_a_socket_after_a_check_against_secure_ones() -> None:
    # The node checks each inbound socket against SecureSocket; with SecureSocket
    # compiled, that made every plain socket fail isinstance(socket, Socket) afterwards.
    async with Network(2, degree=1, seed=1, topics=[]) as network:
        await network.wait_connected()
        for node in network.nodes:
            for socket in node.sockets:
                assert not isinstance(socket, SecureSocket)
                assert isinstance(socket, Socket)


def test_package_types_stay_enum_members_through_encode_and_decode() -> None:
    for package_type in PackageType:
        answer = package_type in (PackageType.HEARTBEAT_PONG, PackageType.RESPONSE)
        tag = {"tag": "t"} if answer else {}
        package = decode(encode(build_package(package_type, "e", {}, **tag)))
        assert package.type is package_type
