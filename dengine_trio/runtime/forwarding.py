"""The forwarding protocol: a follower hands a client's write to the leader.

Follower side (``propose``): ``ForwardPropose`` to the leader, then wait for the first of

* ``ForwardResult`` from the leader (its outcome, with the state machine's result on OK);
* this node applying the entry (``index``, ``term``) the leader named in ``ForwardAccepted``:
  committed, whichever leader committed it; or another term's entry at ``index``: overwritten,
  certainly not committed;
* leadership moving while the ``ForwardPropose`` is still in the transport's queue: it is taken
  back (``Transport.withdraw``), so it certainly never reached anyone; likewise when the
  transport drops it unsent (the leader's process restarted, or its queue overflowed).

Only the outcomes where the write certainly was not committed raise ``NotLeader`` (the caller
may send it again); a write the leader may have taken and that nothing settles in time ends
with ``Timeout``. Every answer names the request (id and the follower's incarnation), so an
answer meant for an earlier process of this node is dropped.

Leader side (``serve``): propose locally, send ``ForwardAccepted`` once the command is an
entry, and ``ForwardResult`` once it is applied (or failed).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgpack
import trio

from ..errors import (
    DengineError,
    MembershipError,
    NoLeader,
    NotLeader,
    Overloaded,
    Stopped,
    Timeout,
    TooLarge,
)
from ..wire import ForwardAccepted, ForwardPropose, ForwardResult, ForwardStatus
from .membership import decode_rejection, encode_rejection
from .operations import MAX_COMMAND_BYTES
from .requests import RequestTable, Waiter

__all__ = ["Forwarding"]

_STATUS_FOR_ERROR: dict[type[DengineError], ForwardStatus] = {
    NotLeader: ForwardStatus.NOT_LEADER,
    NoLeader: ForwardStatus.NO_LEADER,
    Timeout: ForwardStatus.TIMEOUT,
    TooLarge: ForwardStatus.TOO_LARGE,
    Overloaded: ForwardStatus.OVERLOADED,
    Stopped: ForwardStatus.STOPPED,
}
_ERROR_FOR_STATUS = {status: error for error, status in _STATUS_FOR_ERROR.items()}

ProposeLocal = Callable[[bytes, float, Callable[[int, int], object]], Awaitable[bytes]]
AdminLocal = Callable[[bytes, float, Callable[[int, int], object]], Awaitable[bytes]]


class _Forward:
    """A write this follower forwarded to ``leader``, waiting for its outcome.

    ``frame`` is the ``ForwardPropose`` as queued (None once it may have reached a socket);
    ``index``/``term`` the entry the leader made of it, once a ``ForwardAccepted`` said so.
    """

    __slots__ = ("conf", "frame", "index", "leader", "removes_self", "term", "waiter")

    def __init__(self, leader: int, conf: bool = False, removes_self: bool = False) -> None:
        self.leader = leader
        self.conf = conf
        self.removes_self = removes_self
        self.waiter = Waiter()
        self.frame: bytes | None = None
        self.index = 0
        self.term = 0


class Forwarding:
    """Both sides of forwarded writes for one node.

    ``send`` queues a message and returns its frame (None if it could not be sent);
    ``withdraw(dst, frame)`` takes a still-queued frame back (True) or not (False).
    ``leadership()`` is (this node leads, leader id or 0). ``propose_local(command,
    deadline, on_proposed)`` proposes on this node (the leader). ``stopped()`` is true once the
    node's tasks are stopping: no more answers go out.
    """

    def __init__(
        self,
        node_id: int,
        incarnation: int,
        requests: RequestTable,
        *,
        send: Callable[[object], bytes | None],
        withdraw: Callable[[int, bytes], bool],
        leadership: Callable[[], tuple[bool, int]],
        propose_local: ProposeLocal,
        stopped: Callable[[], bool],
        request_timeout_s: float,
        admin_local: AdminLocal | None = None,
    ) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self._requests = requests
        self._send = send
        self._withdraw = withdraw
        self._leadership = leadership
        self._propose_local = propose_local
        self._admin_local = admin_local
        """Carries out a forwarded admin request (``ForwardPropose.conf``: a membership
        change or a leadership transfer, ``runtime/membership.py``) on the leader."""
        self._stopped = stopped
        self._timeout_s = request_timeout_s
        self._forwards: dict[int, _Forward] = {}
        # Forwarded writes the leader took as entry (index, term), by index: settled by what
        # this node applies at that index, whatever becomes of that leader.
        self._entries: dict[int, list[_Forward]] = {}

    def pending(self) -> int:
        """How many writes this node has forwarded and not yet settled."""
        return len(self._forwards)

    # -- follower side ---------------------------------------------------------------------

    async def propose(
        self,
        leader: int,
        command: bytes,
        deadline: float,
        *,
        conf: bool = False,
        removes_self: bool = False,
    ) -> bytes:
        """Forward ``command`` to ``leader``; its result once committed. Raises ``NotLeader``
        (or ``NoLeader``) only when the command certainly was not committed; ``Timeout`` at
        ``deadline`` (trio time, s); ``Stopped`` once the node stops; the leader's error
        otherwise (``MembershipError`` for a refused admin request). ``conf``: ``command`` is
        an admin request (``runtime/membership.py``), not a state machine command;
        ``removes_self``: it removes this node, whose answer the leader's closing link may
        lose, so it also settles once this node learns it was removed (``removed``). The
        caller holds the request's slot (``RequestTable.admit``)."""
        requests = self._requests
        requests.check_open()
        request_id = next(requests.ids)
        forward = _Forward(leader, conf, removes_self)
        self._forwards[request_id] = forward
        forward.frame = self._send(
            ForwardPropose(
                src=self.node_id,
                dst=leader,
                request_id=request_id,
                data=command,
                incarnation=self.incarnation,
                conf=conf,
            )
        )
        try:
            result: bytes = await requests.wait(forward.waiter, deadline, lambda: None)
            return result
        finally:
            self._forwards.pop(request_id, None)
            if forward.index:
                waiting = self._entries.get(forward.index, [])
                if forward in waiting:
                    waiting.remove(forward)
                    if not waiting:
                        del self._entries[forward.index]

    def result(self, message: ForwardResult) -> None:
        """The leader's outcome of a forwarded write: resolve it with ``message.result`` (OK)
        or fail it with the status's ``DengineError`` (``NOT_LEADER``: ``NotLeader``,
        ``TOO_LARGE``: ``TooLarge("command")``, ...). Answers to an earlier incarnation of
        this node, or to a request no longer waiting, are dropped."""
        if message.incarnation != self.incarnation:
            return  # the answer to a request of an earlier process of this node
        forward = self._forwards.get(message.request_id)
        if forward is None:
            return
        if message.status == ForwardStatus.OK:
            forward.waiter.resolve(message.result)
        elif message.status == ForwardStatus.NOT_LEADER:
            forward.waiter.fail(NotLeader(message.leader_id or None))
        elif message.status == ForwardStatus.TOO_LARGE:
            # This node checked the command's size before forwarding it (the one check): only
            # a leader running another version, with a smaller limit, can say so.
            forward.waiter.fail(TooLarge("command", None, MAX_COMMAND_BYTES))
        elif message.status == ForwardStatus.CONF_REJECTED:
            forward.waiter.fail(decode_rejection(message.result))
        else:
            error = _ERROR_FOR_STATUS[message.status]
            forward.waiter.fail(error("forwarded request failed on the leader"))

    def accepted(self, message: ForwardAccepted, applied_index: int) -> None:
        """The leader made a forwarded write entry (``message.index``, ``message.term``):
        from now on this node's own apply of that index settles it (``applied``), even if
        that leader dies. Ignored if ``applied_index`` (this node's) already covers it."""
        if message.incarnation != self.incarnation:
            return
        forward = self._forwards.get(message.request_id)
        if forward is None or forward.waiter.done or message.index <= applied_index:
            return  # (applied already: its ForwardResult carries the result)
        forward.index, forward.term = message.index, message.term
        self._entries.setdefault(message.index, []).append(forward)

    def applied(self, index: int, term: int, result: bytes, leader_id: int) -> None:
        """This node applied entry (``index``, ``term``) with ``result``: forwarded writes
        the leader placed at ``index`` resolve with it if their term matches, else fail with
        ``NotLeader(leader_id or None)`` (overwritten, never committed: Raft paper section
        5.3)."""
        if not self._entries:
            return
        for forward in self._entries.pop(index, ()):
            if forward.term == term:  # committed, by whichever leader
                # A configuration entry's answer is its index (as the leader's would be).
                forward.waiter.resolve(msgpack.packb(index) if forward.conf else result)
            else:  # overwritten: never committed, so it may be sent again
                forward.waiter.fail(NotLeader(leader_id or None))

    def snapshot_installed(self, index: int, term: int, leader_id: int) -> None:
        """A leader's snapshot through entry (``index``, ``term``) replaced this node's
        state: forwarded writes waiting for this node to apply an index it covers stop
        waiting for that. One of a later term than ``term`` was never committed (every entry
        up to ``index`` has a term of at most ``term``): ``NotLeader``, sent again. Any other
        is left to the leader's ``ForwardResult`` or the deadline, as a write this node had
        applied before ``ForwardAccepted`` arrived (``accepted``)."""
        for covered in [i for i in self._entries if i <= index]:
            for forward in self._entries.pop(covered):
                if forward.term > term:
                    forward.waiter.fail(NotLeader(leader_id or None))
        # After the snapshot every entry has a term of at least ``term``: a forward placed
        # there in an older term was overwritten and can never commit.
        for later in [i for i in self._entries if i > index]:
            stale = [f for f in self._entries[later] if f.term < term]
            if not stale:
                continue
            self._entries[later] = [f for f in self._entries[later] if f.term >= term]
            if not self._entries[later]:
                del self._entries[later]
            for forward in stale:
                forward.waiter.fail(NotLeader(leader_id or None))

    def leader_changed(self, leader_id: int) -> None:
        """Leadership moved: forwards to another node whose frame is still in the transport's
        queue certainly never reached it, so they are taken back and fail with ``NotLeader``
        (to go to the next leader). The others may have been taken: they wait."""
        for forward in self._forwards.values():
            frame = forward.frame
            if frame is None or forward.leader == leader_id:
                continue
            forward.frame = None
            if self._withdraw(forward.leader, frame):
                forward.waiter.fail(NotLeader(leader_id or None))

    def dropped(self, dst: int, frames: list[bytes]) -> None:
        """The transport dropped ``frames`` queued for ``dst`` unsent: forwards among them
        certainly never reached it, and fail with ``NotLeader`` (to be sent again)."""
        unsent = {id(frame) for frame in frames}
        for forward in self._forwards.values():
            if forward.frame is not None and forward.leader == dst and id(forward.frame) in unsent:
                forward.frame = None
                forward.waiter.fail(NotLeader(None))

    def removed(self, index: int) -> None:
        """This node learned that a membership committed by ``index`` leaves it out (its
        own log, or a member's refusal at the handshake): a forwarded request to remove it is
        done, answered with its entry's index if the leader named it, else ``index``. The
        leader stops replicating to a removed member and closes its link once the removal
        commits, so its own answer may never arrive."""
        for forward in self._forwards.values():
            if forward.removes_self and not forward.waiter.done:
                forward.waiter.resolve(msgpack.packb(forward.index or index))

    def fail_all(self, error: BaseException) -> None:
        """Fail every pending forwarded write with ``error`` (the node is stopping)."""
        for forward in self._forwards.values():
            forward.waiter.fail(error)
        self._forwards.clear()
        self._entries.clear()

    # -- leader side -----------------------------------------------------------------------

    async def serve(self, message: ForwardPropose, refusing: bool) -> None:
        """Propose a follower's forwarded write here and answer it. ``refusing``: this node
        is stopping and takes no requests (certainly not proposed: NOT_LEADER, so the
        follower may send it on). The write occupies a slot of this node's request table
        while it is pending (beyond them: OVERLOADED)."""
        status, result = ForwardStatus.OK, b""
        is_leader, leader_id = self._leadership()
        admitted = False
        try:
            if not is_leader or refusing:
                raise NotLeader(leader_id or None)
            self._requests.admit()
            admitted = True
            deadline = trio.current_time() + self._timeout_s

            def accepted(index: int, term: int) -> None:
                # Lets the follower settle the request even if this node dies before the
                # entry commits: it knows which entry to watch.
                self._send(
                    ForwardAccepted(
                        src=self.node_id,
                        dst=message.src,
                        request_id=message.request_id,
                        index=index,
                        term=term,
                        incarnation=message.incarnation,
                    )
                )

            if message.conf:
                if self._admin_local is None:
                    raise MembershipError("bad_request", "this node takes no admin requests")
                result = await self._admin_local(message.data, deadline, accepted)
            else:
                result = await self._propose_local(message.data, deadline, accepted)
        except NotLeader:
            status = ForwardStatus.NOT_LEADER
        except MembershipError as exc:
            status, result = ForwardStatus.CONF_REJECTED, encode_rejection(exc)
        except DengineError as exc:
            status = _STATUS_FOR_ERROR.get(type(exc), ForwardStatus.NO_LEADER)
        finally:
            if admitted:
                self._requests.release()
        if not self._stopped():
            self._send(
                ForwardResult(
                    src=self.node_id,
                    dst=message.src,
                    request_id=message.request_id,
                    status=status,
                    leader_id=self._leadership()[1],
                    result=result,
                    incarnation=message.incarnation,
                )
            )
