"""A data directory from before issue 14 keeps starting after its node learns a cluster id.

Such a directory has no ``cluster_id`` file, and its snapshot files carry the cluster id the
configuration used to be hashed into (``NodeConfig.cluster_id()``). Its first start on this
version accepts them (no persisted id yet); the cluster's first leader then makes the
membership explicit with a bootstrap id, which every node persists. If that id is not the
one in the old snapshot headers, the next restart refuses the node's only snapshot as another
cluster's, and with the log compacted behind it the node cannot start at all
(``UnrecoverableStorageError``) until its next snapshot, which it may never reach. The
snapshot check therefore counts a format-1 file's configuration id as the cluster whose id
was generated from it (``storage/snapshots.py``, ``_same_cluster``).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import msgpack
import trio

from dengine_trio import EmbeddedEngine
from dengine_trio.config import NodeConfig
from dengine_trio.statemachine import KVStateMachine, encode_put
from dengine_trio.storage import HardState, save_hard_state
from dengine_trio.storage.cluster_identity import load_cluster_id
from dengine_trio.storage.snapshots import SnapshotHeader, write_snapshot

from .cluster import wait_until, write_configs

WAIT_S = 30


def as_version_1(path: Path) -> None:
    """Rewrite a snapshot file as the previous release wrote it: format version 1, a header
    without the membership ("config"), every CRC recomputed."""
    raw = path.read_bytes()
    (length,) = struct.unpack_from("<I", raw, 8)
    fields = msgpack.unpackb(raw[12 : 12 + length])
    del fields["config"]
    header = msgpack.packb(fields)
    payload = raw[12 + length + 4 : -16]
    start = struct.pack("<4sII", b"DTSN", 1, len(header)) + header
    data = start + struct.pack("<I", zlib.crc32(start)) + payload
    data += struct.pack("<4sQ", b"DTSE", len(payload))
    path.write_bytes(data + struct.pack("<I", zlib.crc32(data)))


def old_directory(cfg: NodeConfig, index: int = 50, term: int = 1) -> None:
    """What a node of the previous release leaves after a snapshot through ``index`` that
    compacted its whole log: the snapshot (format 1, the configuration's hash id), its hard
    state, no log, no cluster_id file."""
    sm = KVStateMachine()
    for i in range(10):
        sm.apply(0, encode_put(b"k%d" % i, b"v%d" % i))
    address = cfg.cluster.initial_cluster[0].address
    header = SnapshotHeader(index, term, cfg.cluster_id(), {1: address})
    as_version_1(write_snapshot(cfg.snapshots_path(), header, sm.snapshot()).path)
    db = cfg.db_root_path()
    db.mkdir(parents=True, exist_ok=True)
    save_hard_state(db, HardState(term=term, voted_for=1))


async def test_an_upgraded_node_restarts_after_learning_its_cluster_id(tmp_path: Path) -> None:
    (cfg,) = write_configs(tmp_path, 1)
    old_directory(cfg)
    db = cfg.db_root_path()
    with trio.fail_after(WAIT_S):
        async with EmbeddedEngine.start(cfg) as engine:
            await engine.wait_ready(10)
            # The first leader's configuration entry carries the id; applied, it is persisted.
            await wait_until(lambda: load_cluster_id(db))
            assert await engine.client().get(b"k3") == b"v3"
        async with EmbeddedEngine.start(cfg) as engine:
            await engine.wait_ready(10)
            assert await engine.client().get(b"k3") == b"v3"
