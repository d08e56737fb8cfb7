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

Bounds: a download keeps its file open (and so on disk, even once the node deleted it as an
old snapshot) until it ends, so at most :data:`MAX_CONCURRENT_DOWNLOADS` run at once per node
(counted from the request's arrival to the body's end); another request gets 503
``overloaded`` with ``Retry-After`` (:data:`RETRY_AFTER_S`), so stalled clients pin at most
that many snapshot files. A download also has a deadline, :data:`SEND_BASE_TIMEOUT_S` + size /
:data:`MIN_SEND_RATE_BYTES_S` (Quart-Trio's ``Response.timeout``): a client reading slower than
that is cut off at its next completed write, its file closed (it sees a short body, which
``snapshot save`` refuses). A client that stops reading altogether is cut off by the send
timeout of the Hypercorn layer (``dengine_trio/api/__init__.py``, ``[http] idle_timeout_ms``):
its connection is reset, which ends the download, closes the file and gives its place back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
    "MAX_CONCURRENT_DOWNLOADS",
    "MIN_SEND_RATE_BYTES_S",
    "READ_CHUNK_BYTES",
    "SEND_BASE_TIMEOUT_S",
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
MAX_CONCURRENT_DOWNLOADS = 2
"""``GET /snapshot`` requests served at once per node (a backup job needs one; two let a
second tool or a retry overlap). Each holds one whole snapshot file on disk until it ends."""
RETRY_AFTER_S = "5"
"""``Retry-After`` (seconds) of the 503 ``overloaded`` beyond that bound."""
SEND_BASE_TIMEOUT_S = 60.0
"""Seconds every download may take, whatever its size (connection, slow start, pauses)."""
MIN_SEND_RATE_BYTES_S = 1 << 20
"""Average rate (bytes/s, 1 MiB/s) a download must keep beyond :data:`SEND_BASE_TIMEOUT_S`:
its deadline is ``SEND_BASE_TIMEOUT_S + size / MIN_SEND_RATE_BYTES_S`` seconds."""
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


@dataclass
class _Downloads:
    """The downloads in progress on one node (trio thread only)."""

    active: int = 0


class _Slot:
    """One download's place among :data:`MAX_CONCURRENT_DOWNLOADS` and its open file;
    :meth:`release` (idempotent) gives both back. Released by the body's end, by the handler
    when it answers without a body, and, as a last resort, when dropped unsent (a client gone
    before the body started: Quart never enters the body then)."""

    def __init__(self, downloads: _Downloads) -> None:
        self._downloads: _Downloads | None = downloads
        self.file: IO[bytes] | None = None
        downloads.active += 1

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        if self._downloads is not None:
            self._downloads.active -= 1
            self._downloads = None

    def __del__(self) -> None:
        self.release()


def install_snapshot_route(app: Quart, engine: EmbeddedEngine) -> None:
    """Add ``GET /snapshot`` (module docstring) to ``app``, serving ``engine``'s snapshots."""
    cluster_id = engine.config.cluster_id()
    downloads = _Downloads()

    @app.get(SNAPSHOT_PATH)
    async def snapshot() -> Response:
        if downloads.active >= MAX_CONCURRENT_DOWNLOADS:
            return json_error(
                503,
                "overloaded",
                f"{downloads.active} snapshot downloads are in progress on this node (at most "
                f"{MAX_CONCURRENT_DOWNLOADS}); retry later",
                {"Retry-After": RETRY_AFTER_S},
            )
        slot = _Slot(downloads)
        try:
            response = await _answer(slot)
        except BaseException:
            slot.release()
            raise
        if slot.file is None:  # answered without a body
            slot.release()
        return response

    async def _answer(slot: _Slot) -> Response:
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
        slot.file = file
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
        response = Response(
            _stream(slot, file, size), content_type="application/octet-stream", headers=headers
        )
        # Quart-Trio cancels the body's sending at this deadline (a client that stopped reading).
        response.timeout = SEND_BASE_TIMEOUT_S + size / MIN_SEND_RATE_BYTES_S
        return response


async def _stream(slot: _Slot, file: IO[bytes], size: int) -> AsyncIterator[bytes]:
    """``size`` bytes of ``file`` in pieces, read in a worker thread; releases ``slot``
    (closes ``file``) at the end, on error or when the send is cancelled.

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
        slot.release()
