"""InstallSnapshot over the network: a leader streams a snapshot file to a follower.

The core only says which follower needs a snapshot (``Send(InstallSnapshot)``: the leader's
newest file, at or after ``last_index``) and hears how it went (``SnapshotStatus``); the
follower's core sees ``InstallSnapshot`` only once the whole file is on its disk, verified
(Raft paper section 7, Figure 13, with etcd raft's split: the bytes never pass the core).

The connection
==============

Each transfer has a TCP connection of its own, dialed by the leader with the same handshake
as the message link (``Hello`` with ``channel=SNAPSHOT``, ``HelloReply``, TLS when peer TLS is
on), so heartbeats and appends to this and every other peer never wait behind snapshot bytes.
Then::

    leader   -> SnapshotOffer(term, last_index, last_term, size, checksum)
    follower -> SnapshotResume(offset)       0, or the bytes it holds of exactly this file
    leader   -> SnapshotChunk(offset, data)  in order, up to ``size``
    follower -> SnapshotReceived(ok, reason) once the file verified (or failed to)

Flow control is TCP's: the leader reads one chunk (``chunk_size`` bytes) from the file in a
worker thread and writes it with ``send_all``, which waits while the follower is not reading;
the follower reads one frame, writes it to its partial file in a worker thread, then reads the
next. Memory on each side: one chunk (and one socket read, 256 KiB), whatever the file size.

Rules
=====

* One transfer per peer at a time on the leader. A request while one runs is ignored if the
  running file covers it and the running offer's term is not older (the core repeats
  requests); otherwise (a newer snapshot needed, or the leader is in a newer term, which the
  follower's core judges the message by) it stops and starts over with the newest file (only
  the latter is reported; the follower resumes a file it partly holds).
* The leader keeps the file open for the whole transfer, so a newer snapshot (or
  ``remove_old_snapshots``) replacing it on disk does not change the bytes under way.
* One partial file on the follower, in ``<snapshots_dir>/incoming/``. A connection that drops
  (closed, reset, no progress for ``SNAPSHOT_IO_TIMEOUT_S``) leaves it: the leader reconnects
  and the follower answers the offer with the offset it holds if the offer names the same
  file (leader, index, last term, size and checksum: the term may have moved on), so the
  transfer goes on from there; any other offer replaces it (it starts from 0). An offer
  arriving while another connection still feeds the partial file takes it over (the older
  connection is closed).
* Bad input (a chunk at another offset, empty, past the offered size, from another node; an
  undecodable or oversized frame; anything but a chunk) closes that connection only and
  removes the partial file; so does a complete file that fails verification (CRC, format
  version, cluster id, the offered index and term), which the follower also reports with
  ``SnapshotReceived(ok=False)``. The message link and the node carry on.
* An offer of an older term than the one whose connection is feeding the partial file is
  refused at once (``SnapshotReceived(ok=False)``): a deposed leader retrying must not keep
  cutting off its successor's transfer.
* A complete, verified file is handed to the node with ``SnapshotHooks.received`` (the node
  steps ``InstallSnapshot`` naming the file's own index and term and owns the file from then
  on), then confirmed to the leader, which reports ``SnapshotStatus(peer, ok=True)``.
  The leader reports ``ok=False`` when it has no snapshot file recent enough, when the
  follower refused the file, or after ``MAX_ATTEMPTS`` connections in a row made no progress.
* A follower that completed a file and lost the connection before confirming it answers the
  same offer again with the whole size and ``SnapshotReceived(ok=True)``, without handing
  the file to its node twice; once: a further identical offer is served from 0 and handed
  over again (the node may not have used the file, and the leader asks again only then).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

from ..raft.messages import InstallSnapshot
from ..storage.snapshots import (
    SnapshotError,
    SnapshotFile,
    SnapshotReceiver,
    move_aside,
    verify_snapshot,
)
from ..wire.codec import decode, encode
from ..wire.errors import CodecError
from ..wire.frames import HEADER_BYTES, FrameReader, encode_frame
from ..wire.messages import (
    Channel,
    SnapshotChunk,
    SnapshotOffer,
    SnapshotReceived,
    SnapshotResume,
)
from .links import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    MAX_REASON_CHARS,
    RECEIVE_BYTES,
    STREAM_ERRORS,
    OutboundLink,
    PeerStats,
    ProtocolViolation,
)

if TYPE_CHECKING:
    from .transport import Transport

__all__ = [
    "INCOMING_SUBDIR",
    "MAX_ATTEMPTS",
    "SNAPSHOT_IO_TIMEOUT_S",
    "SnapshotHooks",
    "SnapshotTransfers",
]

INCOMING_SUBDIR = "incoming"
"""Where a follower keeps partial and received files: ``<snapshots_dir>/incoming/``, on the
same file system as the snapshots (the node renames a file it installs) and out of recovery's
sight (a file there is not a snapshot of this node until the core took it)."""
SNAPSHOT_IO_TIMEOUT_S = 30.0
"""A snapshot connection that makes no progress for this long (s) is given up: a chunk the
follower does not take, a frame the leader does not send, an answer that does not come."""
VERIFY_BYTES_PER_S = 20e6
"""The slowest verification (bytes/s: a read and a CRC of the whole file) the leader waits
for after the last chunk, on top of ``SNAPSHOT_IO_TIMEOUT_S``."""
MAX_ATTEMPTS = 3
"""Connections in a row that make no progress before the leader gives up a transfer: a
connection makes progress when the follower holds more of the file at its start than at the
start of every earlier one (what it kept, not what was sent)."""
WARNING_INTERVAL_S = 60.0
"""A failure of a transfer is logged as a WARNING this often per peer and kind, at DEBUG in
between, on both sides: after ``SnapshotStatus(ok=False)`` the core asks again at the peer's
next heartbeat answer, so a lasting fault (a follower's full disk, a damaged file) repeats it
many times a second."""
_FRAME_HEADROOM = 64
"""Bytes of a ``SnapshotChunk`` frame besides its data (envelope, offset, ids), rounded up."""
_CRC = struct.Struct("<I")

log = logging.getLogger("dengine_trio.transport")


@attrs.frozen
class SnapshotHooks:
    """What the transport needs of its node for snapshot transfers.

    ``directory``: the node's ``snapshots_dir`` (partial files go to its ``incoming/``).
    ``chunk_bytes``: bytes of file per chunk (``[raft.snapshot] chunk_size``; capped so a
    chunk fits in a frame). ``latest()``: the leader's newest snapshot file, or None.
    ``received(message, path)``: a verified file arrived; the node steps ``message``
    (``InstallSnapshot`` naming the file's own index and term) and owns ``path`` from then on.
    ``status(peer, ok)``: a transfer to ``peer`` finished; the node steps
    ``SnapshotStatus(peer, ok)``. ``damaged(file)``: the leader's own newest file is
    unusable: it failed verification after a follower refused it (the transport has renamed
    it aside already), it is gone from disk or cannot be read, or there is none that covers
    what the core asks for (``file`` None, or older): the node must take a fresh snapshot
    (rate-limited on its side), or no follower needing one ever catches up.
    All are called in the trio thread and must not block.
    """

    directory: Path
    chunk_bytes: int
    latest: Callable[[], SnapshotFile | None]
    received: Callable[[InstallSnapshot, Path], None]
    status: Callable[[int, bool], None]
    damaged: Callable[[SnapshotFile | None], None] | None = None


class _Outgoing:
    """A transfer this node (the leader) runs to one peer."""

    def __init__(self, peer_id: int, term: int, last_index: int) -> None:
        self.peer_id = peer_id
        self.term = term
        """The leader's term the offer names: the follower's core judges the message by it."""
        self.last_index = last_index
        """The file's last index once chosen; until then, the least the request needs."""
        self.scope = trio.CancelScope()
        self.superseded = False


@attrs.define(eq=False)
class _Incoming:
    """The partial file this node (a follower) holds, and the connection feeding it."""

    key: SnapshotOffer
    """The offer it belongs to. A later offer of the same file (leader, index, last term,
    size, checksum) resumes it whatever its term; the last one names the message's term."""
    receiver: SnapshotReceiver
    owner: trio.CancelScope | None = None
    released: trio.Event = attrs.field(factory=trio.Event)


class SnapshotTransfers:
    """Both sides of snapshot transfers for one ``Transport`` (see the module docstring).

    ``request`` starts a transfer (leader side); the transport's listener hands accepted
    ``SNAPSHOT`` connections to ``receive`` (follower side). ``nursery`` is set by
    ``Transport.run``; transfers run in it and end with it.
    """

    def __init__(self, transport: Transport, hooks: SnapshotHooks) -> None:
        self.transport = transport
        self.hooks = hooks
        self.node_id = transport.node_id
        self.stats = transport.stats.snapshots
        self.incoming_dir = Path(hooks.directory) / INCOMING_SUBDIR
        self.chunk_bytes = max(
            1, min(hooks.chunk_bytes, transport.max_frame_bytes - _FRAME_HEADROOM)
        )
        self.nursery: trio.Nursery | None = None
        self._outgoing: dict[int, _Outgoing] = {}
        self._links = {
            peer_id: OutboundLink(
                peer_id, link.address, PeerStats(address=link.stats.address), Channel.SNAPSHOT
            )
            for peer_id, link in transport._links.items()
        }
        self._incoming: _Incoming | None = None
        self._completed: SnapshotOffer | None = None
        self._lock = trio.Lock()
        self._warned: dict[tuple[int, str], float] = {}
        self._own_checked: dict[Path, float] = {}  # own file -> trio time it last verified

    def add_link(self, message_link: OutboundLink) -> None:
        """A peer joined the membership (``Transport.set_peers``): snapshots can go to it."""
        self._links[message_link.peer_id] = OutboundLink(
            message_link.peer_id,
            message_link.address,
            PeerStats(address=message_link.stats.address),
            Channel.SNAPSHOT,
        )

    def remove_link(self, peer_id: int) -> None:
        """A peer left the membership: a transfer to it stops, none starts again."""
        self._links.pop(peer_id, None)
        out = self._outgoing.get(peer_id)
        if out is not None:
            out.scope.cancel()

    # -- leader side ----------------------------------------------------------------------

    def request(self, msg: InstallSnapshot) -> None:
        """Stream the newest snapshot file (ending at or after ``msg.last_index``) to
        ``msg.dst``, unless a transfer to it runs already that covers ``msg`` (see the module
        docstring). Never blocks; the outcome comes through ``SnapshotHooks.status``."""
        running = self._outgoing.get(msg.dst)
        if running is not None:
            if running.last_index >= msg.last_index and running.term >= msg.term:
                return
            log.info(
                "node %d: snapshot for peer %d must cover index %d in term %d, the one under "
                "way ends at %d in term %d: starting over with the newest",
                self.node_id,
                msg.dst,
                msg.last_index,
                msg.term,
                running.last_index,
                running.term,
            )
            running.superseded = True
            running.scope.cancel()
        if self.nursery is None:
            # Not running (yet, or any more): nothing can be sent, and the node stops with
            # the transport. (No status: this runs inside the core's step, which must not be
            # re-entered.)
            log.debug(
                "node %d: transport not running, snapshot for peer %d not sent",
                self.node_id,
                msg.dst,
            )
            return
        out = _Outgoing(msg.dst, msg.term, msg.last_index)
        self._outgoing[msg.dst] = out
        self.stats.sends_started += 1
        self.nursery.start_soon(self._run_outgoing, out, msg)

    async def _run_outgoing(self, out: _Outgoing, msg: InstallSnapshot) -> None:
        ok = False
        try:
            with out.scope:
                ok = await self._send_newest(out, msg)
        finally:
            if self._outgoing.get(out.peer_id) is out:
                del self._outgoing[out.peer_id]
        if out.superseded:
            return  # the transfer that replaced it reports
        if ok:
            self.stats.sends_completed += 1
        else:
            self.stats.sends_failed += 1
        self.hooks.status(out.peer_id, ok)

    async def _send_newest(self, out: _Outgoing, msg: InstallSnapshot) -> bool:
        opened = await self._open_newest(msg)
        if opened is None:
            return False
        fd, snapshot, offer = opened
        out.last_index = snapshot.last_index
        try:
            log.info(
                "node %d: sending snapshot through index %d term %d (%d bytes) to peer %d",
                self.node_id,
                offer.last_index,
                offer.last_term,
                offer.size,
                out.peer_id,
            )
            failures = 0
            held = -1  # the most the follower said it held at the start of a connection
            while True:
                outcome, offset = await self._send_once(fd, offer, snapshot)
                if outcome is not None:
                    return outcome
                # Progress is what the follower kept, not what was sent: one that loses its
                # partial file each time (a full disk) makes none, however many bytes move.
                if offset > held:
                    held, failures = offset, 0
                else:
                    failures += 1
                if failures >= MAX_ATTEMPTS:
                    self._warn(
                        out.peer_id,
                        "gave up",
                        "node %d: gave up sending a snapshot to peer %d: %d connections in a "
                        "row made no progress (%s)",
                        self.node_id,
                        out.peer_id,
                        failures,
                        getattr(self._links.get(out.peer_id), "last_error", "")
                        or "no reason recorded",
                    )
                    return False
                await trio.sleep(min(BACKOFF_MIN_S * 2**failures, BACKOFF_MAX_S))
        finally:
            os.close(fd)

    def _warn(self, peer_id: int, what: str, message: str, *args: object) -> None:
        """Log a transfer's failure (either side) at WARNING once per ``WARNING_INTERVAL_S``
        (s) per peer and kind, at DEBUG in between: the core asks again at each heartbeat
        answer."""
        now = trio.current_time()
        key = (peer_id, what)
        last = self._warned.get(key)
        fresh = last is None or now - last >= WARNING_INTERVAL_S
        if fresh:
            self._warned[key] = now
        log.log(logging.WARNING if fresh else logging.DEBUG, message, *args)

    async def _open_newest(
        self, msg: InstallSnapshot
    ) -> tuple[int, SnapshotFile, SnapshotOffer] | None:
        """Open the newest snapshot file if it covers ``msg.last_index``; its descriptor, the
        file and the offer naming it. None (logged, rate-limited) if there is none, or it
        is gone from disk or unreadable: then the node is told (``SnapshotHooks.damaged``)
        so that it takes a fresh one; the core asks again at the peer's next heartbeat
        answer."""
        missing: SnapshotFile | None = None
        for _ in range(3):  # a file removed between ``latest`` and ``open``: look again
            snapshot = self.hooks.latest()
            if missing is not None and snapshot is not None and snapshot.path == missing.path:
                break  # the node still names the file that is gone: it is gone for good
            if snapshot is None or snapshot.last_index < msg.last_index:
                self._warn(
                    msg.dst,
                    "no snapshot",
                    "node %d: peer %d needs a snapshot through index %d or later, but the "
                    "newest here is %s",
                    self.node_id,
                    msg.dst,
                    msg.last_index,
                    "none" if snapshot is None else f"through index {snapshot.last_index}",
                )
                self._unusable(snapshot)
                return None
            try:
                fd, size, checksum = await trio.to_thread.run_sync(_open_file, snapshot.path)
            except FileNotFoundError:
                missing = snapshot
                continue
            except OSError as exc:
                self._warn(
                    msg.dst,
                    "unreadable",
                    "node %d: cannot read snapshot %s: %r; not sent, taking a fresh one",
                    self.node_id,
                    snapshot.path,
                    exc,
                )
                self._unusable(snapshot)
                return None
            offer = SnapshotOffer(
                msg.term,
                self.node_id,
                msg.dst,
                snapshot.last_index,
                snapshot.last_term,
                size,
                checksum,
            )
            return fd, snapshot, offer
        self._warn(
            msg.dst,
            "missing",
            "node %d: snapshot %s kept disappearing from disk; not sent, taking a fresh one",
            self.node_id,
            "(none)" if missing is None else missing.path,
        )
        self._unusable(missing)
        return None

    def _unusable(self, snapshot: SnapshotFile | None) -> None:
        """Tell the node its newest snapshot file cannot be sent (``SnapshotHooks.damaged``)."""
        if self.hooks.damaged is not None:
            self.hooks.damaged(snapshot)

    async def _send_once(
        self, fd: int, offer: SnapshotOffer, snapshot: SnapshotFile
    ) -> tuple[bool | None, int]:
        """One connection's worth of a transfer of ``snapshot`` (open as ``fd``): (True/False:
        done, reported as such; None: the connection was lost, try again) and the offset the
        follower said it held (-1: no answer)."""
        link = self._links.get(offer.dst)
        if link is None:  # the peer left the membership
            return False, -1
        stream = await self.transport._connect(link)
        if stream is None:
            return None, -1
        link.stats.connects += 1
        held = -1
        try:
            frames = _Frames(stream, FrameReader(self.transport.max_frame_bytes), [])
            with trio.fail_after(SNAPSHOT_IO_TIMEOUT_S):
                await _send_message(stream, offer)
                resume = decode(await frames.next())
            if type(resume) is SnapshotReceived and not resume.ok:
                # Refused outright (a transfer of a newer leader is under way there).
                log.info(
                    "node %d: peer %d refused the snapshot: %s",
                    self.node_id,
                    offer.dst,
                    resume.reason,
                )
                return False, held
            if type(resume) is not SnapshotResume:
                raise ProtocolViolation(f"answered SnapshotOffer with {type(resume).__name__}")
            if (resume.src, resume.dst) != (offer.dst, self.node_id):
                raise ProtocolViolation(f"{resume!r} on a connection to peer {offer.dst}")
            if not 0 <= resume.offset <= offer.size:
                raise ProtocolViolation(f"resume at {resume.offset} of {offer.size} bytes")
            offset = held = resume.offset
            if offset:
                log.info(
                    "node %d: peer %d holds %d of %d bytes of the snapshot: going on from there",
                    self.node_id,
                    offer.dst,
                    offset,
                    offer.size,
                )
            while offset < offer.size:
                size = min(self.chunk_bytes, offer.size - offset)
                data = await trio.to_thread.run_sync(os.pread, fd, size, offset)
                if len(data) != size:
                    log.warning("node %d: snapshot file shrank while it was sent", self.node_id)
                    return False, held
                payload = encode(SnapshotChunk(self.node_id, offer.dst, offset, data))
                del data
                with trio.fail_after(SNAPSHOT_IO_TIMEOUT_S):
                    # Header and payload apart: no third copy of the chunk to make one frame.
                    await stream.send_all(len(payload).to_bytes(HEADER_BYTES, "big"))
                    await stream.send_all(payload)
                del payload
                offset += size
                self.stats.bytes_sent += size
                link.stats.bytes_out += size
            with trio.fail_after(SNAPSHOT_IO_TIMEOUT_S + offer.size / VERIFY_BYTES_PER_S):
                answer = await frames.message(SnapshotReceived)
            if answer.ok:
                log.info("node %d: peer %d took the snapshot", self.node_id, offer.dst)
            else:
                self._warn(
                    offer.dst,
                    "refused",
                    "node %d: peer %d refused the snapshot: %s",
                    self.node_id,
                    offer.dst,
                    answer.reason,
                )
                await self._check_own_file(snapshot)
            return answer.ok, held
        except (*STREAM_ERRORS, trio.TooSlowError, CodecError, ProtocolViolation, EOFError) as exc:
            link.last_error = f"snapshot connection lost: {exc!r}"[:MAX_REASON_CHARS]
            log.info(
                "node %d: snapshot connection to peer %d lost: %r", self.node_id, offer.dst, exc
            )
            return None, held
        finally:
            await trio.aclose_forcefully(stream)

    async def _check_own_file(self, snapshot: SnapshotFile) -> None:
        """A follower refused the whole file: if the fault is this file's (it rotted on disk
        since it was written and verified), rename it aside and tell the node
        (``SnapshotHooks.damaged``), which takes a fresh one. Otherwise the core would have it
        streamed again at every heartbeat answer, refused every time, and the follower would
        never catch up. A file that verifies here (the follower's reason is its own, e.g.
        another version) or is gone already is left alone, and not read again for
        ``WARNING_INTERVAL_S``: a follower that refuses every file (another format version)
        must not make the leader read its whole file twice per attempt."""
        now = trio.current_time()
        last = self._own_checked.get(snapshot.path)
        if last is not None and now - last < WARNING_INTERVAL_S:
            return
        try:
            await trio.to_thread.run_sync(verify_snapshot, snapshot.path, None, self.chunk_bytes)
            self._own_checked = {snapshot.path: now}  # only the newest file matters
            return
        except OSError:
            return  # removed since (a newer snapshot replaced it): nothing to do
        except SnapshotError as exc:
            problem = exc.problem
        try:
            await trio.to_thread.run_sync(move_aside, [snapshot.path])
        except OSError as exc:
            log.error(
                "node %d: cannot rename damaged %s aside: %r", self.node_id, snapshot.path, exc
            )
        log.error(
            "node %d: its own snapshot %s is damaged (%s): renamed aside; taking a fresh one",
            self.node_id,
            snapshot.path,
            problem,
        )
        if self.hooks.damaged is not None:
            self.hooks.damaged(snapshot)

    # -- follower side --------------------------------------------------------------------

    async def receive(
        self,
        stream: trio.abc.Stream,
        reader: FrameReader,
        peer_id: int,
        remote: str,
        pending: list[bytes],
    ) -> None:
        """Serve one accepted ``SNAPSHOT`` connection from ``peer_id`` (handshaken; ``reader``
        holds what followed the ``Hello``, ``pending`` the frames already split off) until
        the file is received or the connection ends. Never raises for what the peer sends."""
        frames = _Frames(stream, reader, pending)
        try:
            with trio.fail_after(SNAPSHOT_IO_TIMEOUT_S):
                offer = await frames.message(SnapshotOffer, last=False)
            if (offer.src, offer.dst) != (peer_id, self.node_id):
                raise ProtocolViolation(f"{offer!r} on a connection from peer {peer_id}")
            if offer.size <= 0 or offer.last_index <= 0:
                raise ProtocolViolation(f"impossible offer {offer!r}")
            await self._check_room(offer)
            await self._receive_offer(stream, frames, offer, remote)
        except (CodecError, ProtocolViolation) as exc:
            self._refused(peer_id, remote, str(exc), kind="bad input")
        except _DiskError as exc:
            self._refused(peer_id, remote, f"cannot write the snapshot: {exc}", kind="disk")
            await _send_quietly(stream, SnapshotReceived(self.node_id, peer_id, False, str(exc)))
        except (*STREAM_ERRORS, trio.TooSlowError, EOFError) as exc:
            log.info(
                "node %d: snapshot connection from peer %d at %s ended: %r",
                self.node_id,
                peer_id,
                remote,
                exc,
            )

    async def _check_room(self, offer: SnapshotOffer) -> None:
        """Refuse (``_DiskError``, before any byte is written) an offer larger than the file
        system of ``incoming/`` can take, counting the partial file held now (a resume, or
        one the offer replaces): a confused or hostile peer must not fill the disk the log
        is on with a file that could never be completed."""
        current = self._incoming
        held = current.receiver.received_bytes if current is not None else 0
        try:
            free = await trio.to_thread.run_sync(_free_bytes, self.incoming_dir)
        except OSError as exc:
            raise _DiskError(f"cannot tell the free space of {self.incoming_dir}: {exc!r}") from exc
        if offer.size > free + held:
            raise _DiskError(
                f"an offered snapshot of {offer.size} bytes does not fit in {self.incoming_dir} "
                f"({free} bytes free)"
            )

    def close(self) -> None:
        """Remove the partial file (the transport stops; a new process starts afresh)."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            self._discard(incoming.receiver)

    def _discard(self, receiver: SnapshotReceiver) -> None:
        """Remove a partial file; a disk error is logged (the next start removes it)."""
        try:
            receiver.abort()
        except OSError as exc:
            log.warning("node %d: cannot remove a partial snapshot file: %r", self.node_id, exc)

    def _refused(self, peer_id: int, remote: str, reason: str, *, kind: str) -> None:
        """Count and log (``_warn``: rate-limited per peer and ``kind``) a refused transfer:
        the leader offers again at each heartbeat answer for as long as the cause lasts."""
        self.stats.receives_refused += 1
        self.transport.stats.connections_closed_on_error += 1
        self._warn(
            peer_id,
            f"receive refused: {kind}",
            "node %d: closing snapshot connection from peer %d at %s: %s",
            self.node_id,
            peer_id,
            remote,
            reason[:MAX_REASON_CHARS],
        )

    async def _receive_offer(
        self, stream: trio.abc.Stream, frames: _Frames, offer: SnapshotOffer, remote: str
    ) -> None:
        scope = trio.CancelScope()
        answers: list[object] = []  # an answer without a transfer, sent outside the lock
        async with self._lock:
            current = self._incoming
            if current is not None and current.owner is not None and offer.term < current.key.term:
                # A deposed leader's retries must not keep cutting off its successor's.
                reason = f"a snapshot of a leader of term {current.key.term} is under way"
                log.info(
                    "node %d: refused a snapshot of term %d from peer %d: %s",
                    self.node_id,
                    offer.term,
                    offer.src,
                    reason,
                )
                answers = [SnapshotReceived(self.node_id, offer.src, False, reason)]
            else:
                # One connection feeds the partial file: a newer one takes it over.
                while self._incoming is not None and self._incoming.owner is not None:
                    current = self._incoming
                    current.owner.cancel()  # type: ignore[union-attr]
                    await current.released.wait()
                if offer == self._completed:
                    # Received, verified and handed over already; the confirmation was lost.
                    # Once only: should the node not have used the file (it may have crashed
                    # or stopped before installing it), the next offer gets it again, so the
                    # leader's retries can never loop on a confirmation alone.
                    self._completed = None
                    answers = [
                        SnapshotResume(self.node_id, offer.src, offer.size),
                        SnapshotReceived(self.node_id, offer.src, True),
                    ]
                else:
                    incoming = await self._partial_file(offer)
                    incoming.owner = scope
                    incoming.released = trio.Event()
        if answers:
            for answer in answers:
                await _send_quietly(stream, answer)
            return
        keep = True  # a connection that drops keeps the partial file for a resume
        try:
            with scope:
                try:
                    await self._fill(stream, frames, offer, incoming)
                except (CodecError, ProtocolViolation, _DiskError):
                    keep = False
                    raise
                keep = False  # complete: handed over or refused, never resumed
                await self._finish(stream, offer, incoming, remote)
            if scope.cancelled_caught:
                log.info(
                    "node %d: snapshot connection from peer %d at %s taken over by a newer one",
                    self.node_id,
                    offer.src,
                    remote,
                )
        finally:
            incoming.owner = None
            incoming.released.set()
            if not keep and self._incoming is incoming:
                self._incoming = None
                self._discard(incoming.receiver)

    async def _partial_file(self, offer: SnapshotOffer) -> _Incoming:
        """The partial file for ``offer``: the one held if it is of this very file (the
        connection then resumes), else a new one replacing it."""
        current = self._incoming
        if current is not None and _same_file(current.key, offer):
            current.key = offer
            if current.receiver.received_bytes:
                self.stats.resumed += 1
            return current
        self._incoming = None
        if current is not None:
            self._discard(current.receiver)
        try:
            receiver = await trio.to_thread.run_sync(SnapshotReceiver.create, self.incoming_dir)
        except OSError as exc:
            raise _DiskError(f"cannot create a file in {self.incoming_dir}: {exc!r}") from exc
        incoming = self._incoming = _Incoming(offer, receiver)
        return incoming

    async def _fill(
        self, stream: trio.abc.Stream, frames: _Frames, offer: SnapshotOffer, incoming: _Incoming
    ) -> None:
        receiver = incoming.receiver
        with trio.fail_after(SNAPSHOT_IO_TIMEOUT_S):
            await _send_message(
                stream, SnapshotResume(self.node_id, offer.src, receiver.received_bytes)
            )
        while receiver.received_bytes < offer.size:
            with trio.fail_after(SNAPSHOT_IO_TIMEOUT_S):
                chunk = await frames.message(SnapshotChunk)
            if (chunk.src, chunk.dst) != (offer.src, self.node_id):
                raise ProtocolViolation(f"{type(chunk).__name__} from {chunk.src} to {chunk.dst}")
            held = receiver.received_bytes
            if chunk.offset != held:
                raise ProtocolViolation(f"chunk at offset {chunk.offset}, expected {held}")
            if not 0 < len(chunk.data) <= offer.size - held:
                raise ProtocolViolation(
                    f"chunk of {len(chunk.data)} bytes at {held} of an offered {offer.size}"
                )
            # Not abandoned on cancellation: the partial file stays consistent with
            # ``received_bytes`` for a resume.
            try:
                await trio.to_thread.run_sync(receiver.write_chunk, chunk.offset, chunk.data)
            except OSError as exc:
                raise _DiskError(f"writing in {self.incoming_dir}: {exc!r}") from exc
            self.stats.bytes_received += len(chunk.data)

    async def _finish(
        self, stream: trio.abc.Stream, offer: SnapshotOffer, incoming: _Incoming, remote: str
    ) -> None:
        expected = (offer.last_index, offer.last_term)
        # A node that knows no cluster id yet (a joining or wiped one) takes its cluster's
        # first snapshot whatever id it names; the membership in it then names the id.
        cluster_id = self.transport.known_cluster_id or None
        try:
            staged = await trio.to_thread.run_sync(incoming.receiver.finish, cluster_id, expected)
        except SnapshotError as exc:
            # ``finish`` removed the file. One line naming the problem; the peer hears it.
            self._refused(offer.src, remote, f"refused the snapshot: {exc.problem}", kind="file")
            reason = exc.problem[:MAX_REASON_CHARS]
            await _send_quietly(stream, SnapshotReceived(self.node_id, offer.src, False, reason))
            return
        except OSError as exc:
            raise _DiskError(f"finishing the file in {self.incoming_dir}: {exc!r}") from exc
        self._incoming = None
        self._completed = offer
        self.stats.receives_completed += 1
        log.info(
            "node %d: received snapshot through index %d term %d (%d bytes) from peer %d",
            self.node_id,
            staged.last_index,
            staged.last_term,
            staged.size_bytes,
            offer.src,
        )
        header = staged.header
        message = InstallSnapshot(
            offer.term,
            offer.src,
            self.node_id,
            staged.last_index,
            staged.last_term,
            membership=(header.membership if header is not None else None) or b"",
        )
        self.hooks.received(message, staged.path)
        await _send_quietly(stream, SnapshotReceived(self.node_id, offer.src, True))


def _same_file(a: SnapshotOffer, b: SnapshotOffer) -> bool:
    """Whether two offers name the same bytes: one leader's file, whatever its term."""
    return attrs.evolve(a, term=0) == attrs.evolve(b, term=0)


class _DiskError(Exception):
    """The follower could not write or read its partial file (``OSError`` from the disk)."""


def _free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer can still put on the file system of ``directory`` (or of
    its nearest existing parent, before ``incoming/`` is created). Raises ``OSError``."""
    path = directory
    while not path.exists() and path != path.parent:
        path = path.parent
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def _open_file(path: Path) -> tuple[int, int, int]:
    """Open ``path``; its descriptor, size (bytes) and the CRC32 in its last 4 bytes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        tail = os.pread(fd, _CRC.size, max(0, size - _CRC.size))
        checksum = _CRC.unpack(tail)[0] if len(tail) == _CRC.size else 0
    except BaseException:
        os.close(fd)
        raise
    return fd, size, checksum


class _Frames:
    """Frames read from a stream one at a time, reading no further than needed, so at most
    one frame and one socket read are in memory."""

    def __init__(self, stream: trio.abc.Stream, reader: FrameReader, pending: list[bytes]) -> None:
        self.stream = stream
        self.reader = reader
        self.ready = list(pending)

    async def next(self) -> bytes:
        """The next frame's payload. Raises ``EOFError`` when the peer closed,
        ``FrameTooLarge``, the stream's errors."""
        while not self.ready:
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data:
                raise EOFError("closed by peer")
            self.ready = self.reader.feed(cast(bytes, data))
        return self.ready.pop(0)

    async def message(self, expected: type, *, last: bool = False) -> Any:
        """The next frame, decoded, which must be an ``expected``; with ``last`` nothing may
        follow it in what has been read. Raises ``ProtocolViolation``, ``CodecError``."""
        msg = decode(await self.next())
        if type(msg) is not expected:
            raise ProtocolViolation(f"expected {expected.__name__}, got {type(msg).__name__}")
        if last and self.ready:
            raise ProtocolViolation(f"unexpected frames after {expected.__name__}")
        return msg


async def _send_message(stream: trio.abc.Stream, msg: object) -> None:
    await stream.send_all(encode_frame(encode(msg)))


async def _send_quietly(stream: trio.abc.Stream, msg: object) -> None:
    """Send ``msg`` if the connection takes it within ``SNAPSHOT_IO_TIMEOUT_S``; the peer
    learns the same from the connection closing otherwise."""
    with trio.move_on_after(SNAPSHOT_IO_TIMEOUT_S):
        try:
            await _send_message(stream, msg)
        except STREAM_ERRORS:
            pass
