"""The cluster id a data directory belongs to, persisted in ``<db_root_dir>/cluster_id``.

Issue 14: a cluster's id is generated once, by the node that bootstraps it, and carried to the
others in the membership (``raft/membership.py``); each node persists it when it first learns
it (:func:`persist_cluster_id`, origin ``"bootstrap"`` on the node that made it, ``"learned"``
elsewhere). From then on the id never changes for that directory: an attempt to persist
another one is refused (:class:`ClusterIdMismatchError`), because a directory holding one
cluster's log must never take part in another's. Without the file a node has no cluster id
yet (a new node, a wiped directory). ``dengine-trio snapshot restore`` writes the file: a
restored cluster's id is the configuration's id plus a suffix derived from the backup file
(:func:`restored_cluster_id`), so nodes restored from DIFFERENT backups refuse each other at
the peer handshake (their histories diverge after the backups' indexes) while nodes restored
from the same file form one cluster. The node uses the persisted id, when present, for the
handshake (``Hello.cluster_id``), the snapshot headers it writes and the snapshots it accepts
(``Storage.open(cluster_id=...)``).

Format (a small JSON object, one line): ``{"format": 1, "cluster_id": str, "origin": str,
"detail": {...}}``; ``origin`` says where the id came from (``"restore"``, with the backup's
original cluster id, index, term and CRC32 in ``detail``; ``"bootstrap"`` and ``"learned"``
as above); readers accept any ``origin`` and ignore unknown keys. The file is replaced
atomically (written to ``cluster_id.tmp``, fsynced, renamed, directory fsynced): a crash
leaves the old or the new file, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ._fs import fsync_directory, write_all
from .errors import StorageError

__all__ = [
    "CLUSTER_ID_FILE",
    "ClusterIdMismatchError",
    "CorruptClusterIdError",
    "load_cluster_id",
    "persist_cluster_id",
    "restored_cluster_id",
    "save_cluster_id",
]

CLUSTER_ID_FILE = "cluster_id"
"""Name of the file in ``db_root_dir``."""
_FORMAT = 1
_MAX_BYTES = 64 * 1024
"""A cluster_id file larger than this is not one (the format writes a few hundred bytes)."""


class CorruptClusterIdError(StorageError):
    """``<db_root_dir>/cluster_id`` exists but cannot be read as a cluster id (the message
    names the file and the problem). The node refuses to start rather than guess an identity
    (a wrong one would either isolate it or, worse, let it join a cluster it is not part of)."""


class ClusterIdMismatchError(StorageError):
    """A cluster id other than the one this directory already belongs to (``str()`` is one
    line naming the file and both ids). The node must not take part in that cluster with
    this directory."""

    def __init__(self, path: Path, persisted: str, offered: str) -> None:
        super().__init__(
            f"{path}: this data directory belongs to cluster {persisted!r}, not "
            f"{offered!r}: refusing to take part in another cluster with it"
        )
        self.path = path
        self.persisted = persisted
        self.offered = offered


def load_cluster_id(directory: str | Path) -> str | None:
    """The cluster id persisted in ``directory`` (a ``db_root_dir``), or None without a file.

    Raises :class:`CorruptClusterIdError` (empty, oversized, not JSON, unknown format, no
    string id), ``OSError`` from the disk."""
    path = Path(directory) / CLUSTER_ID_FILE
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > _MAX_BYTES:
        raise CorruptClusterIdError(f"{path}: over {_MAX_BYTES} bytes, not a cluster id file")
    try:
        fields = json.loads(raw)
    except ValueError:
        raise CorruptClusterIdError(f"{path}: not JSON, the file is damaged") from None
    if not isinstance(fields, dict):
        raise CorruptClusterIdError(f"{path}: not a JSON object, the file is damaged")
    if fields.get("format") != _FORMAT:
        raise CorruptClusterIdError(f"{path}: unknown format {fields.get('format')!r}")
    cluster_id = fields.get("cluster_id")
    if not isinstance(cluster_id, str) or not cluster_id:
        raise CorruptClusterIdError(f"{path}: no cluster_id string in it")
    return cluster_id


def save_cluster_id(
    directory: str | Path, cluster_id: str, *, origin: str, detail: dict[str, Any] | None = None
) -> None:
    """Durably replace the cluster id persisted in ``directory`` (module docstring: format,
    atomic replacement). ``detail`` must be JSON-serialisable. Raises ``OSError``."""
    if not cluster_id:
        raise ValueError("cluster_id must not be empty")
    directory = Path(directory)
    record = {"format": _FORMAT, "cluster_id": cluster_id, "origin": origin, "detail": detail}
    body = (json.dumps(record, sort_keys=True) + "\n").encode()
    temporary = directory / (CLUSTER_ID_FILE + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / CLUSTER_ID_FILE)
    fsync_directory(directory)


def persist_cluster_id(directory: str | Path, cluster_id: str, *, origin: str) -> bool:
    """Durably record ``cluster_id`` as the cluster of ``directory``, once: returns True when
    it wrote the file, False when the file already held that id (nothing written). Raises
    :class:`ClusterIdMismatchError` when the file holds another id (the file is left as it
    was), ``ValueError`` for an empty id, :class:`CorruptClusterIdError` and ``OSError``
    as :func:`load_cluster_id` and :func:`save_cluster_id` do. ``origin``: ``"bootstrap"``
    (this node generated it) or ``"learned"`` (from the cluster's membership)."""
    if not cluster_id:
        raise ValueError("cluster_id must not be empty")
    persisted = load_cluster_id(directory)
    if persisted == cluster_id:
        return False
    if persisted is not None:
        raise ClusterIdMismatchError(Path(directory) / CLUSTER_ID_FILE, persisted, cluster_id)
    save_cluster_id(directory, cluster_id, origin=origin)
    return True


def restored_cluster_id(configured: str, source: dict[str, Any]) -> str:
    """The id of a cluster restored from a backup: ``<configured>-r<12 hex digits>``.

    ``configured`` is the target configuration's id (``NodeConfig.cluster_id()``), ``source``
    what identifies the backup file (its original cluster id, last index, last term, file
    CRC32); the digits hash ``source``. The same file restored for every node gives one id;
    two different backups (another hour's, another cluster's) give different ids, so their
    nodes refuse each other at the handshake instead of forming a cluster whose members hold
    different committed prefixes."""
    digest = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:12]
    return f"{configured}-r{digest}"
