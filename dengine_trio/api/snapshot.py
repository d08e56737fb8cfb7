"""``GET /snapshot`` on the health port: a fresh, consistent snapshot file for backups.

``dengine-trio snapshot save`` (:mod:`dengine_trio.ctl.snapshot`) fetches it; the operator
procedure is in ``docs/operations.md``. The route first waits, as a read would, until the
node's state machine holds every write acknowledged before the request (``?consistency=``
``linearizable``, the default, or ``lease``; ``eventual`` skips the wait: whatever this node
has applied, which also works on a node cut off from the majority), then asks the node for a
new snapshot as of its applied index and streams that file as it is on disk: the snapshot file
format of :mod:`dengine_trio.storage.snapshots` (magic, version, header with index, term,
cluster id and membership, payload, CRC32 trailer), so the client can verify what it received.

Answers: 200 ``application/octet-stream`` with ``Content-Length`` and the snapshot's last
index and term in :data:`INDEX_HEADER` and :data:`TERM_HEADER`, the node's cluster id in
:data:`CLUSTER_HEADER`; 400 ``invalid_consistency``;
503 ``no_leader``/``stopped``/``overloaded``, 504 ``timeout`` (the read barrier, as for a
read); 501 ``snapshots_unsupported`` for a custom state machine without ``snapshot()``;
500 ``snapshot_failed`` when the node cannot write or open the snapshot (the reason
in the message). Needs an ``admin`` token with ``[auth] enable = true`` (as every health path
but the probes). The file is read in :data:`READ_CHUNK_BYTES` pieces in a worker thread, so
one download holds at most one piece in memory and never blocks the node's loop on the disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING

import trio
from quart import Quart, Response, request

from dengine_trio.api import ApiError, json_error
from dengine_trio.policy import ReadPolicy

if TYPE_CHECKING:
    from dengine_trio.engine import EmbeddedEngine

__all__ = [
    "CLUSTER_HEADER",
    "INDEX_HEADER",
    "READ_CHUNK_BYTES",
    "SNAPSHOT_PATH",
    "TERM_HEADER",
    "install_snapshot_route",
]

SNAPSHOT_PATH = "/snapshot"
INDEX_HEADER = "X-Dengine-Snapshot-Index"
"""Response header: the last log index the snapshot covers (decimal)."""
TERM_HEADER = "X-Dengine-Snapshot-Term"
"""Response header: the term of that entry (decimal)."""
CLUSTER_HEADER = "X-Dengine-Cluster-Id"
"""Response header: the serving node's cluster id, which the file's header must carry too
(``dengine-trio snapshot save`` refuses a file of another cluster)."""
READ_CHUNK_BYTES = 1 << 20
"""Bytes read from the file per step of the download (1 MiB)."""
OPEN_ATTEMPTS = 3
"""Snapshots taken (at most) when the file vanishes between being written and opened: the
node keeps two snapshots and deletes older ones, so only two newer snapshots in that instant
(a very low ``max_log_entries_before_snapshot`` under load) can make it vanish."""

_POLICIES: dict[str, ReadPolicy] = {
    "linearizable": ReadPolicy.LINEARIZABLE,
    "lease": ReadPolicy.LEASE,
    "eventual": ReadPolicy.EVENTUAL,
}

log = logging.getLogger("dengine_trio.api")


def install_snapshot_route(app: Quart, engine: EmbeddedEngine) -> None:
    """Add ``GET /snapshot`` (module docstring) to ``app``, serving ``engine``'s snapshots."""
    cluster_id = engine.config.cluster_id()

    @app.get(SNAPSHOT_PATH)
    async def snapshot() -> Response:
        requested = request.args.get("consistency", "linearizable")
        policy = _POLICIES.get(requested)
        if policy is None:
            raise ApiError(
                400, "invalid_consistency", f"consistency must be one of {', '.join(_POLICIES)}"
            )
        if not callable(getattr(engine.state_machine, "snapshot", None)):
            return json_error(
                501,
                "snapshots_unsupported",
                f"the state machine {type(engine.state_machine).__name__} has no snapshot()",
            )
        await engine.read_barrier(policy)
        for _ in range(OPEN_ATTEMPTS):
            try:
                taken = await engine.take_snapshot()
                # Opened at once: the open file stays readable even if the node deletes it.
                file = await trio.to_thread.run_sync(open, taken.path, "rb")
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("GET /snapshot: cannot write or open a snapshot: %s", exc)
                return json_error(500, "snapshot_failed", f"cannot take a snapshot: {exc}")
            break
        else:
            return json_error(
                500,
                "snapshot_failed",
                f"the new snapshot was deleted before it could be read, {OPEN_ATTEMPTS} times",
            )
        size = os.fstat(file.fileno()).st_size
        headers = {
            "Content-Length": str(size),
            INDEX_HEADER: str(taken.last_index),
            TERM_HEADER: str(taken.last_term),
            # The file's own: a restored cluster's id (db_root_dir/cluster_id) is not the
            # configuration's.
            CLUSTER_HEADER: taken.header.cluster_id if taken.header else cluster_id,
            "Content-Disposition": f'attachment; filename="{taken.path.name}"',
            "Cache-Control": "no-store",
        }
        return Response(
            _stream(file, size), content_type="application/octet-stream", headers=headers
        )


async def _stream(file: IO[bytes], size: int) -> AsyncIterator[bytes]:
    """``size`` bytes of ``file`` in pieces, read in a worker thread; closes ``file``.

    Stops at ``size`` even if the file were to grow: Content-Length was promised. A file
    that is shorter than promised (impossible for a renamed, fsynced snapshot) ends the body
    early, and the client sees a truncated download, which it refuses."""
    try:
        left = size
        while left > 0:
            piece = await trio.to_thread.run_sync(file.read, min(READ_CHUNK_BYTES, left))
            if not piece:
                return
            left -= len(piece)
            yield piece
    finally:
        file.close()
