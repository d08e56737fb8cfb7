"""Raft's hard state: the current term and the vote cast in it, kept in one small file.

The file ``<db_root_dir>/hard_state`` is 28 bytes: the magic ``b"DTHS"``, format version (u32),
term (u64), voted_for (u64), then CRC32 of those 24 bytes (u32), all little-endian. It is
replaced atomically: written to ``hard_state.tmp``, fsynced, renamed over, and the directory
fsynced, so a crash leaves either the old or the new state, never a mix.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import attrs

from ._fs import fsync_directory, write_all
from .errors import CorruptHardStateError

HARD_STATE_FILE = "hard_state"
_MAGIC = b"DTHS"
_VERSION = 1
_BODY = struct.Struct("<4sIQQ")
_CRC = struct.Struct("<I")


@attrs.frozen(slots=True)
class HardState:
    """What a node must remember across restarts to vote at most once per term (§5.2).

    ``voted_for`` is 0 when the node has not voted in ``term``.
    """

    term: int = 0
    voted_for: int = 0


def load_hard_state(directory: str | Path) -> HardState:
    """Read the hard state in ``directory``; a missing file means a fresh node (0, 0).
    Raises ``CorruptHardStateError`` for a file of the wrong size (28 bytes expected), bad
    checksum, magic or version (never reset: a forgotten vote could be cast twice, Raft
    paper section 5.2); ``OSError`` from the disk."""
    path = Path(directory) / HARD_STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return HardState()
    expected_size = _BODY.size + _CRC.size
    if len(raw) != expected_size:
        raise CorruptHardStateError(f"{path}: {len(raw)} bytes, expected {expected_size}")
    body = raw[: _BODY.size]
    (crc,) = _CRC.unpack_from(raw, _BODY.size)
    if zlib.crc32(body) != crc:
        raise CorruptHardStateError(f"{path}: checksum mismatch, the file is damaged")
    magic, version, term, voted_for = _BODY.unpack(body)
    if magic != _MAGIC:
        raise CorruptHardStateError(f"{path}: not a hard state file (magic {magic!r})")
    if version != _VERSION:
        raise CorruptHardStateError(f"{path}: unknown format version {version}")
    return HardState(term=term, voted_for=voted_for)


def save_hard_state(directory: str | Path, hard_state: HardState) -> None:
    """Durably replace the hard state in ``directory`` (two fsyncs: the file, the directory;
    written to a temporary file and renamed, so a crash leaves the old or the new state).
    Raises ``OSError``."""
    directory = Path(directory)
    body = _BODY.pack(_MAGIC, _VERSION, hard_state.term, hard_state.voted_for)
    temporary = directory / (HARD_STATE_FILE + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, body + _CRC.pack(zlib.crc32(body)))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, directory / HARD_STATE_FILE)
    fsync_directory(directory)
