"""``dengine-trio snapshot save|status|restore``: backups of a running cluster, and a new cluster
seeded from one (as ``etcdctl snapshot save`` and ``etcdutl snapshot restore``).

``save`` asks each ``--endpoint`` (health ports) in turn for ``GET /snapshot`` until one
answers 200, downloads the file to a temporary name beside ``FILE``, checks that it is
complete (the announced length), intact (CRC32 of header and file), of a format version this
code reads, of the serving node's cluster and of the announced index and term, and only then
renames it to ``FILE``. The node's answer already waited for every write acknowledged before
the request (a linearizable read barrier), so the file holds all of them.

``status`` verifies a snapshot file whole and prints what it holds.

``restore`` seeds the data directory of ONE node, named by its configuration file, from a
snapshot file; running it for every node of the new cluster with the same file makes them start
as one cluster that serves every key of the file (``docs/operations.md``). It verifies the file
completely first, refuses a data directory that holds anything of a node (a hard state, a log
segment, a snapshot) or that a running node has locked, then writes the snapshot into the
node's ``snapshots_dir`` with its header rewritten for the TARGET cluster (membership of the
configuration; a restore starts a new cluster, as etcd's does), and a hard state whose term is
the snapshot's last term (a node's term is never below its log's last term), with no vote. The
log starts empty after the snapshot's index. The new cluster's id is the configuration's id
plus a suffix hashed from the backup file (its original cluster id, index, term, CRC32),
persisted in ``<db_root_dir>/cluster_id`` (``storage/cluster_identity.py``) and written into
the snapshot's header: nodes restored from the same file form one cluster, nodes restored from
different files refuse each other at the handshake (one log line naming both ids) instead of
forming a cluster whose members hold different histories. Temporary files of an interrupted
restore (or of a node's interrupted snapshot) are removed first: they are not data.

Exit status: 0 done; :data:`EXIT_NO_SNAPSHOT` (1) ``save`` got no snapshot from any endpoint
(unreachable, an HTTP error, a download cut short); :data:`EXIT_REFUSED` (2) a usage or
configuration error, a snapshot file that is corrupt, truncated, of an unknown format version
or (``save``) of another cluster (nothing is saved or applied), a data directory that is not
empty or is in use. Every failure is one line on stderr naming the file or directory.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from dengine_trio.config import ConfigError, NodeConfig, load_config
from dengine_trio.ctl._http import Credentials
from dengine_trio.storage import StorageError
from dengine_trio.storage.cluster_identity import restored_cluster_id, save_cluster_id
from dengine_trio.storage.hard_state import HARD_STATE_FILE, HardState, save_hard_state
from dengine_trio.storage.lock import DirectoryLock
from dengine_trio.storage.node_identity import new_node_uuid
from dengine_trio.storage.snapshots import (
    DEFAULT_CHUNK_BYTES,
    TEMPORARY_PREFIX,
    TEMPORARY_SUFFIX,
    SnapshotError,
    SnapshotFile,
    SnapshotHeader,
    SnapshotReader,
    SnapshotWriter,
    remove_stale_temporaries,
    verify_snapshot,
)

__all__ = [
    "EXIT_NO_SNAPSHOT",
    "EXIT_REFUSED",
    "restore_snapshot_file",
    "run_restore",
    "run_save",
    "run_status_of_file",
    "save_snapshot_file",
]

EXIT_NO_SNAPSHOT = 1
"""``save``: no endpoint delivered a snapshot."""
EXIT_REFUSED = 2
"""Usage or configuration error, a bad snapshot file, a data directory that is not empty."""

SNAPSHOT_PATH = "/snapshot"
INDEX_HEADER = "X-Dengine-Snapshot-Index"
TERM_HEADER = "X-Dengine-Snapshot-Term"
CLUSTER_HEADER = "X-Dengine-Cluster-Id"
"""The response headers of ``GET /snapshot`` (``dengine_trio.api.snapshot``), repeated here so
the client tools do not import the HTTP server."""
WAL_DIRECTORY = "wal"
"""``<db_root_dir>/wal``: the node's log segments (``dengine_trio.storage``)."""
INCOMING_DIRECTORY = "incoming"
"""``<snapshots_dir>/incoming``: snapshots being received from a leader, which the node
discards at start (``runtime/snapshotting.py``): never data to keep."""


class SaveError(Exception):
    """The downloaded file is bad (``str()``: one line naming it); nothing was saved."""


class RestoreError(Exception):
    """Restore refused (``str()``: one line naming the file or directory); nothing applied."""


# ---------------------------------------------------------------------------------------------
# save


class _Unavailable(Exception):
    """This endpoint gave no snapshot (unreachable, an HTTP error, a download cut short)."""


class _Stopped(BaseException):
    """A stop signal arrived (``signum``): the download unwinds through its clean-up, which
    deletes the temporary file. A BaseException, as KeyboardInterrupt, so that no ``except
    Exception`` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop ``save`` cleanly (``timeout`` and systemd send SIGTERM, a closed
terminal SIGHUP, Ctrl+C SIGINT): the temporary file is deleted, one line says so, and the exit
status is 128 + the signal's number, as a shell reports a process killed by it. Only SIGKILL
(or a power loss) can leave a ``.FILE.*.part`` behind."""


@contextmanager
def _stop_signals_raise() -> Iterator[None]:
    """Within the block, :data:`STOP_SIGNALS` raise :class:`_Stopped` (main thread only: a
    library caller in another thread keeps its own handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def save_snapshot_file(
    endpoints: Sequence[str],
    target: Path,
    timeout_s: float,
    credentials: Credentials,
    consistency: str = "linearizable",
) -> tuple[SnapshotFile, str]:
    """Download a snapshot from the first of ``endpoints`` that gives one into ``target``.

    Returns the verified file (at ``target``) and the endpoint that served it. Raises
    :class:`SaveError` for a complete download that fails verification (nothing is written
    at ``target``), :class:`_Unavailable` (one line for every endpoint) when none delivered,
    ``OSError`` when the temporary file cannot be written beside ``target``.
    """
    failures: list[str] = []
    for endpoint in endpoints:
        try:
            saved = _save_from(endpoint, target, timeout_s, credentials, consistency)
        except _Unavailable as exc:
            failures.append(f"{endpoint}: {exc}")
            continue
        return saved, endpoint
    raise _Unavailable("; ".join(failures))


def _save_from(
    endpoint: str, target: Path, timeout_s: float, credentials: Credentials, consistency: str
) -> SnapshotFile:
    url = f"{endpoint}{SNAPSHOT_PATH}?consistency={consistency}"
    headers = {"Accept": "application/octet-stream"}
    if credentials.token:
        headers["Authorization"] = f"Bearer {credentials.token}"
    request = urllib.request.Request(url, method="GET", headers=headers)
    try:
        response = credentials.open(request, timeout_s)
    except urllib.error.HTTPError as exc:
        with exc:
            try:
                body = exc.read()
            except OSError:
                body = b""
            raise _Unavailable(_http_error(exc.code, body)) from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Unavailable(f"unreachable: {reason or type(exc).__name__}") from None
    with response:
        announced = _announced(response)
        directory = target.parent
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
        temporary = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                received = _copy(response, out, announced["length"])
                out.flush()
                os.fsync(out.fileno())
            if received != announced["length"]:
                raise _Unavailable(f"download cut short: {received} of {announced['length']} bytes")
            saved = _verify_download(temporary, target, announced)
            os.replace(temporary, target)
            _fsync_directory(directory)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    return SnapshotFile(
        target, saved.last_index, saved.last_term, saved.header, saved.size_bytes,
        saved.payload_bytes,
    )  # fmt: skip


def _http_error(status: int, body: bytes) -> str:
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    hint = " (--endpoint takes a health port, e.g. http://127.0.0.1:10001)" if status == 404 else ""
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        message = f"HTTP {status} {decoded['error']}: {decoded.get('message', '')}".rstrip(": ")
        return message + hint
    return f"HTTP {status}{hint}"


def _announced(response: Any) -> dict[str, Any]:
    """Length, index, term and cluster id the node announced in its headers."""
    try:
        return {
            "length": int(response.headers["Content-Length"]),
            "index": int(response.headers[INDEX_HEADER]),
            "term": int(response.headers[TERM_HEADER]),
            "cluster_id": response.headers.get(CLUSTER_HEADER),
        }
    except (KeyError, TypeError, ValueError):
        raise _Unavailable(
            "not a snapshot answer (no Content-Length or snapshot index/term headers): "
            "not a dengine-trio health port?"
        ) from None


def _copy(response: Any, out: Any, length: int) -> int:
    """Copy the body (at most ``length`` bytes) to ``out``; the bytes copied."""
    received = 0
    try:
        while received < length:
            piece = response.read(min(DEFAULT_CHUNK_BYTES, length - received))
            if not piece:
                break
            out.write(piece)
            received += len(piece)
    except (OSError, http.client.HTTPException) as exc:
        if isinstance(exc, http.client.IncompleteRead):
            received += len(exc.partial)
        raise _Unavailable(
            f"download cut short after {received} of {length} bytes: "
            f"{getattr(exc, 'reason', None) or type(exc).__name__}"
        ) from None
    return received


def _verify_download(temporary: Path, target: Path, announced: dict[str, Any]) -> SnapshotFile:
    """The downloaded file, verified whole; :class:`SaveError` naming ``target`` if bad."""
    try:
        saved = verify_snapshot(temporary, announced["cluster_id"])
    except SnapshotError as exc:
        raise SaveError(
            f"{target}: the downloaded snapshot is bad, not saved: {exc.problem}"
        ) from None
    got = (saved.last_index, saved.last_term)
    if got != (announced["index"], announced["term"]):
        raise SaveError(
            f"{target}: the downloaded snapshot holds index {got[0]} term {got[1]}, the node "
            f"announced index {announced['index']} term {announced['term']}; not saved"
        )
    return saved


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` (symbolic links followed) cannot be replaced by the saved file, or None.

    The download is renamed into place, which would turn a FIFO, a device or a directory
    named on the command line (``/dev/stdout`` in a pipeline) into a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None  # a new file (or a dangling link, to be created through)
    except OSError as exc:
        return f"cannot use it: {exc.strerror or exc}"
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (pipe)"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    return (
        f"is {kind}, not a regular file: snapshot save writes a verified file and renames it "
        "into place; give a file name"
    )


def run_save(
    endpoints: Sequence[str],
    file: str,
    *,
    timeout_s: float,
    out: TextIO,
    err: TextIO,
    credentials: Credentials | None = None,
    consistency: str = "linearizable",
) -> int:
    """``snapshot save``: print one line with index, term and bytes; return the exit status
    (0, :data:`EXIT_NO_SNAPSHOT`, :data:`EXIT_REFUSED`)."""
    given = Path(file)
    problem = _not_a_file(given)
    if problem:
        err.write(f"dengine-trio snapshot save: {given}: {problem}\n")
        return EXIT_REFUSED
    # Through a symbolic link, as cp and a shell redirection write: the link stays a link.
    target = Path(os.path.realpath(given)) if given.is_symlink() else given
    if not target.parent.is_dir():
        err.write(f"dengine-trio snapshot save: {target.parent}: no such directory\n")
        return EXIT_REFUSED
    try:
        with _stop_signals_raise():
            saved, endpoint = save_snapshot_file(
                endpoints, target, timeout_s, credentials or Credentials(), consistency
            )
    except _Stopped as exc:
        name = signal.Signals(exc.signum).name
        err.write(f"dengine-trio snapshot save: {target}: stopped by {name}; nothing saved\n")
        return 128 + exc.signum
    except SaveError as exc:
        err.write(f"dengine-trio snapshot save: {exc}\n")
        return EXIT_REFUSED
    except _Unavailable as exc:
        err.write(f"dengine-trio snapshot save: no endpoint gave a snapshot: {exc}\n")
        return EXIT_NO_SNAPSHOT
    except OSError as exc:
        err.write(f"dengine-trio snapshot save: {target}: cannot write: {exc.strerror or exc}\n")
        return EXIT_REFUSED
    out.write(
        f"saved {target}: index {saved.last_index}, term {saved.last_term}, "
        f"{saved.size_bytes} bytes (from {endpoint})\n"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# status


def run_status_of_file(file: str, *, out: TextIO, err: TextIO) -> int:
    """``snapshot status FILE``: verify the whole file and print one line of what it holds
    (index, term, cluster id, members, bytes); return 0 or :data:`EXIT_REFUSED`."""
    try:
        checked = verify_snapshot(file, None)
    except SnapshotError as exc:
        err.write(f"dengine-trio snapshot status: {file}: bad snapshot: {exc.problem}\n")
        return EXIT_REFUSED
    except OSError as exc:
        err.write(f"dengine-trio snapshot status: {file}: cannot read: {exc.strerror or exc}\n")
        return EXIT_REFUSED
    assert checked.header is not None  # verify_snapshot reads the header
    members = ",".join(f"{i}={a}" for i, a in checked.header.voters.items())
    out.write(
        f"{file}: index {checked.last_index}, term {checked.last_term}, cluster "
        f"{checked.header.cluster_id}, members {members}, {checked.size_bytes} bytes: ok\n"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# restore


def _node_data(config: NodeConfig) -> list[str]:
    """What of a node's data ``config``'s directories hold (empty: a fresh directory)."""
    found = []
    db = config.db_root_path()
    if (db / HARD_STATE_FILE).exists():
        found.append(str(db / HARD_STATE_FILE))
    # Files, not directories: a node that started and stopped leaves empty ones (wal/,
    # snapshots/incoming/), which hold nothing to lose.
    wal = db / WAL_DIRECTORY
    if _holds_files(wal):
        found.append(f"{wal}/ (log segments)")
    snapshots = config.snapshots_path()
    if _holds_files(snapshots, skip=snapshots / INCOMING_DIRECTORY):
        found.append(f"{snapshots}/ (snapshots)")
    return found


def _holds_files(directory: Path, skip: Path | None = None) -> bool:
    """Whether ``directory`` holds a file outside ``skip`` that is not an interrupted
    write's temporary (``.snapshot-*.tmp``: what the node deletes at start, never data)."""
    if not directory.is_dir():
        return False
    for path in directory.rglob("*"):
        if skip is not None and path.is_relative_to(skip):
            continue
        if not path.is_file():
            continue
        if path.name.startswith(TEMPORARY_PREFIX) and path.name.endswith(TEMPORARY_SUFFIX):
            continue
        return True
    return False


def _file_crc(path: Path) -> int:
    """The file CRC32 in the last 4 bytes of a snapshot file (already verified)."""
    with open(path, "rb") as file:
        file.seek(-4, os.SEEK_END)
        return int.from_bytes(file.read(4), "little")


def restore_snapshot_file(source: Path, config: NodeConfig) -> tuple[SnapshotFile, str]:
    """Seed ``config``'s empty data directory from the snapshot file ``source``.

    Returns the installed snapshot (in ``config.snapshots_path()``; its header carries the
    restored cluster's id, module docstring) and the cluster id the file was taken in.
    Raises :class:`RestoreError` (one line naming the file or directory): an unreadable,
    corrupt, truncated or unknown-version file, a data directory that holds a node's data or
    that a running node holds; ``OSError`` from writing.
    """
    try:
        original = verify_snapshot(source, None)
    except SnapshotError as exc:
        raise RestoreError(f"{source}: not restored: {exc.problem}") from None
    except IsADirectoryError:
        raise RestoreError(f"{source}: is a directory, not a snapshot file") from None
    except OSError as exc:
        raise RestoreError(f"{source}: cannot read: {exc.strerror or exc}") from None
    assert original.header is not None  # verify_snapshot reads the header
    if original.last_index == 0:
        raise RestoreError(
            f"{source}: covers no log entry (index 0), so there is nothing to restore; start "
            "the nodes with empty data directories instead"
        )
    db = config.db_root_path()
    try:
        if not db.is_dir():
            db.mkdir(parents=True)
            _fsync_directory(db.parent)  # the new directory survives a power loss too
    except OSError as exc:
        raise RestoreError(f"{db}: cannot create the data directory: {exc.strerror}") from None
    try:
        lock = DirectoryLock.acquire(db)
    except StorageError as exc:
        raise RestoreError(f"{exc}; stop that node first") from None
    try:
        found = _node_data(config)
        if found:
            raise RestoreError(
                f"{db}: the data directory of node {config.cluster.node_id} is not empty "
                f"({', '.join(found)}): restore seeds an empty one only; move it away first"
            )
        snapshots = config.snapshots_path()
        # Leftovers of an interrupted restore or snapshot: the node would delete them too.
        remove_stale_temporaries(snapshots)
        remove_stale_temporaries(snapshots / INCOMING_DIRECTORY)
        origin = {
            "cluster_id": original.header.cluster_id,
            "last_index": original.last_index,
            "last_term": original.last_term,
            "crc32": _file_crc(source),
        }
        cluster_id = restored_cluster_id(config.cluster_id(), origin)
        # The id first: a restore interrupted after it leaves a node with no data under the
        # new id (a rerun replaces it); one interrupted before it leaves nothing.
        save_cluster_id(db, cluster_id, origin="restore", detail={"source": origin})
        # A new identity for the seeded directory: a uuid left by a node that started here
        # (and stored nothing) may be bound in some membership (storage/node_identity.py).
        new_node_uuid(db)
        header = SnapshotHeader(
            original.last_index,
            original.last_term,
            cluster_id,
            {p.id: p.address for p in config.cluster.initial_cluster},
        )
        installed = _rewrite(source, snapshots, header)
        # Term = the snapshot's last term, no vote: a node's term is never below the last term
        # of its log (here the snapshot's), and voting afresh in it is safe: nobody voted yet.
        save_hard_state(db, HardState(term=original.last_term, voted_for=0))
    finally:
        # The LOCK file stays: removing it after the release could remove the lock file of
        # a node that took it meanwhile. It holds no data.
        lock.release()
    return installed, original.header.cluster_id


def _rewrite(source: Path, directory: Path, header: SnapshotHeader) -> SnapshotFile:
    """Copy ``source``'s payload under ``header`` into ``directory``, atomically installed;
    the payload is verified again as it is copied (the file may have changed since)."""
    try:
        with (
            SnapshotReader.open(source) as reader,
            SnapshotWriter.create(directory, header) as writer,
        ):
            while piece := reader.read(DEFAULT_CHUNK_BYTES):
                writer.write(piece)
            return writer.commit()
    except SnapshotError as exc:
        raise RestoreError(f"{source}: not restored: {exc.problem}") from None


def run_restore(file: str, config_path: str, *, out: TextIO, err: TextIO) -> int:
    """``snapshot restore``: print one line saying what was restored where; return the exit
    status (0 or :data:`EXIT_REFUSED`)."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        err.write(f"{exc}\n")
        return EXIT_REFUSED
    try:
        installed, origin = restore_snapshot_file(Path(file), config)
    except RestoreError as exc:
        err.write(f"dengine-trio snapshot restore: {exc}\n")
        return EXIT_REFUSED
    except OSError as exc:
        where = exc.filename or config.db_root_path()
        err.write(f"dengine-trio snapshot restore: {where}: cannot write: {exc.strerror}\n")
        return EXIT_REFUSED
    out.write(
        f"restored {file} (index {installed.last_index}, term {installed.last_term}, taken in "
        f"cluster {origin}) into {installed.path} for node {config.cluster.node_id} of cluster "
        f"{installed.header.cluster_id if installed.header else config.cluster_id()} (every node "
        f"restored from this same file gets this id); start the node to serve it\n"
    )
    return 0
