"""The node's side of membership changes (issue 14): what the runtime does with the
membership the Raft core holds (``raft/membership.py``).

* **Peers follow the membership.** Every ``MembershipChanged`` effect makes the transport's
  peers the members (voters and learners) other than this node, dialed at their addresses
  in the membership; removed members' links and connections are closed. A member
  removed keeps its link until the change commits (its answers may be what commits it). While
  the membership is the implicit bootstrap one (no addresses in it), the addresses come from
  ``initial_cluster``; a joining node that is no member yet also links to the members its
  ``initial_cluster`` lists, to ask them to add it.
* **Cluster id.** A node's id is the one persisted in ``<db_root_dir>/cluster_id``, or ""
  before it knows one (a new cluster before its first leader made the membership explicit,
  a joining or wiped node). The first COMMITTED explicit membership it sees names the
  cluster's id (an uncommitted bootstrap entry can be replaced by another leader's, with
  another id): persisted then (``origin`` ``bootstrap`` on the node that generated it,
  ``learned`` on the others). An explicit membership of ANOTHER id than the persisted one
  is a bug or a mixed-up directory: logged as an error, and the persisted id stays (the
  handshake keeps refusing).
* **Handshake.** A caller is admitted if it is a member, or says it is joining, or this node
  is not a member itself (a joiner, a removed node) and its ``initial_cluster`` lists the
  caller. Otherwise: ``node 4 is not a member of cluster <id> (removed?)`` (one WARNING per
  caller host a minute). Every accepted message connection first tells the core which data
  directory the caller runs on (``PeerIdentity``), before any of its messages.
* **Joining.** A node whose own ``initial_cluster`` entry is ``role = 3`` sends
  ``JoinRequest`` to every member listed, with backoff (0.5 s doubling to 5 s), until it
  sees itself in its membership. The leader proposes ``ADD_LEARNER`` (``promote`` as the
  joiner asked); a follower forwards it to the leader (the joiner's file need not list
  the leader). The new learner then
  catches up (snapshot, then log) and the leader promotes it (core rule 7).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgpack
import trio

from ..config import ROLE_FOLLOWER, _split_address
from ..errors import MembershipError
from ..raft.events import Removed
from ..raft.membership import (
    ConfChange,
    ConfChangeKind,
    Membership,
    address_key,
    canonical_address,
    decode_membership,
    encode_membership,
)
from ..storage.cluster_identity import ClusterIdMismatchError, persist_cluster_id
from ..wire.messages import Hello, JoinRequest

if TYPE_CHECKING:
    from .node import NodeRuntime

__all__ = [
    "JOIN_BACKOFF_MAX_S",
    "JOIN_BACKOFF_MIN_S",
    "ConfChange",
    "ConfChangeKind",
    "MembershipRuntime",
    "decode_admin_request",
    "encode_admin_request",
]

log = logging.getLogger("dengine_trio.node")

JOIN_BACKOFF_MIN_S = 0.5
JOIN_BACKOFF_MAX_S = 5.0
"""A joining node asks the listed members again after this long (s), doubling from the
minimum to the maximum while it is not added."""
JOIN_WARNING_INTERVAL_S = 60.0
"""A leader refusing a node's JoinRequest says why once per joiner and reason this often (s)."""


# ---------------------------------------------------------------------------------------------
# Admin requests forwarded from a follower to the leader (``ForwardPropose(conf=True)``).


def encode_admin_request(change: ConfChange | None, transfer_to: int | None = None) -> bytes:
    """The ``data`` of a forwarded admin request: a ``ConfChange`` (``change``), or a
    leadership transfer (``change`` None; ``transfer_to`` 0 or None: to the most caught-up
    voter). A msgpack map."""
    if change is None:
        return msgpack.packb({"op": "transfer", "to": transfer_to or 0})
    return msgpack.packb(
        {
            "op": "change",
            "kind": int(change.kind),
            "id": change.id,
            "address": change.address,
            "promote": change.promote,
            "uuids": [[i, u] for i, u in change.uuids],
        }
    )


def decode_admin_request(data: bytes) -> tuple[ConfChange | None, int]:
    """``(change, transfer_to)`` from ``encode_admin_request``'s bytes; ``ValueError`` for
    anything else (a peer's garbage must not stop the node)."""
    try:
        fields: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if not isinstance(fields, dict):
            raise TypeError("not a map")
        if fields["op"] == "transfer":
            to = fields["to"]
            if type(to) is not int or to < 0:
                raise TypeError("bad target")
            return None, to
        if fields["op"] != "change":
            raise TypeError("unknown op")
        uuids = tuple((int(i), str(u)) for i, u in fields["uuids"])
        kind, node_id, address = fields["kind"], fields["id"], fields["address"]
        if type(kind) is not int or type(node_id) is not int or type(address) is not str:
            raise TypeError("bad field")
        change = ConfChange(
            kind=ConfChangeKind(kind),
            id=node_id,
            address=address,
            promote=bool(fields["promote"]),
            uuids=uuids,
        )
    except (KeyError, TypeError, ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
        raise ValueError(f"not an admin request: {exc!r}") from None
    except Exception as exc:  # msgpack's own errors for truncated input
        raise ValueError(f"not an admin request: {exc!r}") from None
    return change, 0


def encode_rejection(error: MembershipError) -> bytes:
    """What a ``ForwardResult(CONF_REJECTED)`` carries: the error's code, message, detail."""
    return msgpack.packb({"code": error.code, "message": error.message, "detail": error.detail})


def decode_rejection(data: bytes) -> MembershipError:
    """The ``MembershipError`` ``encode_rejection`` encoded (a garbled one: ``bad_request``)."""
    try:
        fields = msgpack.unpackb(data, raw=False)
        detail = fields.get("detail") or {}
        return MembershipError(str(fields["code"]), str(fields["message"]), dict(detail))
    except Exception:
        return MembershipError("bad_request", "the leader refused the request")


# ---------------------------------------------------------------------------------------------


class MembershipRuntime:
    """The membership as the runtime of ``node`` (a ``NodeRuntime``) carries it out."""

    def __init__(self, node: NodeRuntime) -> None:
        self._node = node
        cfg = node.config
        self.node_id = cfg.cluster.node_id
        self.listed: dict[int, tuple[str, int]] = cfg.peer_addresses()
        """Every node ``initial_cluster`` lists (this one included): id -> (host, port)."""
        self.bootstrap_voters = {
            p.id for p in cfg.cluster.initial_cluster if p.role == ROLE_FOLLOWER
        }
        self.joiner = bool(cfg.joining())
        """This node's own entry is a learner's (``role = 3``): it joins a running cluster."""
        self.promote = bool(cfg.promote_after_join())
        """As a joiner: to be promoted to voter once caught up (False: a read replica)."""
        self.membership: Membership | None = None
        self.index = 0
        self.told_removed: tuple[Membership, int] | None = None
        self._left = False
        """This node was a member and its explicit membership no longer lists it."""
        """A member's refusal said the membership it committed by this index (shown) leaves
        this node out, and this node's own log has nothing that new (``told``)."""
        self._join_refusals: dict[tuple[int, str], float] = {}
        self._joins_in_flight: set[int] = set()
        self._joined = trio.Event()

    # -- state -----------------------------------------------------------------------------

    def is_member(self) -> bool:
        """This node is in its membership (voter or learner)."""
        m = self.membership
        return m is not None and m.get(self.node_id) is not None

    def peer_addresses(self) -> dict[int, tuple[str, int]]:
        """Who the transport links to: the members but this node, at their addresses (from
        ``initial_cluster`` for the implicit membership, or a member with no address); plus,
        while this node joins and is no member, the members its ``initial_cluster`` lists."""
        peers: dict[int, tuple[str, int]] = {}
        for m in (self.membership, self._committed()):
            for member in m.members if m is not None else ():
                if member.id == self.node_id or member.id in peers:
                    continue
                address = self._address(member.id, member.address)
                if address is not None:
                    peers[member.id] = address
        if self.joiner and not self.is_member():
            for node_id, address in self.listed.items():
                if node_id != self.node_id and node_id in self.bootstrap_voters:
                    peers.setdefault(node_id, address)
        return peers

    def _committed(self) -> Membership | None:
        """The membership of the newest committed configuration: a member removed by an
        entry not committed yet keeps its link, since that entry needs its leader's messages
        answered (a leader removing itself commits the change with the others' answers)."""
        raft = self._node.raft
        if raft is None:
            return None
        return raft.membership_at(max(raft.commit_index, raft.snapshot_index))

    def removed(self) -> bool:
        """This node was removed from its cluster: its log's explicit membership no longer
        lists it (it was a member), or a member told it so at the handshake. It serves
        nothing (``EmbeddedEngine.removed``)."""
        return self._left or self.told_removed is not None

    def _say_removed(self, cluster_id: str, by: str) -> None:
        log.warning(
            "node %d: removed from cluster %s by %s; it takes no further part (the members "
            "refuse it): stop this process. To bring the node back, start it with an empty "
            "data directory as a joining node (docs/operations.md)",
            self.node_id,
            cluster_id,
            by,
        )

    def committed(self) -> None:
        """A configuration entry was applied: links to members it removed close now, and a
        cluster id it names is this node's from now on; if it removed this node, a forwarded
        request to remove it is answered (its leader may never answer it)."""
        self._learn_committed_id()
        committed = self._committed()
        raft = self._node.raft
        if (
            committed is not None
            and raft is not None
            and not committed.implicit
            and committed.get(self.node_id) is None
        ):
            self._node.forwarding.removed(raft.commit_index)
        transport = self._node.transport
        if transport is not None:
            transport.set_peers(self.peer_addresses())

    def _address(self, node_id: int, address: str) -> tuple[str, int] | None:
        if address:
            try:
                return _split_address(address)
            except ValueError:
                log.error("node %d: member %d has a malformed address %r", self.node_id,
                          node_id, address)  # fmt: skip
                return None
        return self.listed.get(node_id)

    # -- the core's effect -----------------------------------------------------------------

    def changed(self, membership: Membership, index: int) -> None:
        """``MembershipChanged``: links follow the members, a newly learned cluster id is
        persisted (in the calling task: a few hundred bytes, fsynced, once per cluster)."""
        first = self.membership is None
        was_member = self.is_member()
        self.membership, self.index = membership, index
        if self.is_member() or membership.implicit:
            self._left = False
        elif was_member or (first and not self.joiner):
            # (A restart of a removed node: a non-joiner outside an explicit membership.)
            self._left = True
        if was_member and not self.is_member() and not membership.implicit:
            # (A truncation can take the change back: the line says what the log says now.)
            self._say_removed(membership.cluster_id, f"the configuration entry at index {index}")
        if self.told_removed is not None and self.told_removed[1] <= index:
            self.told_removed = None  # our own log is as new now: it says what we are
        node = self._node
        node.metrics.membership_changed(len(membership.voters), len(membership.learners))
        self._learn_committed_id()
        transport = node.transport
        if transport is not None:
            transport.set_peers(self.peer_addresses())
            transport.joining = self.joiner and not self.is_member()
        if self.is_member():
            self._joined.set()
        if not first:
            log.info(
                "node %d: membership at index %d: %s",
                self.node_id,
                index,
                describe(membership),
            )
        node.notify_state_change()

    def _learn_committed_id(self) -> None:
        # Only a COMMITTED membership names the cluster: an uncommitted bootstrap entry can
        # be truncated and replaced by another leader's, with another random id.
        m = self._committed()
        if m is not None and m.cluster_id and m.cluster_id != self._node.cluster_id:
            self._learn_cluster_id(m.cluster_id)

    def _learn_cluster_id(self, cluster_id: str) -> None:
        node = self._node
        origin = "bootstrap" if cluster_id == node.bootstrap_cluster_id else "learned"
        try:
            if persist_cluster_id(node.config.db_root_path(), cluster_id, origin=origin):
                log.info("node %d: cluster id %s (%s)", self.node_id, cluster_id, origin)
        except ClusterIdMismatchError as exc:
            # The directory belongs to another cluster than the log says: keep the file's id
            # (the handshake goes on refusing the others) and say it.
            log.error("node %d: %s; keeping the persisted id", self.node_id, exc)
            return
        node.set_cluster_id(cluster_id)

    # -- handshake -------------------------------------------------------------------------

    def admit(self, hello: Hello) -> str:
        """Why the transport refuses ``hello`` by membership, or "" to admit it."""
        m = self.membership
        if m is None or m.implicit:
            # Not started yet, or this node knows no explicit membership: its file's list
            # is no authority (a wiped node whose file predates the members leading now);
            # the cluster id was checked, and the core's rules decide what the caller may do.
            return ""
        if m.get(hello.src) is not None or hello.joining:
            return ""
        if not self.is_member() and hello.src in self.listed:
            return ""  # this node joins (or was removed): the cluster it was given talks to it
        cluster = m.cluster_id or "(implicit)"
        return f"node {hello.src} is not a member of cluster {cluster} (removed?)"

    def removal(self, hello: Hello) -> tuple[int, bytes] | None:
        """For a caller ``admit`` refuses: (commit index, committed membership bytes) if
        it names this node's cluster and that membership leaves it out (a removed member,
        told so in the refusal as etcd does), else None."""
        committed = self._committed()
        raft = self._node.raft
        if committed is None or raft is None or committed.implicit or hello.joining:
            return None
        if not committed.cluster_id or hello.cluster_id != committed.cluster_id:
            return None
        if committed.get(hello.src) is not None or self.admit(hello) == "":
            return None
        return max(raft.commit_index, raft.snapshot_index), encode_membership(committed)

    def told(self, peer: int, index: int, data: bytes) -> None:
        """``peer`` refused our link saying its membership committed by ``index`` (bytes
        ``data``) leaves us out. Believed only from a member of our own membership that names
        our cluster, and only if our log holds no membership that new; then this node goes
        passive (``raft.Removed``: no campaign, no vote) and answers a forwarded request to
        remove it. A false claim costs this node's liveness only, never safety (passivity
        is always safe; docs/architecture.md)."""
        m = self.membership
        node = self._node
        if m is None or m.implicit or m.get(peer) is None or index < self.index:
            return
        if self.told_removed is not None and self.told_removed[1] >= index:
            return
        try:
            told = decode_membership(data)
        except ValueError:
            return
        if not told.cluster_id or told.cluster_id != node.cluster_id:
            return
        if told.get(self.node_id) is not None:
            return
        if not self.is_member():
            # Our log holds our removal already: the refusal says it is committed, which our
            # leader, no longer replicating to us, may never tell us. Until then the core
            # still campaigns (thesis §4.2.2, ``RaftNode._may_campaign``): tell it too.
            if node.driver is not None:
                node.driver.receive(Removed(index))
                node.driver.step_now()
            node.forwarding.removed(index)
            return
        first = self.told_removed is None
        self.told_removed = (told, index)
        if first:  # once: the refusals repeat every second with a growing commit index
            self._say_removed(told.cluster_id, f"a configuration committed by index {index} "
                              f"(node {peer} says so)")  # fmt: skip
        if node.driver is not None:
            node.driver.receive(Removed(index))
            node.driver.step_now()
        node.forwarding.removed(index)

    # -- joining ---------------------------------------------------------------------------

    async def join(self) -> None:
        """Ask the listed members to add this node until it is a member (a task of the
        node's nursery while ``joiner``)."""
        if not self.joiner:
            return
        node = self._node
        backoff = JOIN_BACKOFF_MIN_S
        announced = False
        while not self.is_member() and not node.stopped:
            transport = node.transport
            if transport is not None and node.uuid:
                if not announced:
                    log.info(
                        "node %d: not a member yet; asking nodes %s to add it as a learner%s",
                        self.node_id,
                        ", ".join(str(i) for i in sorted(transport.peers)),
                        " (promoted once caught up)" if self.promote else " (read replica)",
                    )
                    announced = True
                own = node.config.own_member()
                for peer in sorted(transport.peers):
                    node.send(
                        JoinRequest(
                            src=self.node_id,
                            dst=peer,
                            id=self.node_id,
                            address=canonical_address(own.address),
                            uuid=node.uuid,
                            promote=self.promote,
                        )
                    )
            with trio.move_on_after(backoff):
                await self._joined.wait()
            backoff = min(backoff * 2, JOIN_BACKOFF_MAX_S)
        if announced and self.is_member():
            log.info("node %d: added to cluster %s", self.node_id, node.cluster_id)

    def join_requested(self, request: JoinRequest) -> None:
        """A node asks to join: ``ADD_LEARNER`` is proposed here if this node leads, else
        forwarded to the leader like any change (the joiner's file need not list the
        leader). One request per joiner at a time on this node; a joiner already a member at
        that address is left alone."""
        node = self._node
        raft = node.raft
        m = self.membership
        if raft is None or m is None or m.implicit or request.id != request.src:
            return
        if not raft.leader_id or request.id in self._joins_in_flight:
            return
        existing = m.get(request.id)
        if existing is not None and address_key(existing.address) == address_key(request.address):
            return  # added already (its join loop has not heard yet)
        change = ConfChange(
            kind=ConfChangeKind.ADD_LEARNER,
            id=request.id,
            address=request.address,
            promote=request.promote,
            # Bound at once to the directory that asked (else a BIND follows its first
            # connection to the leader).
            uuids=((request.id, request.uuid),) if request.uuid else (),
        )
        self._joins_in_flight.add(request.id)
        node.propose_change_quietly(
            change,
            on_rejected=self._join_refused,
            on_done=lambda: self._joins_in_flight.discard(request.id),
        )

    def _join_refused(self, change: ConfChange, error: MembershipError) -> None:
        if error.code == "pending":
            return  # another change first: the joiner asks again
        m = self.membership
        existing = m.get(change.id) if m is not None else None
        if existing is not None and address_key(existing.address) == address_key(change.address):
            return  # another member's forward of the same request got there first
        key = (change.id, error.code)
        now = trio.current_time()
        if now - self._join_refusals.get(key, -JOIN_WARNING_INTERVAL_S) < JOIN_WARNING_INTERVAL_S:
            return
        self._join_refusals[key] = now
        log.warning(
            "node %d: refused node %d's request to join at %s: %s",
            self.node_id,
            change.id,
            change.address,
            error.message,
        )

    # -- the admin API's answers -----------------------------------------------------------

    def members(self) -> dict[str, Any]:
        """``GET /members``: ``{"leader_id", "cluster_id", "index", "members": [{"id",
        "address", "voter", "promote", "bound", "match_index", "heard_ms_ago", "active"}]}``;
        the last three are the leader's view (None on any other node): ``match_index`` (the
        leader's own last index for itself), ``heard_ms_ago`` (ms since the member last
        answered the leader, 0 for the leader, None if never) and ``active`` (the member
        counts in a quorum now: what a ``quorum_at_risk`` refusal is decided by)."""
        node = self._node
        raft = node.raft
        m = self.membership
        index = self.index
        if self.told_removed is not None:
            m, index = self.told_removed  # newer than our log: what the cluster committed
        members: list[dict[str, Any]] = []
        progress = raft.progress if raft is not None and raft.is_leader else None
        contact = raft.member_contact() if progress is not None and raft is not None else {}
        for member in m.members if m is not None else ():
            match: int | None = None
            if progress is not None:
                if member.id == self.node_id and raft is not None:
                    match = raft.log.last_index
                elif member.id in progress:
                    match = progress[member.id].match_index
            address = member.address or self.listed_address(member.id)
            heard_ms_ago, active = contact.get(member.id, (None, None))
            members.append(
                {
                    "id": member.id,
                    "address": address,
                    "voter": member.voter,
                    "promote": member.promote,
                    "bound": bool(member.uuid),
                    "match_index": match,
                    "heard_ms_ago": heard_ms_ago,
                    "active": active,
                }
            )
        return {
            "leader_id": (raft.leader_id or None) if raft is not None else None,
            "cluster_id": node.cluster_id,
            "index": index,
            "members": members,
        }

    def listed_address(self, node_id: int) -> str:
        """``node_id``'s address in this node's ``initial_cluster`` ("host:port"), "" if
        the file does not list it."""
        address = {p.id: p.address for p in self._node.config.cluster.initial_cluster}
        return address.get(node_id, "")


def describe(m: Membership) -> str:
    """``voters 1,2,3 learners 4 (cluster X)`` for a log line."""
    voters = ",".join(str(i) for i in m.voters) or "none"
    learners = ",".join(str(i) for i in m.learners)
    text = f"voters {voters}"
    if learners:
        text += f", learners {learners}"
    return f"{text} (cluster {m.cluster_id or 'implicit'})"
