"""The replicated state machine: what committed commands do.

``StateMachine`` is the extension point (the mission's "custom state machine"): the engine feeds
every committed command, in log order, to ``apply`` and hands its result back to the proposer.
``KVStateMachine`` is the default, a dictionary of bytes to bytes.

Snapshots (issue 13; the engine does not take or restore them yet)
-----------------------------------------------------------------
``snapshot`` runs on the trio loop between two ``apply`` calls and must be quick: it captures a
point-in-time image and returns a function that serializes it later, in a worker thread, while
``apply`` goes on. ``restore`` replaces the whole state from a serialized image.

``KVStateMachine`` captures with ``dict.copy()`` (a shallow copy: keys and values are immutable
bytes, shared with the live dict) and serializes in batches. With 1,000,000 15-byte keys and
256-byte values the copy takes ~33 ms on the loop and 40 MiB; serializing the 263 MiB image
and fsyncing it takes 0.7-2 s in the thread (``python bench/snapshot_cost.py``; 2 cores shared
with other work). ``docs/architecture.md`` "Snapshots of the state machine" has the figures and
why a forked child or an incremental copy-on-write overlay were not chosen (yet).

KV image format (the payload of a snapshot file, ``dengine_trio.storage.snapshots``)::

    b"DTKV" | u32 version (1, little-endian) | msgpack objects:
        zero or more batches, each an array [key, value, key, value, ...] (bin, bin, ...)
        then one int: the total number of keys, which ends the image
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Protocol

import msgpack

OP_PUT = 0
OP_DELETE = 1


class SnapshotSink(Protocol):
    """Where an image is written: any binary stream (a snapshot file writer, ``io.BytesIO``)."""

    def write(self, data: bytes, /) -> object: ...


class SnapshotSource(Protocol):
    """Where an image is read from: ``read(n)`` returns at most ``n`` bytes, ``b""`` at the end.

    A verifying source (``storage.snapshots.SnapshotReader``) raises instead of returning
    ``b""`` when the image is damaged, so a reader that reads to the end never trusts a
    damaged image.
    """

    def read(self, size: int = -1, /) -> bytes: ...


SnapshotImage = Callable[[SnapshotSink], None]
"""Writes a captured image to the sink; called once, in a worker thread."""


class SnapshotImageError(ValueError):
    """An image ``restore`` cannot decode (another state machine's, or a newer format)."""


class StateMachine(Protocol):
    def apply(self, index: int, command: bytes) -> bytes:
        """Apply one committed command; deterministic, no I/O that can fail differently on
        different nodes. The returned bytes go back to whoever proposed the command."""
        ...

    def reset(self) -> None:
        """Forget everything: the engine replays the log from the start after a restart."""
        ...

    def snapshot(self) -> SnapshotImage:
        """Capture the state as of the last applied command; return what writes it.

        Called on the event loop between two ``apply`` calls: keep it short (a copy of
        references, not serialization). The returned function runs later in a worker thread
        while ``apply`` continues, so it must not read state that ``apply`` changes; it writes
        the image to its sink in chunks (memory bounded by a chunk, not by the image).
        """
        ...

    def restore(self, source: SnapshotSource) -> None:
        """Replace the whole state by an image that ``snapshot`` wrote (possibly on another node).

        Read ``source`` in chunks until it returns ``b""``, and change the live state only
        after that: a damaged image makes ``source.read`` raise before the end, and the state
        must then be left as it was (the exception propagates). May run in a worker thread;
        no ``apply`` runs meanwhile. Raises ``SnapshotImageError`` for an image it cannot
        decode.
        """
        ...


def encode_put(key: bytes, value: bytes) -> bytes:
    return msgpack.packb((OP_PUT, key, value))


def encode_delete(key: bytes) -> bytes:
    return msgpack.packb((OP_DELETE, key))


class KVStateMachine:
    """Keys and values are bytes. A command that does not decode is a no-op on every node
    alike (it was committed, so all replicas must agree on ignoring it)."""

    __slots__ = ("data",)

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def apply(self, index: int, command: bytes) -> bytes:
        try:
            op = msgpack.unpackb(command)
            if op[0] == OP_PUT:
                self.data[op[1]] = op[2]
            elif op[0] == OP_DELETE:
                self.data.pop(op[1], None)
        except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException):
            return b"\x00"
        return b""

    def reset(self) -> None:
        self.data = {}

    def snapshot(self) -> SnapshotImage:
        """A shallow ``dict.copy()`` on the loop; serialization in ``write_kv_image``."""
        image = self.data.copy()
        return lambda sink: write_kv_image(image, sink)

    def restore(self, source: SnapshotSource) -> None:
        self.data = read_kv_image(source)

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


KV_IMAGE_MAGIC = b"DTKV"
KV_IMAGE_VERSION = 1
_KV_PREFIX = struct.Struct("<4sI")
KV_BATCH_BYTES = 256 * 1024
"""A batch is closed once its keys and values reach this many bytes (or KV_BATCH_KEYS keys):
small enough that packing one holds the GIL briefly, large enough to amortize msgpack calls."""
KV_BATCH_KEYS = 4096
_KV_READ_BYTES = 256 * 1024


def write_kv_image(data: dict[bytes, bytes], sink: SnapshotSink) -> None:
    """Serialize ``data`` (not changed by anyone meanwhile) to ``sink`` in batches."""
    sink.write(_KV_PREFIX.pack(KV_IMAGE_MAGIC, KV_IMAGE_VERSION))
    packer = msgpack.Packer()
    batch: list[bytes] = []
    batch_bytes = 0
    for key, value in data.items():
        batch.append(key)
        batch.append(value)
        batch_bytes += len(key) + len(value)
        if batch_bytes >= KV_BATCH_BYTES or len(batch) >= 2 * KV_BATCH_KEYS:
            sink.write(packer.pack(batch))
            batch = []
            batch_bytes = 0
    if batch:
        sink.write(packer.pack(batch))
    sink.write(packer.pack(len(data)))


def read_kv_image(source: SnapshotSource) -> dict[bytes, bytes]:
    """Decode an image ``write_kv_image`` wrote; read ``source`` to its end (``b""``).

    Raises ``SnapshotImageError`` when it is not a KV image of a known version or is
    malformed; whatever ``source.read`` raises propagates.
    """
    prefix = b""
    while len(prefix) < _KV_PREFIX.size:
        more = source.read(_KV_PREFIX.size - len(prefix))
        if not more:
            raise SnapshotImageError(f"image ends after {len(prefix)} bytes")
        prefix += more
    magic, version = _KV_PREFIX.unpack(prefix)
    if magic != KV_IMAGE_MAGIC:
        raise SnapshotImageError(f"not a key-value image (magic {magic!r})")
    if version != KV_IMAGE_VERSION:
        raise SnapshotImageError(f"key-value image version {version}, expected {KV_IMAGE_VERSION}")
    unpacker = msgpack.Unpacker(source, read_size=_KV_READ_BYTES)
    data: dict[bytes, bytes] = {}
    count: int | None = None
    try:
        for item in unpacker:
            if count is not None:
                raise SnapshotImageError("data after the end of the image")
            if isinstance(item, int) and not isinstance(item, bool):
                count = item
                continue
            if not isinstance(item, list) or len(item) % 2:
                raise SnapshotImageError("a batch is not a list of key, value pairs")
            for position in range(0, len(item), 2):
                key, value = item[position], item[position + 1]
                if not (isinstance(key, bytes) and isinstance(value, bytes)):
                    raise SnapshotImageError("a key or value is not bytes")
                data[key] = value
    except (ValueError, msgpack.UnpackException) as exc:
        if isinstance(exc, SnapshotImageError):
            raise
        raise SnapshotImageError(f"malformed key-value image: {exc}") from None
    if count is None:
        raise SnapshotImageError("the image ends before its key count")
    if count != len(data):
        raise SnapshotImageError(f"the image holds {len(data)} keys, its end says {count}")
    return data
