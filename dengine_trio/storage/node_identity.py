"""The identity of a data directory: ``<db_root_dir>/node_uuid``.

A node id names a place in the cluster's membership; the uuid names the DISK behind it. It is
a random uuid4 (32 lowercase hex digits and a newline), written when a directory is opened
without one (a new node, a wiped or replaced directory, one seeded by ``snapshot restore``),
before anything else is stored there, so every vote and log entry a directory ever holds was
written under its uuid. A membership binds each member to the uuid of the directory that
acknowledged entries and cast votes as that member (issue 14, ``raft/membership.py``); a node
whose directory's uuid is not the one it is bound to has forgotten its votes and does not vote
until configuration changes have taken it back (as a learner bound to its new uuid, then
promoted once caught up: docs/durability.md, "A voter's data directory"). Ongaro's thesis
(section 4.1) assumes a server never forgets; this is how the cluster notices one that did.

The file is written once: to ``node_uuid.tmp``, fsynced, renamed, directory fsynced. A crash
leaves no file (the next open makes a new uuid: nothing was stored under the lost one) or the
whole file. A damaged file stops the node (``CorruptNodeUuidError``, one line naming it): the
disk under it is suspect. Deleting the file is safe: the node then gets a new uuid and the
cluster treats it as one that lost its directory (it is taken back before it votes again).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from ._fs import fsync_directory, write_all
from .errors import StorageError

__all__ = [
    "NODE_UUID_FILE",
    "CorruptNodeUuidError",
    "load_node_uuid",
    "load_or_create_node_uuid",
    "new_node_uuid",
]

NODE_UUID_FILE = "node_uuid"
"""Name of the file in ``db_root_dir``."""
_VALID = re.compile(r"[0-9a-f]{32}")
_MAX_BYTES = 64
"""A larger file is not a node_uuid file (the format writes 33 bytes)."""


class CorruptNodeUuidError(StorageError):
    """``<db_root_dir>/node_uuid`` exists but does not hold a uuid (the message names the file
    and what it holds). Delete it to give the directory a new identity; see the module
    docstring for what that costs."""


def load_node_uuid(directory: str | Path) -> str | None:
    """The uuid of ``directory`` (a ``db_root_dir``): 32 lowercase hex digits, or None when
    it has none. Raises :class:`CorruptNodeUuidError`, ``OSError`` from the disk."""
    path = Path(directory) / NODE_UUID_FILE
    try:
        with open(path, "rb") as file:
            raw = file.read(_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    text = raw[:_MAX_BYTES].decode("ascii", "replace").strip()
    if len(raw) > _MAX_BYTES or not _VALID.fullmatch(text):
        shown = text[:40] + ("..." if len(text) > 40 else "")
        raise CorruptNodeUuidError(
            f"{path}: {shown!r} is not a node uuid (32 hex digits); the file is damaged "
            "(deleting it gives this data directory a new identity: the cluster then "
            "takes the node back as a learner before it votes again)"
        )
    return text


def load_or_create_node_uuid(directory: str | Path) -> tuple[str, bool]:
    """The uuid of ``directory``, created durably first if it has none; returns (uuid,
    created). The caller holds the directory's lock (``Storage.open`` does), so two processes
    never create two. Raises :class:`CorruptNodeUuidError`, ``OSError``."""
    existing = load_node_uuid(directory)
    if existing is not None:
        return existing, False
    return new_node_uuid(directory), True


def new_node_uuid(directory: str | Path) -> str:
    """Give ``directory`` a new identity, durably, replacing any it had; return it. For a
    directory whose contents now come from elsewhere (``snapshot restore`` seeding it): it
    must not keep the binding of whatever it held before. The caller holds the directory's
    lock. Raises ``OSError``."""
    directory = Path(directory)
    fresh = uuid.uuid4().hex
    temporary = directory / (NODE_UUID_FILE + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, (fresh + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / NODE_UUID_FILE)
    fsync_directory(directory)
    return fresh
