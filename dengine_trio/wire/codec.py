"""Encoding of every message between nodes as a msgpack envelope ``[type_tag, payload]``.

The payload of a message is the list of its attrs fields in declaration order, so a message
costs no field names on the wire. A membership a message carries (a CONFIG entry's ``data``,
``InstallSnapshot.membership``) must decode (``raft.membership.decode_membership``), or the
message is refused like any other malformed one: a peer's garbage closes its connection and
never enters the log (issue 14). Tags are fixed below and must never be reused: a node reading
a tag it does not know refuses the message instead of guessing.

One cattrs converter holds every (un)structure hook. The hooks check types exactly (an ``int``
field accepts neither ``True`` nor ``1.0``, a ``bytes`` field not a ``str``): the bytes come from
the network, and a lenient conversion such as ``bytes(5)`` would turn garbage into a message.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import attrs
import msgpack
from cattrs.preconf.msgpack import MsgpackConverter, make_converter

from dengine_trio.raft.membership import decode_membership
from dengine_trio.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from dengine_trio.wire.errors import CodecError
from dengine_trio.wire.messages import (
    Channel,
    ForwardAccepted,
    ForwardPropose,
    ForwardResult,
    ForwardStatus,
    Hello,
    HelloReply,
    JoinRequest,
    SnapshotChunk,
    SnapshotOffer,
    SnapshotReceived,
    SnapshotResume,
)

TAGS: dict[type, int] = {
    RequestVote: 1,
    RequestVoteResponse: 2,
    AppendEntries: 3,
    AppendEntriesResponse: 4,
    Heartbeat: 5,
    HeartbeatResponse: 6,
    TimeoutNow: 7,
    ReadIndex: 8,
    ReadIndexResponse: 9,
    InstallSnapshot: 10,
    Hello: 32,
    HelloReply: 33,
    ForwardPropose: 34,
    ForwardResult: 35,
    ForwardAccepted: 36,
    SnapshotOffer: 37,
    SnapshotResume: 38,
    SnapshotChunk: 39,
    SnapshotReceived: 40,
    JoinRequest: 41,
}
"""Wire tag of each message type. Stable across versions: add new tags, never renumber."""

_TYPES_BY_TAG: dict[int, type] = {tag: cls for cls, tag in TAGS.items()}
_PRIMITIVES = (int, bool, bytes, str)
_INT_ENUMS = (EntryKind, ForwardStatus, Channel)
_ENTRY_FIELDS = operator.attrgetter("term", "index", "data", "kind")


def _strict(expected: type) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        if type(value) is not expected:
            raise CodecError(f"expected {expected.__name__}, got {type(value).__name__}")
        return value

    return structure


def _strict_int_enum(cl: type[IntEnum]) -> Callable[[Any, Any], Any]:
    members = {int(m): m for m in cl}

    def structure(value: Any, _: Any) -> Any:
        if type(value) is not int or value not in members:
            raise CodecError(f"not a {cl.__name__}: {value!r}")
        return members[value]

    return structure


def _field_types(cl: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cl)
    return [(f.name, hints[f.name]) for f in attrs.fields(cl)]


def _as_list_hooks(
    converter: MsgpackConverter, cl: type, *, optional_tail: bool = False, min_fields: int = 0
) -> tuple[Callable[[Any], Any], Callable[[Any, Any], Any]]:
    """(Un)structure hooks for a message whose fields are primitives or int enums.

    The payload has every field. With ``optional_tail`` a payload may also stop before the
    trailing fields that have defaults (``Hello``: an older version's ``Hello`` decodes, so
    the listener can refuse it naming its protocol version instead of "undecodable");
    ``min_fields`` (with ``optional_tail``) keeps the first that many fields mandatory
    (``HelloReply``: only its fields added since version 5 may be missing)."""
    fields = _field_types(cl)
    for name, tp in fields:
        if tp not in _PRIMITIVES and tp not in _INT_ENUMS:
            raise TypeError(f"{cl.__name__}.{name}: {tp!r} needs a hand-written hook")
    n = len(fields)
    required = n
    if optional_tail:
        required = min_fields or sum(1 for f in attrs.fields(cl) if f.default is attrs.NOTHING)
    field_hooks = [(converter.get_structure_hook(tp), tp) for _, tp in fields]
    # attrgetter builds the payload in C; msgpack packs the tuple as an array and the int enums
    # as plain ints.
    unstructure = operator.attrgetter(*(name for name, _ in fields))

    def structure(obj: Any, _: Any) -> Any:
        if type(obj) is not list or not required <= len(obj) <= n:
            raise CodecError(f"{cl.__name__}: expected a list of {n} fields")
        return cl(*[hook(value, tp) for (hook, tp), value in zip(field_hooks, obj, strict=False)])

    return unstructure, structure


def _structure_entries(obj: Any, _: Any) -> tuple[Entry, ...]:
    """The hot path of replication: one loop, no per-entry dispatch."""
    if type(obj) is not list:
        raise CodecError("entries: expected a list")
    entries = []
    kinds = _ENTRY_KINDS
    for item in obj:
        if type(item) is not list or len(item) != 4:
            raise CodecError("entry: expected [term, index, data, kind]")
        term, index, data, kind = item
        if type(term) is not int or type(index) is not int or type(data) is not bytes:
            raise CodecError("entry: bad field type")
        if type(kind) is not int or kind not in kinds:
            raise CodecError(f"entry: unknown kind {kind!r}")
        if kind == _CONFIG:
            _check_membership(data, "CONFIG entry")
        entries.append(_new_entry(term, index, data, kinds[kind]))
    return tuple(entries)


_CONFIG = int(EntryKind.CONFIG)


def _check_membership(data: bytes, what: str) -> None:
    try:
        decode_membership(data)
    except ValueError as exc:
        raise CodecError(f"{what}: undecodable membership ({exc})") from None


_ENTRY_KINDS = {int(k): k for k in EntryKind}


def _entry_builder() -> Callable[[int, int, bytes, EntryKind], Entry]:
    """A faster ``Entry(...)`` for decoding, while ``Entry`` is a plain frozen slots class.

    attrs' frozen ``__init__`` goes through ``object.__setattr__`` once per field, which is a
    quarter of the decode time of a large AppendEntries; writing the slots directly is not. Any
    change to ``Entry`` that could make this differ (fields, validators, converters, a
    post-init hook) falls back to the constructor.
    """
    fields = attrs.fields(Entry)
    plain = (
        tuple(f.name for f in fields) == ("term", "index", "data", "kind")
        and all(f.validator is None and f.converter is None and f.init for f in fields)
        and not hasattr(Entry, "__attrs_post_init__")
        and not hasattr(Entry, "__attrs_pre_init__")
        and "__dict__" not in dir(Entry)
    )
    if not plain:
        return Entry
    new = object.__new__
    set_term, set_index, set_data, set_kind = (Entry.__dict__[f.name].__set__ for f in fields)

    def build(term: int, index: int, data: bytes, kind: EntryKind) -> Entry:
        entry = new(Entry)
        set_term(entry, term)
        set_index(entry, index)
        set_data(entry, data)
        set_kind(entry, kind)
        return entry

    return build


_new_entry = _entry_builder()


def _unstructure_entry(entry: Entry) -> Any:
    return _ENTRY_FIELDS(entry)


def _structure_entry(obj: Any, _: Any) -> Entry:
    return _structure_entries([obj], None)[0]


def _unstructure_append_entries(m: AppendEntries) -> Any:
    return (
        m.term,
        m.src,
        m.dst,
        m.prev_log_index,
        m.prev_log_term,
        list(map(_ENTRY_FIELDS, m.entries)),
        m.leader_commit,
    )


def _structure_append_entries(obj: Any, _: Any) -> AppendEntries:
    if type(obj) is not list or len(obj) != 7:
        raise CodecError("AppendEntries: expected a list of 7 fields")
    term, src, dst, prev_log_index, prev_log_term, entries, leader_commit = obj
    for value in (term, src, dst, prev_log_index, prev_log_term, leader_commit):
        if type(value) is not int:
            raise CodecError("AppendEntries: bad field type")
    return AppendEntries(
        term,
        src,
        dst,
        prev_log_index,
        prev_log_term,
        _structure_entries(entries, None),
        leader_commit,
    )


def _install_snapshot_hook(
    structure: Callable[[Any, Any], Any],
) -> Callable[[Any, Any], InstallSnapshot]:
    def structure_install_snapshot(obj: Any, tp: Any) -> InstallSnapshot:
        msg: InstallSnapshot = structure(obj, tp)
        if msg.membership:  # b"": the sender's membership is implicit
            _check_membership(msg.membership, "InstallSnapshot")
        return msg

    return structure_install_snapshot


def make_wire_converter() -> MsgpackConverter:
    """The converter behind ``encode``/``decode``: list-shaped payloads, exact type checks."""
    converter = make_converter()
    # Registered by class, hence through singledispatch, which also matches subclasses: every
    # int subclass in use (bool, the IntEnums) gets its own, more specific, hook.
    for tp in _PRIMITIVES:
        converter.register_structure_hook(tp, _strict(tp))
    for enum_type in _INT_ENUMS:
        converter.register_structure_hook(enum_type, _strict_int_enum(enum_type))
    converter.register_unstructure_hook(Entry, _unstructure_entry)
    converter.register_structure_hook(Entry, _structure_entry)
    converter.register_unstructure_hook(AppendEntries, _unstructure_append_entries)
    converter.register_structure_hook(AppendEntries, _structure_append_entries)
    for cl in TAGS:
        if cl is AppendEntries:
            continue
        unstructure, structure = _as_list_hooks(
            converter,
            cl,
            optional_tail=cl in (Hello, HelloReply),
            min_fields=3 if cl is HelloReply else 0,  # ok, reason, incarnation
        )
        if cl is InstallSnapshot:
            structure = _install_snapshot_hook(structure)
        converter.register_unstructure_hook(cl, unstructure)
        converter.register_structure_hook(cl, structure)
    return converter


converter = make_wire_converter()

_packb = msgpack.packb
_unpackb = msgpack.unpackb
_unstructure = converter.unstructure
_structure = converter.structure


def encode(msg: object) -> bytes:
    """Encode one message; raises ``CodecError`` for an unknown type or an unencodable field
    (e.g. an int beyond msgpack's 64-bit range)."""
    tag = TAGS.get(type(msg))
    if tag is None:
        raise CodecError(f"no wire tag for {type(msg).__name__}")
    try:
        return _packb((tag, _unstructure(msg)))
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode {type(msg).__name__}: {exc}") from exc


def decode(data: bytes | bytearray | memoryview) -> object:
    """Decode exactly one message from ``data``.

    Raises ``CodecError`` and nothing else for any input that is not one well-formed message:
    malformed msgpack, trailing bytes, unknown tag, wrong shape or field types.
    """
    try:
        obj = _unpackb(data, raw=False, use_list=True, strict_map_key=True)
        if type(obj) is not list or len(obj) != 2:
            raise CodecError("expected an envelope [tag, payload]")
        tag, payload = obj
        cl = _TYPES_BY_TAG.get(tag) if type(tag) is int else None
        if cl is None:
            raise CodecError(f"unknown message tag {tag!r}")
        return _structure(payload, cl)
    except CodecError:
        raise
    except Exception as exc:
        # msgpack and cattrs raise a wide family of errors (ExtraData, FormatError, StackError,
        # UnicodeDecodeError, ClassValidationError, ...); to callers they all mean "bad bytes".
        raise CodecError(f"undecodable message: {type(exc).__name__}: {exc}") from exc
