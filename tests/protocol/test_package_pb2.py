"""The committed package_pb2.py matches package.proto and the wire format's table."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from trustp2p.protocol import package_pb2
from trustp2p.protocol.package import PackageType

SRC = Path(package_pb2.__file__).resolve().parents[2]
PROTO = "trustp2p/protocol/package.proto"

Field = descriptor_pb2.FieldDescriptorProto


def _committed() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    proto.ParseFromString(package_pb2.DESCRIPTOR.serialized_pb)
    return proto


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorProto:
    """package.proto compiled now, with protoc from grpcio-tools."""
    out = tmp_path_factory.mktemp("protoc") / "package.pb"
    status = protoc.main(["protoc", f"-I{SRC}", f"--descriptor_set_out={out}", str(SRC / PROTO)])
    assert status == 0
    descriptors = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(descriptors.file) == 1
    (proto,) = descriptors.file
    # The generated Python module leaves out json_name; so must the comparison.
    for message in proto.message_type:
        for field in message.field:
            field.ClearField("json_name")
    return proto


def test_committed_module_matches_proto(compiled: descriptor_pb2.FileDescriptorProto) -> None:
    assert _committed() == compiled


def test_file_name_and_package(compiled: descriptor_pb2.FileDescriptorProto) -> None:
    assert compiled.name == PROTO
    assert compiled.package == "trust_note_p2p_package"
    assert not compiled.HasField("syntax")  # proto2 leaves it unset
    assert [message.name for message in compiled.message_type] == ["TrustNoteP2p"]


def test_fields_match_wire_format_table() -> None:
    (message,) = _committed().message_type
    rows = [
        (field.name, field.number, field.type, field.label, field.default_value)
        for field in message.field
    ]
    assert rows == [
        ("version", 1, Field.TYPE_STRING, Field.LABEL_OPTIONAL, "1.0"),
        ("alt", 2, Field.TYPE_STRING, Field.LABEL_OPTIONAL, "1"),
        ("type", 3, Field.TYPE_ENUM, Field.LABEL_OPTIONAL, "SYSTEM"),
        ("event", 4, Field.TYPE_STRING, Field.LABEL_REQUIRED, ""),
        ("body", 5, Field.TYPE_STRING, Field.LABEL_REQUIRED, ""),
        ("tag", 6, Field.TYPE_STRING, Field.LABEL_REQUIRED, ""),
        ("payload", 7, Field.TYPE_BYTES, Field.LABEL_OPTIONAL, ""),  # trustp2p's addition
    ]
    assert message.field[2].type_name == ".trust_note_p2p_package.TrustNoteP2p.PackageType"
    assert not any(field.HasField("default_value") for field in message.field[3:])


def test_enum_matches_wire_format_table() -> None:
    (message,) = _committed().message_type
    (enum,) = message.enum_type
    assert enum.name == "PackageType"
    values = [(value.name, value.number) for value in enum.value]
    assert values == [
        ("SYSTEM", 0),
        ("HEARTBEAT_PING", 10),
        ("HEARTBEAT_PONG", 11),
        ("TALK", 20),
        ("REQUEST", 30),
        ("RESPONSE", 31),
        ("GOSSIP", 40),  # trustp2p's addition, docs/protocol.md
    ]
    assert values == [(member.name, member.value) for member in PackageType]


def test_runtime_defaults() -> None:
    message = package_pb2.TrustNoteP2p()
    assert (message.version, message.alt, message.type) == ("1.0", "1", PackageType.SYSTEM)
    assert (message.event, message.body, message.tag) == ("", "", "")
    assert not message.IsInitialized()
    assert message.FindInitializationErrors() == ["event", "body", "tag"]
