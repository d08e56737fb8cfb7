"""The replicated state machine: what committed commands do.

``StateMachine`` is the extension point (the mission's "custom state machine"): the engine feeds
every committed command, in log order, to ``apply`` and hands its result back to the proposer.
``KVStateMachine`` is the default, a dictionary of bytes to bytes.

Snapshots (issue 13; when the node takes and restores them: ``runtime/snapshotting.py``)
---------------------------------------------------------------------------------------
``snapshot`` runs on the trio loop between two ``apply`` calls and must be quick: it captures a
point-in-time image and returns a function that serializes it later, in a worker thread, while
``apply`` goes on. ``restore`` replaces the whole state from a serialized image: at start, from
the node's newest snapshot, and on a follower that receives its leader's.

``KVStateMachine`` captures copy-on-write, in O(1): ``snapshot()`` freezes the live dict as the
image and puts an overlay (``_CaptureView``) in front of it; ``apply`` writes to the overlay
while a worker thread serializes the frozen dict in batches; once the image is written, each
``apply`` moves ``MERGE_PER_APPLY`` (16) overlay entries back, so there is never one long merge.
Measured with ``python bench/snapshot_cost.py`` (1,000,000 15-byte keys, 256-byte values, a
task applying overwrites flat out meanwhile; 2 cores shared with other work): ``snapshot()``
0.02 ms on the loop (a ``dict.copy()`` takes 33-100 ms); the 263 MiB image written and fsynced
in 0.8-4 s; 1 ms loop sleeps late by p99 6-12 ms during it; an apply 0.7-1 us with or without
a capture, 16 us median while the overlay drains. ``docs/architecture.md`` "Snapshots of the
state machine" has the figures and why not a plain copy or a forked child.

KV image format (the payload of a snapshot file, ``dengine_trio.storage.snapshots``)::

    b"DTKV" | u32 version (1, little-endian) | msgpack objects:
        zero or more batches, each an array [key, value, key, value, ...] (bin, bin, ...)
        then one int: the total number of keys, which ends the image
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterator, MutableMapping
from typing import Protocol

import msgpack

OP_PUT = 0
OP_DELETE = 1


class SnapshotSink(Protocol):
    """Where an image is written: any binary stream (a snapshot file writer, ``io.BytesIO``)."""

    def write(self, data: bytes, /) -> object:
        """Write all of ``data``; the return value is ignored. May raise ``OSError``."""
        ...


class SnapshotSource(Protocol):
    """Where an image is read from: ``read(n)`` returns at most ``n`` bytes, ``b""`` at the end.

    A verifying source (``storage.snapshots.SnapshotReader``) raises instead of returning
    ``b""`` when the image is damaged, so a reader that reads to the end never trusts a
    damaged image.
    """

    def read(self, size: int = -1, /) -> bytes:
        """At most ``size`` bytes (``-1``: all that is left); ``b""`` only at the end."""
        ...


SnapshotImage = Callable[[SnapshotSink], None]
"""Writes a captured image to the sink; called once, in a worker thread."""


class SnapshotImageError(ValueError):
    """An image ``restore`` cannot decode (another state machine's, or a newer format)."""


class StateMachine(Protocol):
    """What the engine needs of a replicated state machine (Raft paper section 2: every
    server applies the same commands in the same order and so reaches the same state).
    ``KVStateMachine`` is the default; see the module docstring for snapshots."""

    def apply(self, index: int, command: bytes) -> bytes:
        """Apply one committed command; deterministic, no I/O that can fail differently on
        different nodes. The returned bytes go back to whoever proposed the command."""
        ...

    def reset(self) -> None:
        """Forget everything: called at start, before the state is restored from the newest
        snapshot (if any) and the log after it is replayed."""
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
    """The ``KVStateMachine`` command that sets ``key`` to ``value``: msgpack
    ``[OP_PUT, key, value]``. Size limits are the caller's (``Client``)."""
    return msgpack.packb((OP_PUT, key, value))


def encode_delete(key: bytes) -> bytes:
    """The ``KVStateMachine`` command that removes ``key`` (absent: no-op): msgpack
    ``[OP_DELETE, key]``."""
    return msgpack.packb((OP_DELETE, key))


class KVStateMachine:
    """Keys and values are bytes. A command that does not decode, or whose key or value is
    not bytes, is a no-op on every node alike (it was committed, so all replicas must agree
    on ignoring it) and returns ``b"\\x00"``.

    ``data`` is the live state, a mapping of bytes to bytes: a ``dict``, or while a snapshot
    image is being written a ``_CaptureView`` of the frozen dict plus the changes made since.
    Read it with ``get``, ``in``, ``[]``, iteration; only ``apply``, ``reset`` and ``restore``
    change it.
    """

    __slots__ = ("_capture", "data")

    def __init__(self) -> None:
        self.data: MutableMapping[bytes, bytes] = {}
        self._capture: _KVImage | None = None

    def apply(self, index: int, command: bytes) -> bytes:
        """Apply an ``encode_put``/``encode_delete`` command; ``index`` is unused. Returns
        ``b""``, or ``b"\\x00"`` for a command that is ignored (see the class); never
        raises for a command's content."""
        if self._capture is not None and self._capture.finished:
            self._settle(MERGE_PER_APPLY)
        try:
            op = msgpack.unpackb(command)
            if op[0] == OP_PUT:
                key, value = op[1], op[2]
                if not (isinstance(key, bytes) and isinstance(value, bytes)):
                    return b"\x00"
                self.data[key] = value
            elif op[0] == OP_DELETE:
                if not isinstance(op[1], bytes):
                    return b"\x00"
                self.data.pop(op[1], None)
        except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException):
            return b"\x00"
        return b""

    def reset(self) -> None:
        """Empty the state (before the log is replayed); an image not yet started is
        abandoned, one being written keeps its own frozen copy."""
        self._abandon()
        self.data = {}

    def snapshot(self) -> SnapshotImage:
        """O(1) on the loop: the live dict is frozen as the image, and changes made until the
        image is written go to an overlay (``_CaptureView``), merged back afterwards.

        Raises ``RuntimeError`` if the previous image is being written right now; one that was
        never started is abandoned (calling it later raises ``RuntimeError``).
        """
        if self._capture is not None:
            if not (self._capture.finished or self._capture.abandon()):
                raise RuntimeError("the previous snapshot image is still being written")
            self._settle()
        assert isinstance(self.data, dict)
        image = _KVImage(self.data)
        self.data = _CaptureView(self.data)
        self._capture = image
        return image

    def restore(self, source: SnapshotSource) -> None:
        """Replace the state by the image in ``source`` (``read_kv_image``), read fully
        first: on ``SnapshotImageError`` or an error of ``source.read`` the state is
        unchanged."""
        data = read_kv_image(source)
        self._abandon()
        self.data = data

    def get(self, key: bytes) -> bytes | None:
        """The value of ``key`` as of the last applied command; None if absent. Not a
        linearizable read by itself: the caller's read barrier makes it one."""
        return self.data.get(key)

    def _settle(self, limit: int | None = None) -> None:
        """Move up to ``limit`` (None: all) changes of the overlay into the frozen dict, once
        its image is written (or abandoned); when none are left, the dict is live again.

        ``apply`` moves ``MERGE_PER_APPLY`` at a time, so the overlay drains that many times
        faster than writes arrive, without one long merge on the loop.
        """
        view = self.data
        assert isinstance(view, _CaptureView)
        view.draining = True
        if view.merge(limit):
            self.data = view.base
            self._capture = None

    def _abandon(self) -> None:
        """Drop the capture without merging: the state is about to be replaced. An image being
        written keeps its frozen dict, which nothing changes any more."""
        if self._capture is not None:
            self._capture.abandon()
            self._capture = None


_DELETED = object()
MERGE_PER_APPLY = 16
"""Overlay entries ``KVStateMachine.apply`` moves back into the dict after a snapshot image was
written: ~1.75 us each (1,000,000 keys), so at most ~30 us added to an apply."""


class _CaptureView(MutableMapping[bytes, bytes]):
    """The live state while a snapshot image is written: ``base`` (frozen: the image reads it
    in a worker thread) plus ``changes``, each key written since mapped to its value or to
    ``_DELETED``."""

    __slots__ = ("base", "changes", "draining")

    def __init__(self, base: dict[bytes, bytes]) -> None:
        self.base = base
        self.changes: dict[bytes, object] = {}
        # Set once the image is written: writes then go to ``base`` (dropping the key's
        # change), so ``changes`` only shrinks and never grows (no table rebuild on the loop).
        self.draining = False

    def __getitem__(self, key: bytes) -> bytes:
        value = self.changes.get(key, self)
        if value is self:
            return self.base[key]
        if value is _DELETED:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:  # type: ignore[override]
        value = self.changes.get(key, self)
        if value is self:
            return self.base.get(key, default)
        if value is _DELETED:
            return default
        return value  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        value = self.changes.get(key, self)  # type: ignore[call-overload]
        if value is self:
            return key in self.base
        return value is not _DELETED

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if self.draining:
            self.base[key] = value
            self.changes.pop(key, None)
        else:
            self.changes[key] = value

    def __delitem__(self, key: bytes) -> None:
        if key not in self:
            raise KeyError(key)
        if self.draining:
            self.base.pop(key, None)
            self.changes.pop(key, None)
        else:
            self.changes[key] = _DELETED

    def __iter__(self) -> Iterator[bytes]:
        for key in self.base:
            if key not in self.changes:
                yield key
        for key, value in self.changes.items():
            if value is not _DELETED:
                yield key

    def __len__(self) -> int:
        size = len(self.base)
        for key, value in self.changes.items():
            if key in self.base:
                size -= value is _DELETED
            else:
                size += value is not _DELETED
        return size

    def merge(self, limit: int | None) -> bool:
        """Move up to ``limit`` (None: all) changes into ``base`` (only once the image is
        written and ``draining`` is set); True when none are left. Every read in between
        stays correct: a key is in ``changes`` until its value is in ``base``."""
        base, changes = self.base, self.changes
        for _ in range(len(changes) if limit is None else min(limit, len(changes))):
            key, value = changes.popitem()
            if value is _DELETED:
                base.pop(key, None)
            else:
                base[key] = value  # type: ignore[assignment]
        return not changes


class _KVImage:
    """The image ``KVStateMachine.snapshot`` returns: call it once, with a sink, in a worker
    thread. States: pending, then running (its call) and finished; or abandoned before it ran."""

    __slots__ = ("_data", "_lock", "_state")

    def __init__(self, data: dict[bytes, bytes]) -> None:
        self._data = data
        self._lock = threading.Lock()
        self._state = "pending"

    @property
    def finished(self) -> bool:
        return self._state in ("finished", "abandoned")

    def abandon(self) -> bool:
        """Give the image up unless it is being written; True if it is not running."""
        with self._lock:
            if self._state == "pending":
                self._state = "abandoned"
            return self._state != "running"

    def __call__(self, sink: SnapshotSink) -> None:
        with self._lock:
            if self._state != "pending":
                raise RuntimeError(f"this snapshot image was already {self._state}")
            self._state = "running"
        try:
            write_kv_image(self._data, sink)
        finally:
            self._state = "finished"


KV_IMAGE_MAGIC = b"DTKV"
KV_IMAGE_VERSION = 1
_KV_PREFIX = struct.Struct("<4sI")
KV_BATCH_BYTES = 256 * 1024
"""A batch is closed once its keys and values reach this many bytes (or KV_BATCH_KEYS keys):
small enough that packing one holds the GIL briefly, large enough to amortize msgpack calls."""
KV_BATCH_KEYS = 4096
_KV_READ_BYTES = 256 * 1024


def write_kv_image(data: dict[bytes, bytes], sink: SnapshotSink) -> None:
    """Serialize ``data`` (not changed by anyone meanwhile) to ``sink`` in batches of
    ``KV_BATCH_BYTES`` (256 KiB) or ``KV_BATCH_KEYS`` keys; raises what ``sink.write`` raises."""
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
