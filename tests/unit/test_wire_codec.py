"""The codec round-trips every message and turns any bad input into CodecError, nothing else."""

from __future__ import annotations

import typing
from enum import IntEnum
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine_trio.raft.membership import Member, Membership, encode_membership
from dengine_trio.raft.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    Entry,
    EntryKind,
    Heartbeat,
    InstallSnapshot,
    RequestVote,
)
from dengine_trio.wire import (
    PEER_MESSAGE_TYPES,
    TAGS,
    Channel,
    CodecError,
    ForwardStatus,
    Hello,
    SnapshotChunk,
    decode,
    encode,
)
from dengine_trio.wire.messages import HANDSHAKE_TYPES, SNAPSHOT_TYPES, HelloReply

# Every type a node may put on the wire: what the message links carry (the Raft messages and
# the runtime's own), the handshake, what snapshot connections carry, and InstallSnapshot
# (encodable, though never sent on a link). A message type added to any and not to ``TAGS``
# fails ``test_every_message_type_has_a_unique_tag``.
ALL_TYPES = (*PEER_MESSAGE_TYPES, *HANDSHAKE_TYPES, *SNAPSHOT_TYPES, InstallSnapshot)
MSGPACK_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SETTINGS = settings(max_examples=40, deadline=None)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    if tp is bool:
        return st.booleans()
    if tp is int:
        return MSGPACK_INTS
    if tp is bytes:
        return st.binary(max_size=64)
    if tp is str:
        return st.text(max_size=16)
    if isinstance(tp, type) and issubclass(tp, IntEnum):
        return st.sampled_from(list(tp))
    if typing.get_origin(tp) is tuple:
        (item, _ellipsis) = typing.get_args(tp)
        return st.lists(strategy_for(item), max_size=6).map(tuple)
    if attrs.has(tp):
        return messages_of(tp)
    raise AssertionError(f"no strategy for {tp!r}")


# A membership as the wire carries it (CONFIG entries, InstallSnapshot.membership): anything
# else there is refused (tests/unit/test_wire_membership.py).
memberships = st.builds(
    lambda cluster_id, rows: encode_membership(
        Membership(cluster_id, tuple(Member(i, *row) for i, row in sorted(rows.items())))
    ),
    st.text(max_size=12),
    st.dictionaries(
        st.integers(1, 2**63 - 1),
        st.tuples(st.text(max_size=12), st.booleans(), st.text(max_size=32), st.booleans()),
        max_size=5,
    ),
)
entries = st.one_of(
    st.builds(Entry, MSGPACK_INTS, MSGPACK_INTS, st.binary(max_size=64),
              st.sampled_from([EntryKind.COMMAND, EntryKind.NOOP])),
    st.builds(Entry, MSGPACK_INTS, MSGPACK_INTS, memberships, st.just(EntryKind.CONFIG)),
)  # fmt: skip
OVERRIDES: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (AppendEntries, "entries"): st.lists(entries, max_size=6).map(tuple),
    (InstallSnapshot, "membership"): st.just(b"") | memberships,
}


def messages_of(cls: type) -> st.SearchStrategy[Any]:
    """Instances of an attrs message class, every field drawn from its declared type."""
    hints = typing.get_type_hints(cls)
    return st.builds(
        cls,
        **{
            f.name: OVERRIDES[cls, f.name]
            if (cls, f.name) in OVERRIDES
            else strategy_for(hints[f.name])
            for f in attrs.fields(cls)
        },
    )


any_message = st.one_of([messages_of(cls) for cls in ALL_TYPES])


def test_every_message_type_has_a_unique_tag() -> None:
    assert set(TAGS) == set(ALL_TYPES)
    assert len(set(TAGS.values())) == len(TAGS)


def test_encoding_is_stable() -> None:
    """The bytes on the wire are a protocol: a change here breaks mixed-version clusters."""
    assert encode(Heartbeat(term=1, src=2, dst=3, commit=4, seq=5, commit_term=6)) == (
        bytes.fromhex("920596010203040506")
    )
    ae = AppendEntries(
        term=2,
        src=1,
        dst=3,
        prev_log_index=7,
        prev_log_term=1,
        entries=(Entry(2, 8, b"x", EntryKind.COMMAND), Entry(2, 9, b"", EntryKind.NOOP)),
        leader_commit=6,
    )
    # [3, [2, 1, 3, 7, 1, [[2, 8, b"x", 0], [2, 9, b"", 1]], 6]]
    assert encode(ae) == bytes.fromhex("920397020103070192940208c4017800940209c4000106")


@pytest.mark.parametrize("cls", ALL_TYPES, ids=lambda c: c.__name__)
@SETTINGS
@given(data=st.data())
def test_round_trip(cls: Any, data: st.DataObject) -> None:
    names = [f.name for f in attrs.fields(cls)]
    msg = data.draw(messages_of(cls))
    decoded = decode(encode(msg))
    assert decoded == msg
    assert type(decoded) is cls
    for name in names:
        # Enums come back as enum members, not bare ints.
        assert type(getattr(decoded, name)) is type(getattr(msg, name))


def test_append_entries_with_many_entries_round_trips() -> None:
    entries = tuple(
        Entry(3, 100 + i, bytes([i % 256]) * 256, EntryKind.COMMAND) for i in range(256)
    )
    msg = AppendEntries(3, 1, 2, 99, 3, entries, 99)
    decoded = decode(encode(msg))
    assert decoded == msg
    assert isinstance(decoded, AppendEntries)
    assert all(type(e.kind) is EntryKind for e in decoded.entries)


@SETTINGS
@given(st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_raises_only_codec_error(data: bytes) -> None:
    try:
        msg = decode(data)
    except CodecError:
        return
    assert type(msg) in ALL_TYPES


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | MSGPACK_INTS
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=8) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@SETTINGS
@given(st.sampled_from(sorted(TAGS.values())) | MSGPACK_INTS, msgpack_values)
def test_decode_of_well_formed_msgpack_with_wrong_shape_raises_only_codec_error(
    tag: int, payload: Any
) -> None:
    try:
        msg = decode(msgpack.packb([tag, payload]))
    except CodecError:
        return
    assert type(msg) in ALL_TYPES


@SETTINGS
@given(any_message, st.data())
def test_corrupted_encodings_raise_only_codec_error(msg: Any, data: st.DataObject) -> None:
    encoded = bytearray(encode(msg))
    position = data.draw(st.integers(0, len(encoded) - 1))
    if data.draw(st.booleans()):
        encoded[position] = data.draw(st.integers(0, 255))
    else:
        del encoded[position:]
    try:
        decoded = decode(bytes(encoded))
    except CodecError:
        return
    assert type(decoded) in ALL_TYPES


@pytest.mark.parametrize(
    "payload",
    [
        [33, [1, ""]],  # int where a bool is declared
        [33, [True]],  # too few fields
        [33, [True, "", 1, 2, b"", 3]],  # too many fields
        [33, [False, "r", 1, "2", b""]],  # str where HelloReply.removed_index is an int
        [33, [False, "r", 1, 2, "m"]],  # str where HelloReply.membership is bytes
        [33, {"ok": True, "reason": ""}],  # a map instead of a list
        [5, [1, 2, 3, 4, True]],  # bool where an int is declared
        [5, [1, 2, 3, 4, 5.0]],  # float where an int is declared
        [34, [1, 2, 3, "text", 1]],  # str where bytes are declared
        [32, [b"cluster", 1, 2, 1, 1]],  # bytes where a str is declared
        [35, [1, 2, 3, 99, 0, b"", 1]],  # unknown ForwardStatus
        [32, ["c", 1, 2, 4, 1, 7]],  # unknown Channel
        [32, ["c", 1, 2, 4, 1, True]],  # bool as Channel
        [32, ["c", 1, 2]],  # Hello without its version
        [32, ["c", 1, 2, 4, 1, 1, 0]],  # int where Hello.uuid is a str
        [32, ["c", 1, 2, 4, 1, 1, "u", 1]],  # int where Hello.joining is a bool
        [32, ["c", 1, 2, 4, 1, 1, "u", False, 0]],  # int where Hello.address is a str
        [32, ["c", 1, 2, 4, 1, 1, "u", False, "a", 0]],  # Hello with a field too many
        [39, [1, 2, 0, "data"]],  # SnapshotChunk with str data
        [39, [1, 2, 0]],  # SnapshotChunk without data
        [37, [1, 2, 3, 4, 5, 6]],  # SnapshotOffer without its checksum
        [40, [1, 2, 1, ""]],  # int where SnapshotReceived.ok is a bool
        [10, [1, 2, 3, 4]],  # InstallSnapshot without last_term
        [10, [1, 2, 3, 4, 5]],  # InstallSnapshot without membership
        [3, [1, 2, 3, 4, 5, [[1, 2, b"", 7]], 6]],  # unknown EntryKind
        [3, [1, 2, 3, 4, 5, [[1, 2, b""]], 6]],  # short entry
        [3, [1, 2, 3, 4, 5, [[1, 2, b"", True]], 6]],  # bool as EntryKind
        [3, [1, 2, 3, 4, 5, "entries", 6]],
        [99, [1]],  # unknown tag
        ["5", [1, 2, 3, 4, 5]],  # tag of the wrong type
        [5],  # no payload
    ],
)
def test_wrong_shapes_and_types_are_refused(payload: Any) -> None:
    with pytest.raises(CodecError):
        decode(msgpack.packb(payload))


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(CodecError):
        decode(encode(Heartbeat(1, 2, 3, 4, 5)) + b"\x00")


def test_invalid_utf8_is_refused() -> None:
    data = bytearray(encode(Hello("ab", 1, 2, 1)))
    data[data.index(b"ab")] = 0xFF
    with pytest.raises(CodecError):
        decode(bytes(data))


def test_encode_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(CodecError):
        encode(RequestVote(2**64, 1, 2, 0, 0))
    with pytest.raises(CodecError):
        encode(object())


def test_forward_status_names_match_client_errors() -> None:
    assert [s.name for s in ForwardStatus] == [
        "OK",
        "NOT_LEADER",
        "NO_LEADER",
        "TIMEOUT",
        "TOO_LARGE",
        "OVERLOADED",
        "STOPPED",
        "CONF_REJECTED",
    ]


def test_snapshot_messages_encoding_is_stable() -> None:
    """The snapshot connection's frames and InstallSnapshot, as they go on the wire."""
    # [10, [7, 1, 2, 100, 6, b""]]
    assert encode(InstallSnapshot(7, 1, 2, 100, 6)) == bytes.fromhex("920a960701026406c400")
    # [39, [1, 2, 3, b"ab"]]
    assert encode(SnapshotChunk(1, 2, 3, b"ab")) == bytes.fromhex("922794010203c4026162")
    # [32, ["c", 1, 2, 4, 5, 1, "u", True, "a"]]
    hello = Hello("c", 1, 2, 4, 5, Channel.SNAPSHOT, "u", True, "a")
    assert encode(hello) == bytes.fromhex("922099a1630102040501a175c3a161")


def test_older_hello_decodes_so_its_version_can_be_named() -> None:
    """A version-4 Hello (no uuid, no joining), a version-3 one (no channel) or a version-2 one
    (no incarnation) still decodes: the listener refuses it naming the version, rather than as
    undecodable."""
    assert decode(msgpack.packb([32, ["c", 1, 2, 4, 9, 1]])) == Hello("c", 1, 2, 4, 9, Channel(1))
    assert decode(msgpack.packb([32, ["c", 1, 2, 3, 9]])) == Hello("c", 1, 2, 3, 9)
    assert decode(msgpack.packb([32, ["c", 1, 2, 2]])) == Hello("c", 1, 2, 2)
    assert Hello("c", 1, 2, 3).channel is Channel.MESSAGES


def test_a_hello_reply_without_its_removal_fields_decodes() -> None:
    """``HelloReply.removed_index`` and ``membership`` (a refusal that tells a removed member)
    are trailing and optional: a reply without them decodes with their defaults."""
    assert decode(msgpack.packb([33, [False, "no", 7]])) == HelloReply(False, "no", 7)
    reply = HelloReply(False, "removed?", 7, 12, b"m")
    assert decode(encode(reply)) == reply


def test_install_snapshot_and_snapshot_frames_are_not_link_messages() -> None:
    """The message link refuses them: the core may only see InstallSnapshot for a file the
    runtime received whole and verified, and chunks belong on a snapshot connection."""
    assert InstallSnapshot not in PEER_MESSAGE_TYPES
    assert not set(SNAPSHOT_TYPES) & set(PEER_MESSAGE_TYPES)
    assert all(t in PEER_MESSAGE_TYPES for t in MESSAGE_TYPES if t is not InstallSnapshot)


def test_a_large_chunk_round_trips_as_bytes() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    decoded = decode(encode(SnapshotChunk(1, 2, 1 << 40, data)))
    assert decoded == SnapshotChunk(1, 2, 1 << 40, data)
    assert type(decoded.data) is bytes
