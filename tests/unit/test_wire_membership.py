"""The wire messages of issue 14 (membership changes): their encoding, and every truncated or
garbled frame of each refused with ``CodecError`` and nothing else, so that garbage from a peer
closes that one connection (the runtime closes on ``CodecError``) and never kills the node."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from dengine_trio.raft.membership import Member, Membership, decode_membership, encode_membership
from dengine_trio.raft.messages import AppendEntries, Entry, EntryKind, InstallSnapshot, RequestVote
from dengine_trio.wire import (
    PEER_MESSAGE_TYPES,
    PROTOCOL_VERSION,
    TAGS,
    Channel,
    CodecError,
    ForwardPropose,
    ForwardResult,
    ForwardStatus,
    FrameReader,
    Hello,
    JoinRequest,
    decode,
    encode,
    encode_frame,
)
from dengine_trio.wire.messages import HANDSHAKE_TYPES, SNAPSHOT_TYPES

UUID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

NEW_MESSAGES: list[Any] = [
    Hello("", 4, 1, PROTOCOL_VERSION, 77, Channel.MESSAGES, UUID, True),
    Hello("c-0123456789abcdef", 2, 1, PROTOCOL_VERSION, 2**62, Channel.SNAPSHOT, UUID, False),
    Hello("c-1", 3, 1, PROTOCOL_VERSION, 5, Channel.MESSAGES, UUID, False, "127.0.0.1:9083"),
    JoinRequest(4, 1, 4, "127.0.0.1:9084", UUID, True),
    JoinRequest(5, 2, 5, "[::1]:9085", UUID, False),
    ForwardPropose(2, 1, 9, msgpack.packb({"kind": 1, "id": 4}), 5, True),
    ForwardResult(1, 2, 9, ForwardStatus.CONF_REJECTED, 1, msgpack.packb({"code": "x"}), 5),
]
ALL_TYPES = (*PEER_MESSAGE_TYPES, *HANDSHAKE_TYPES, *SNAPSHOT_TYPES)


def test_protocol_version_5() -> None:
    assert PROTOCOL_VERSION == 5


def test_join_request_is_a_link_message_with_a_stable_encoding() -> None:
    assert JoinRequest in PEER_MESSAGE_TYPES and TAGS[JoinRequest] == 41
    # [41, [4, 1, 4, "h:1", "u", True]]
    assert encode(JoinRequest(4, 1, 4, "h:1", "u", True)) == bytes.fromhex(
        "922996040104a3683a31a175c3"
    )
    # [34, [2, 1, 9, b"d", 5, True]]: conf is the last field of ForwardPropose
    assert encode(ForwardPropose(2, 1, 9, b"d", 5, True)) == bytes.fromhex("922296020109c4016405c3")


@pytest.mark.parametrize("msg", NEW_MESSAGES, ids=lambda m: type(m).__name__)
def test_new_messages_round_trip(msg: Any) -> None:
    decoded = decode(encode(msg))
    assert decoded == msg and type(decoded) is type(msg)


def test_hello_without_a_cluster_id_or_uuid_is_well_formed() -> None:
    # A node with no cluster id yet says "" (the listener decides whether that is enough).
    hello = Hello("", 4, 1, PROTOCOL_VERSION)
    assert decode(encode(hello)) == hello
    assert (hello.uuid, hello.joining) == ("", False)


def _frames(payloads: list[bytes]) -> list[bytes]:
    reader = FrameReader()
    return reader.feed(b"".join(encode_frame(p) for p in payloads))


def _decodes_or_codec_error(payload: bytes) -> None:
    try:
        msg = decode(payload)
    except CodecError:
        return
    assert type(msg) in ALL_TYPES


@pytest.mark.parametrize("msg", NEW_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_truncated_frame_is_refused(msg: Any) -> None:
    encoded = encode(msg)
    for cut in range(len(encoded)):
        # A frame whose length field announces the truncated payload: a whole frame arrives.
        (payload,) = _frames([encoded[:cut]])
        with pytest.raises(CodecError):
            decode(payload)
        # The truncation of the stream itself: the frame never completes, nothing is handed on.
        reader = FrameReader()
        assert reader.feed(encode_frame(encoded)[: 4 + cut]) == []


@pytest.mark.parametrize("msg", NEW_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_garbled_byte_is_refused_or_decodes_to_a_well_typed_message(msg: Any) -> None:
    encoded = encode(msg)
    for position in range(len(encoded)):
        for value in (0x00, 0xFF, 0xC1, encoded[position] ^ 0x01, encoded[position] ^ 0x80):
            garbled = bytearray(encoded)
            garbled[position] = value
            (payload,) = _frames([bytes(garbled)])
            _decodes_or_codec_error(payload)
    # Extra bytes after a whole message, and the message twice in one frame.
    with pytest.raises(CodecError):
        decode(encoded + b"\x00")
    with pytest.raises(CodecError):
        decode(encoded + encoded)


def test_garbage_between_frames_is_refused_and_the_frames_around_it_are_intact() -> None:
    good = encode(NEW_MESSAGES[2])
    frames = _frames([good, b"\x92\x29\x96\x04\x01", good])
    assert decode(frames[0]) == NEW_MESSAGES[2] == decode(frames[2])
    with pytest.raises(CodecError):
        decode(frames[1])


@pytest.mark.parametrize(
    "payload",
    [
        [41, [4, 1, 4, "h:1", "u"]],  # JoinRequest without promote
        [41, [4, 1, 4, "h:1", "u", True, 0]],  # a field too many
        [41, [4, 1, "4", "h:1", "u", True]],  # str where id is an int
        [41, [4, 1, True, "h:1", "u", True]],  # bool where id is an int
        [41, [4, 1, 4, b"h:1", "u", True]],  # bytes where address is a str
        [41, [4, 1, 4, "h:1", b"u", True]],  # bytes where uuid is a str
        [41, [4, 1, 4, "h:1", "u", 1]],  # int where promote is a bool
        [41, [4, 1, 4, "h:1", None, True]],  # nil uuid
        [41, {"src": 4}],  # a map
        [34, [2, 1, 9, b"d", 5, 1]],  # int where ForwardPropose.conf is a bool
        [34, [2, 1, 9, b"d", 5, True, 0]],  # ForwardPropose with a field too many
        [35, [1, 2, 9, 8, 1, b"", 5]],  # ForwardStatus beyond CONF_REJECTED
        [32, ["", 4, 1, 5, 1, 0, UUID, "yes"]],  # str where Hello.joining is a bool
        [32, ["", 4, 1, 5, 1, 0, 7, True]],  # int where Hello.uuid is a str
        [32, [None, 4, 1, 5, 1, 0, UUID, True]],  # nil cluster id ("" is the empty one)
        [32, ["", 4, 1, 5, 1, 0, UUID, True, 9083]],  # int where Hello.address is a str
        [32, ["", 4, 1, 5, 1, 0, UUID, True, b"h:1"]],  # bytes where Hello.address is a str
        [32, ["", 4, 1, 5, 1, 0, UUID, True, "h:1", 0]],  # Hello with a field too many
    ],
)
def test_wrong_shapes_and_types_of_the_new_fields_are_refused(payload: Any) -> None:
    with pytest.raises(CodecError):
        decode(msgpack.packb(payload))


MEMBERSHIP = Membership(
    "c-0123456789abcdef",
    (Member(1, "127.0.0.1:9081", True, UUID), Member(4, "127.0.0.1:9084", False, "", True)),
)
CORE_MESSAGES: list[Any] = [
    AppendEntries(
        3, 1, 2, 7, 2, (Entry(3, 8, encode_membership(MEMBERSHIP), EntryKind.CONFIG),), 7
    ),
    RequestVote(4, 2, 3, 9, 3, False, False, True, UUID),
    RequestVote(4, 2, 3, 9, 3, True, True, False, ""),
    InstallSnapshot(5, 1, 4, 100, 4, encode_membership(MEMBERSHIP)),
    InstallSnapshot(5, 1, 4, 100, 4, b""),
]


def test_the_core_messages_of_issue_14_have_a_stable_encoding() -> None:
    # [1, [4, 2, 3, 9, 3, False, False, True, "u"]]
    assert encode(RequestVote(4, 2, 3, 9, 3, False, False, True, "u")) == bytes.fromhex(
        "9201990402030903c2c2c3a175"
    )
    # [3, [3, 1, 2, 7, 2, [[3, 8, b"m", 2]], 7]]: EntryKind.CONFIG is 2 on the wire
    assert encode(AppendEntries(3, 1, 2, 7, 2, (Entry(3, 8, b"m", EntryKind.CONFIG),), 7)) == (
        bytes.fromhex("920397030102070291940308c4016d0207")
    )


@pytest.mark.parametrize("msg", CORE_MESSAGES, ids=lambda m: type(m).__name__)
def test_the_core_messages_round_trip(msg: Any) -> None:
    decoded = decode(encode(msg))
    assert decoded == msg and type(decoded) is type(msg)


@pytest.mark.parametrize("msg", CORE_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_truncation_and_garbled_byte_of_the_core_messages(msg: Any) -> None:
    encoded = encode(msg)
    for cut in range(len(encoded)):
        with pytest.raises(CodecError):
            decode(encoded[:cut])
    for position in range(len(encoded)):
        for value in (0x00, 0xFF, 0xC1, encoded[position] ^ 0x01):
            garbled = bytearray(encoded)
            garbled[position] = value
            try:
                decoded = decode(bytes(garbled))
            except CodecError:
                continue
            # What still decodes is well typed, and a membership it carries decodes too.
            assert type(decoded) in (*ALL_TYPES, InstallSnapshot)
            for entry in getattr(decoded, "entries", ()):
                if entry.kind is EntryKind.CONFIG:
                    decode_membership(entry.data)
            if isinstance(decoded, InstallSnapshot) and decoded.membership:
                decode_membership(decoded.membership)


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", msgpack.packb([1, "c"]), msgpack.packb([99, "c", []]),
     msgpack.packb([1, "c", [[0, "a", True, "", False]]]),
     msgpack.packb([1, "c", [[2, "a", True, "", False], [1, "b", True, "", False]]]),
     encode_membership(MEMBERSHIP)[:-1]],
)  # fmt: skip
def test_a_config_entry_or_snapshot_membership_that_does_not_decode_is_refused(
    data: bytes,
) -> None:
    """Caught at the wire, so a peer's garbage closes its connection instead of entering the
    log (where the core would ignore it and this node's membership could differ from the
    leader's) or reaching the core."""
    append = AppendEntries(3, 1, 2, 7, 2, (Entry(3, 8, data, EntryKind.CONFIG),), 7)
    with pytest.raises(CodecError, match="membership"):
        decode(encode(append))
    if data:
        with pytest.raises(CodecError, match="membership"):
            decode(encode(InstallSnapshot(5, 1, 4, 100, 4, data)))
    # The same bytes as a command or no-op are the state machine's business, not the wire's.
    command = AppendEntries(3, 1, 2, 7, 2, (Entry(3, 8, data, EntryKind.COMMAND),), 7)
    assert decode(encode(command)) == command
