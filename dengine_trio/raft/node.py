"""The Raft rules: ``RaftNode.step(now_ms, event) -> list[Effect]``.

A pure state machine in the sans-IO style of h11 and etcd's raft: it never reads a clock, never
sleeps, never touches a socket or a file, and draws randomness only from the source its caller
passes in. Section numbers refer to the Raft paper (Ongaro & Ousterhout, 2014); "thesis" to
Ongaro's dissertation (2014), which describes PreVote, CheckQuorum, the lease and transfers.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .config import Durability, RaftConfig
from .effects import (
    Apply,
    ConfChangeRejected,
    Effect,
    MembershipChanged,
    PersistEntries,
    PersistHardState,
    ProposalRejected,
    Proposed,
    ReadFailed,
    ReadReady,
    RestoreSnapshot,
    RoleChanged,
    Send,
)
from .events import (
    Event,
    PeerIdentity,
    Persisted,
    Propose,
    ProposeConfChange,
    ReadRequest,
    Receive,
    Removed,
    SnapshotStatus,
    SnapshotTaken,
    Tick,
    TransferLeader,
)
from .log import RaftLog
from .membership import (
    ConfChange,
    ConfChangeError,
    ConfChangeKind,
    Member,
    Membership,
    decode_membership,
    encode_membership,
    implicit_membership,
)
from .messages import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from .progress import Progress, ProgressState
from .reads import HeldRead, PendingRead
from .state import NEVER, CandidateState, FollowerState, LeaderState, Role, RoleState
from .tracker import Tracker, VoteResult


class RandomSource(Protocol):
    """Anything with ``uniform``, e.g. ``random.Random(seed)``: the caller owns the seed."""

    def uniform(self, a: float, b: float) -> float:
        """A number drawn uniformly from [a, b] (election timeouts, ms)."""
        ...


def _well_formed(m: AppendEntries) -> bool:
    """Entries start right after ``prev_log_index``, span exactly their count, and carry terms
    no newer than the sender's. (Checked at the ends only: the per-entry walk would cost the
    hot path, and peers are authenticated members running this code.)"""
    entries = m.entries
    if m.prev_log_index < 0 or m.leader_commit < 0:
        return False
    if not entries:
        return True
    first, last = entries[0], entries[-1]
    return (
        first.index == m.prev_log_index + 1
        and last.index == m.prev_log_index + len(entries)
        and m.prev_log_term <= first.term
        and first.term <= last.term <= m.term
    )


def _well_formed_snapshot(m: InstallSnapshot) -> bool:
    """A snapshot's last entry is a real entry (or none at all) of a term no newer than the
    sender's."""
    if m.last_index < 0 or m.last_term < 0 or (m.last_index == 0) != (m.last_term == 0):
        return False
    return m.last_term <= m.term


class RaftNode:
    """One Raft server (§5; PreVote, CheckQuorum, ReadIndex, the lease and leadership
    transfer from the thesis), as a pure state machine: ``step(now_ms, event)`` returns the
    effects to carry out, in order. Times are milliseconds of the caller's monotonic clock,
    never decreasing. Public attributes (``term``, ``voted_for``, ``role``, ``leader_id``,
    ``commit_index``, ``durable_index``, ``log``, ``snapshot_index``, ``snapshot_term``) are
    read-only to callers."""

    def __init__(
        self,
        config: RaftConfig,
        rng: RandomSource,
        *,
        term: int = 0,
        voted_for: int = 0,
        entries: Iterable[Entry] = (),
        now_ms: float = 0.0,
        snapshot_index: int = 0,
        snapshot_term: int = 0,
        membership: Membership | None = None,
        membership_index: int = 0,
        uuid: str = "",
        bootstrap_cluster_id: str = "",
    ) -> None:
        """Start (or restart) a node from what storage recovered: hard state, the newest
        snapshot's (``snapshot_index``, ``snapshot_term``) (0, 0 for none; the runtime has
        restored the state machine from it) and the log ``entries`` after it.

        ``membership``: the membership of the snapshot (or of a joining node: an empty one,
        ``Membership("", ())``), in effect as of ``membership_index``; None means the implicit
        membership of ``config.voters``. CONFIG entries among ``entries`` after
        ``membership_index`` take effect over it, as they did when appended. ``uuid``: this
        node's data-directory uuid (what a membership binds it to). ``bootstrap_cluster_id``:
        the cluster id this node writes into the bootstrap entry if it leads while the
        membership is implicit; "" never makes one (the membership stays implicit: what the
        simulator and the transcripts use unless they ask for membership changes).

        Everything recovered is durable by definition, so ``durable_index`` starts at the end;
        a snapshot covers only committed entries (§7), so the commit index starts at it.
        Raises ``ValueError`` if the entries do not run on from ``snapshot_index + 1`` or
        ``term`` is older than ``snapshot_term``.
        """
        if term < snapshot_term:
            raise ValueError(f"term {term} is older than the snapshot's term {snapshot_term}")
        self.config = config
        self.id = config.node_id
        self.uuid = uuid
        self._bootstrap_cluster_id = bootstrap_cluster_id
        self._rng = rng
        self._mem_first = config.durability is Durability.MEM_FIRST

        self.term = term
        self.voted_for = voted_for
        self.log = RaftLog(entries, snapshot_index=snapshot_index, snapshot_term=snapshot_term)
        self.durable_index = self.log.last_index
        self.commit_index = snapshot_index
        self._applied_emitted = snapshot_index
        # The newest snapshot this node has (taken or installed); the log's offset may lag it
        # (``retained_log_entries`` keeps some entries a snapshot covers).
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term

        # Every membership the node's log can still take back, oldest first: the base (from
        # the snapshot or the caller) and one per CONFIG entry after it. The last is in effect
        # (thesis §4.1: a configuration is used as soon as it is in the log).
        base = membership if membership is not None else implicit_membership(config.voters)
        self._configs: list[tuple[int, Membership]] = [(membership_index, base)]
        for entry in self.log.slice(self.log.first_index, self.log.last_index):
            if entry.kind is EntryKind.CONFIG and entry.index > membership_index:
                self._record_config(entry)
        self.membership_index, self.membership = self._configs[-1]
        self._vote_floor = self._bound_since_term()
        self._self_voter = self._campaigns = False
        self._campaigns_until = 0
        # A member's claim that a membership of index > ours leaves us out (``Removed``).
        self._removed_at = 0
        self._cache_self()
        # The data-directory uuid each peer last said it runs on (``PeerIdentity``).
        self._peer_uuids: dict[int, str] = {}

        self.role = Role.FOLLOWER
        self.leader_id = 0
        self.now = now_ms
        self._out: list[Effect] = []
        self._announced: tuple[Role, int, int] | None = None

        self._election_deadline = NEVER
        self._last_leader_contact = float("-inf")
        self._reset_election_timer()
        # Thesis §6.4 (and etcd raft): a node that restarts with durable state may have
        # acknowledged a leader's heartbeat rounds just before it went down, and so promised
        # to ignore campaigns for an election timeout; that promise lived in memory. It keeps
        # it by granting no votes or PreVotes for the minimum election timeout after boot. A
        # brand-new node (term 0, empty log) has promised nothing and votes at once.
        restarted = term > 0 or self.log.last_index > 0
        self._votes_quiet_until = (
            now_ms + config.election_timeout_min_ms if restarted else float("-inf")
        )

        # The state of the current role in the current term (``state.py``): replaced whole
        # by ``_change_state`` on every role or term change, never reset field by field.
        self._state: RoleState = FollowerState()
        self._round_open = False  # a heartbeat round was started during this step
        # Proposals appended in this step and not yet handed out as one PersistEntries.
        self._proposed: list[Entry] = []
        # The leader's quorum changed in this step (membership, an uncounted voter): CheckQuorum
        # is checked again at its end, so a leader has quorum contact at every step boundary.
        self._quorum_changed = False
        # Is there anything ``_maybe_auto_change`` could propose (a learner to promote, a
        # member to rebind)? Recomputed when the membership or a peer's uuid changes, so the
        # leader's every step does not walk the members for nothing.
        self._auto_change_due = False
        self._update_auto_change_due()

    # ------------------------------------------------------------------ driving the node

    def step(self, now_ms: float, event: Event) -> list[Effect]:
        """Consume one event at time ``now_ms`` (ms of the caller's monotonic clock; a time
        earlier than the last one is taken as the last one) and return the effects, in the
        order to carry out (``effects.py`` says which must complete before the next). Raises
        ``TypeError`` for an object that is not an ``Event``; never raises for a message's
        content (a malformed or stale message is ignored or answered). Raises ``ValueError``
        for a ``SnapshotTaken`` the log contradicts (see there), before changing anything."""
        return self.step_many(now_ms, (event,))

    def step_many(self, now_ms: float, events: Iterable[Event]) -> list[Effect]:
        """Consume several events at once, as ``step`` does, so that one AppendEntries per
        follower carries all the proposals among them and their entries become one
        ``PersistEntries`` (batching)."""
        if not isinstance(events, (tuple, list)):
            events = tuple(events)
        for event in events:
            if type(event) is SnapshotTaken:
                # A runtime bug, not a peer's input: refuse it before anything of this step
                # happens, so no effect of an earlier event is left behind half-returned.
                self._check_snapshot_taken(event)
        self.now = max(self.now, now_ms)
        self._round_open = False
        self._check_quorum()
        for event in events:
            if self._proposed and type(event) is not Propose:
                # Any other event may write the log itself (a new leader's entries, say):
                # the proposals' write goes first, so the storage sees the log's own order.
                self._persist_proposed()
            self._dispatch(event)
        self._persist_proposed()
        self._end_step()
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float:
        """When (ms, the caller's clock) the node next needs a ``Tick``: election deadline,
        heartbeat, CheckQuorum, transfer timeout, commit notice or a forwarded read's expiry;
        ``float("inf")`` if none. The runtime may sleep until then, or tick earlier."""
        state = self._state
        if isinstance(state, LeaderState):
            return min(
                state.next_heartbeat_ms,
                self._quorum_contact_deadline(),
                state.transfer_deadline_ms,
                state.commit_notify_at_ms,
            )
        deadline = self._election_deadline
        if isinstance(state, FollowerState) and state.forwarded_reads:
            deadline = min(deadline, min(state.forwarded_reads.values()) + self._read_expiry_ms)
        return deadline

    # ------------------------------------------------------------------ introspection

    @property
    def peers(self) -> tuple[int, ...]:
        """The other voters of the membership in effect (whom a campaign asks)."""
        return tuple(v for v in self.membership.voters if v != self.id)

    @property
    def pending_conf_index(self) -> int:
        """Index of the newest CONFIG entry if it is not committed yet, else 0 (thesis §4.1:
        at most one change is uncommitted at a time)."""
        index = self._configs[-1][0]
        return index if index > self.commit_index else 0

    def membership_at(self, index: int) -> Membership:
        """The membership in effect at log position ``index`` (that of the newest CONFIG entry
        or snapshot at or before it): what a snapshot through ``index`` records. Raises
        ``ValueError`` for an index before this node's newest snapshot (forgotten)."""
        if index < self.snapshot_index:
            raise ValueError(f"membership at {index}: before the snapshot at {self.snapshot_index}")
        found = self._configs[0][1]
        for config_index, membership in self._configs:
            if config_index > index:
                break
            found = membership
        return found

    @property
    def progress(self) -> dict[int, Progress]:
        """Leader only (empty otherwise): what it knows of each other member's log (voters
        and learners), node id -> ``Progress`` (§5.3, Figure 2's nextIndex/matchIndex).
        Read-only to callers."""
        state = self._state
        return state.tracker.progress if isinstance(state, LeaderState) else {}

    @property
    def _leader(self) -> LeaderState:
        """The leader's state; only while the role is LEADER."""
        state = self._state
        assert isinstance(state, LeaderState), "leader state outside the leader role"
        return state

    @property
    def _candidate(self) -> CandidateState:
        """The campaign's state; only while PRE_CANDIDATE or CANDIDATE."""
        state = self._state
        assert isinstance(state, CandidateState), "candidate state outside a campaign"
        return state

    @property
    def _follower(self) -> FollowerState:
        """The follower's facts about its leader; only while FOLLOWER."""
        state = self._state
        assert isinstance(state, FollowerState), "follower state outside the follower role"
        return state

    @property
    def is_leader(self) -> bool:
        """Does this node believe it leads its term? (A deposed leader may not know yet; a
        read needs ReadIndex or a lease to be sure, thesis §6.4.)"""
        return self.role is Role.LEADER

    def has_quorum_contact(self, now_ms: float) -> bool:
        """Leader only: has a majority (self included) been heard from within the minimum
        election timeout (ms)? This is what a load balancer's /primary check should mean; with
        ``check_quorum`` on, a leader steps down the moment it stops being true (thesis §6.2),
        so a leader answers True at every step boundary."""
        if self.role is not Role.LEADER:
            return False
        return now_ms - self._quorum_contact_ms() < self.config.election_timeout_min_ms

    def leader_contact_within(self, now_ms: float, window_ms: float) -> bool:
        """Is this a follower that heard from its leader less than ``window_ms`` (ms) before
        ``now_ms``? (For bounded-staleness reads served by a follower.)"""
        return self.role is Role.FOLLOWER and (
            self.leader_id != 0 and now_ms - self._last_leader_contact < window_ms
        )

    def lease_valid(self, now_ms: float) -> bool:
        """May a lease read be served locally at ``now_ms`` (ms)? (thesis §6.4.1)

        Only while every promise the lease relies on is in force: CheckQuorum is on (without
        it voters are not sticky, §4.2.3, and acknowledging a round promises nothing); a
        majority acknowledged a round sent less than ``lease_duration_ms`` ago that was not
        sent during a transfer; the previous leader's lease has run out; no TimeoutNow went
        out in this term; and an entry of this term is committed. Otherwise a lease read
        falls back to ReadIndex, which is linearizable without any clock assumption."""
        return (
            self.config.check_quorum
            and isinstance(leader := self._state, LeaderState)
            and now_ms < leader.reads.lease_expiry
            # A new leader waits out an election timeout: until then the previous leader's
            # lease may still be running on its own clock.
            and now_ms >= leader.since_ms + self.config.election_timeout_min_ms
            and leader.transfer_target == 0
            and not leader.timeout_now_sent
            and self._committed_in_term()
        )

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Receive):
            self._receive(event.message)
        elif isinstance(event, Propose):
            self._on_propose(event)
        elif isinstance(event, Tick):
            self._on_tick()
        elif isinstance(event, Persisted):
            self._on_persisted(event)
        elif isinstance(event, ReadRequest):
            self._on_read_request(event)
        elif isinstance(event, TransferLeader):
            self._on_transfer_leader(event)
        elif isinstance(event, SnapshotTaken):
            self._on_snapshot_taken(event)
        elif isinstance(event, SnapshotStatus):
            self._on_snapshot_status(event)
        elif isinstance(event, ProposeConfChange):
            self._on_propose_conf_change(event)
        elif isinstance(event, PeerIdentity):
            self._on_peer_identity(event)
        elif isinstance(event, Removed):
            self._on_removed(event)
        else:  # pragma: no cover - exhaustive over Event
            raise TypeError(f"unknown event {event!r}")

    def _send(self, message: Message) -> None:
        self._out.append(Send(message))

    # ------------------------------------------------------------------ time

    def _reset_election_timer(self) -> None:
        if not self._may_campaign():
            # Learners, removed nodes, joiners and unbound voters never start an election
            # (thesis §4.2.1 for learners; the amnesia rule for unbound voters): no timer.
            self._election_deadline = NEVER
            return
        cfg = self.config
        timeout = self._rng.uniform(cfg.election_timeout_min_ms, cfg.election_timeout_max_ms)
        self._election_deadline = self.now + timeout

    @property
    def _read_expiry_ms(self) -> float:
        return 2 * self.config.election_timeout_max_ms

    def _on_tick(self) -> None:
        now = self.now
        state = self._state
        if isinstance(state, FollowerState) and state.forwarded_reads:
            # The leader may never answer (message lost, leader crashed): give up eventually so
            # the request does not linger here forever; the client sees a failure and retries.
            forwarded = state.forwarded_reads
            expired = [r for r, t in forwarded.items() if now - t >= self._read_expiry_ms]
            for request_id in expired:
                del forwarded[request_id]
                self._out.append(ReadFailed(request_id, self.leader_id))
        if isinstance(state, LeaderState):
            if now >= state.transfer_deadline_ms:
                # Transfer timed out: keep leading (thesis §3.10), unless we are no longer a
                # voter (``_maybe_hand_over`` then steps down).
                state.transfer_target = 0
                state.transfer_deadline_ms = NEVER
            if now >= state.next_heartbeat_ms:
                self._broadcast_heartbeat()
            if now >= state.commit_notify_at_ms:
                self._notify_commit()
        elif now >= self._election_deadline:
            self._campaign(pre_vote=self.config.pre_vote)

    def _check_quorum(self) -> None:
        """CheckQuorum (thesis §6.2), checked at the start of every step rather than once a
        period: a leader steps down (and its lease goes) as soon as it has not heard from a
        majority for the minimum election timeout, so ``has_quorum_contact`` holds for a leader
        at every step, and a partitioned leader stops serving after exactly one timeout."""
        if self.role is Role.LEADER and self.now >= self._quorum_contact_deadline():
            self._become_follower(self.term, 0)

    def _quorum_contact_ms(self) -> float:
        """The latest time by which a majority (self included, heard "now") had been heard
        from: the majority-th most recent contact. Votes count as contact at the win."""
        return self._leader.tracker.quorum_contact_ms(self.now)

    def _quorum_contact_deadline(self) -> float:
        if not self.config.check_quorum or self.role is not Role.LEADER:
            return NEVER
        return self._quorum_contact_ms() + self.config.election_timeout_min_ms

    # ------------------------------------------------------------------ role transitions

    def _persist_hard_state(self) -> None:
        self._out.append(PersistHardState(self.term, self.voted_for))

    def _change_state(self, role: Role, term: int, leader_id: int) -> None:
        """The one place the role or the term changes (Figure 2, "Rules for all servers").

        Whatever belonged to the old role or the old term goes, whoever caused the change (a
        message, our own campaign, CheckQuorum): the match we reported to a leader, votes
        counted, progress, heartbeat rounds, the lease, a pending transfer, waiting reads.
        Keeping any of it across a term change lets one leader's facts be used by another's
        (issue 11 item 6: a match reported to the old leader committed an entry of the new).
        """
        if term != self.term or role is not self.role:
            self._drop_role_state()
            self._state = self._new_role_state(role)
        if term != self.term:
            self.term = term
            self.voted_for = 0
            self._persist_hard_state()
        self.role = role
        self.leader_id = leader_id

    def _new_role_state(self, role: Role) -> RoleState:
        ms = self.membership
        if role is Role.LEADER:
            tracker = Tracker(self.id, ms.voters, ms.learners, self._departing())
            return LeaderState(tracker, since_ms=self.now)
        if role is Role.FOLLOWER:
            return FollowerState()
        return CandidateState(Tracker(self.id, ms.voters, ms.learners))

    def _drop_role_state(self) -> None:
        """Reads waiting in the old role's state can no longer be answered by this node in
        its new role or term: fail them so the client retries (at the new leader, if known).
        Everything else of the old state goes with the object."""
        state = self._state
        if isinstance(state, LeaderState):
            self._fail_leader_reads(state)
        elif isinstance(state, FollowerState):
            for request_id in state.forwarded_reads:
                self._out.append(ReadFailed(request_id, 0))

    def _become_follower(self, term: int, leader_id: int) -> None:
        self._change_state(Role.FOLLOWER, term, leader_id)
        self._reset_election_timer()

    def _campaign(self, *, pre_vote: bool, transfer: bool = False) -> None:
        """Start an election (§5.2), first as a pre-candidate when PreVote is on (thesis §9.6):
        a pre-vote asks "would you vote for me?" without bumping anybody's term, so a node
        that cannot win (stale log, partitioned) never disrupts the cluster."""
        if self.role is Role.LEADER:
            return
        if not self._may_campaign():
            self._election_deadline = NEVER  # e.g. the entry that removed us has committed
            return
        if pre_vote:
            self._change_state(Role.PRE_CANDIDATE, self.term, 0)
            campaign_term = self.term + 1
        else:
            self._change_state(Role.CANDIDATE, self.term + 1, 0)
            self.voted_for = self.id
            self._persist_hard_state()
            campaign_term = self.term
        self._reset_election_timer()
        votes = self._candidate.tracker.start_votes(unanimous=self._bootstrap_election())
        if votes is VoteResult.WON:  # a single-node cluster
            self._won_votes()
            return
        ms = self.membership
        explicit = not ms.implicit
        for peer in self.peers:
            member = ms.get(peer)
            self._send(
                RequestVote(
                    term=campaign_term,
                    src=self.id,
                    dst=peer,
                    last_log_index=self.log.last_index,
                    last_log_term=self.log.last_term,
                    pre_vote=pre_vote,
                    transfer=transfer,
                    explicit=explicit,
                    dst_uuid=member.uuid if explicit and member is not None else "",
                )
            )

    def _bootstrap_election(self) -> bool:
        """Is our campaign a bootstrap election, to be won only with every voter's grant?

        Yes with a cluster id (the runtime's; a simulator or transcript schedule with one),
        an implicit membership and a log that holds nothing but no-ops, no snapshot. An
        empty data directory looks the same whether it is new or wiped, and so does one that
        holds only a first leader's no-op (its bootstrap entry, the next entry, never
        arrived): such nodes cannot tell a brand-new cluster from a running one whose
        bootstrap entry and writes a majority holds, so a majority of them must not elect
        (a wiped majority, or a wiped voter and one that missed the bootstrap entry,
        would start a second cluster). Every voter of the implicit membership is asked, and
        a node holding the bootstrap entry refuses (explicit, it ignores implicit
        candidates), as does one holding any other entry (§5.4.1). The price: a brand-new
        cluster elects only once every initial member is up (rqlite's
        ``-bootstrap-expect`` of all of them). A log with a command is an implicit cluster
        from before issue 14, which keeps the majority rule (docs/architecture.md,
        "Membership changes in the core", rule 9)."""
        if not self._bootstrap_cluster_id or not self.membership.implicit:
            return False
        log = self.log
        if log.snapshot_index:
            return False
        # Stops at the first command: cheap on the long log of a cluster from before issue 14.
        return all(log.entry(i).kind is EntryKind.NOOP for i in range(1, log.last_index + 1))

    def _won_votes(self) -> None:
        if self.role is Role.PRE_CANDIDATE:
            self._campaign(pre_vote=False)
        elif self.role is Role.CANDIDATE:
            self._become_leader()

    def _become_leader(self) -> None:
        voters = self._candidate.tracker.granted_voters()
        self._change_state(Role.LEADER, self.term, self.id)
        leader = self._leader
        leader.tracker.start_progress(self.log.last_index + 1)
        self._refresh_uncounted()
        for peer in voters:
            if peer in self.progress:
                # The votes that made us leader count as contact at the win (however long
                # the campaign took): CheckQuorum gives a new leader one election timeout to
                # hear from a majority, as etcd raft does.
                self.progress[peer].last_contact_ms = self.now
        leader.next_heartbeat_ms = self.now  # announce ourselves at once
        self._election_deadline = NEVER
        # §8: a no-op of our own term, so entries of earlier terms can commit (Figure 8) and
        # reads know the commit index is current once it commits.
        noop = Entry(self.term, self.log.last_index + 1, b"", EntryKind.NOOP)
        self._append_local([noop])
        if self.membership.implicit and self._bootstrap_cluster_id:
            self._append_bootstrap_config()
        self._broadcast_heartbeat()

    # ------------------------------------------------------------------ messages

    def _receive(self, m: Message) -> None:
        if m.dst != self.id:
            return
        if isinstance(m, RequestVote) and self._refuses_candidate(m):
            # Before the term is looked at: a campaign we may not take part in must not move
            # our term either (a removed node, a wiped one, must not disrupt, thesis §4.2.3),
            # but for one kind whose term we must learn (``_learns_refused_term``).
            if self._learns_refused_term(m):
                # The election timer runs on (Figure 2: only a leader or a granted vote resets
                # it): reset at each such campaign, it could keep us from ever campaigning
                # while the implicit nodes take turns.
                self._change_state(Role.FOLLOWER, m.term, 0)
            return
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if not m.transfer and self._in_leader_lease():
                    # Thesis §4.2.3: a node that heard from a live leader within the minimum
                    # election timeout ignores campaigns; this is also what makes the leader's
                    # lease safe. TimeoutNow campaigns (transfer) are exempt.
                    return
                if not m.pre_vote:
                    self._become_follower(m.term, 0)
            elif isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
                pass  # a granted pre-vote carries the term we would campaign in
            elif (
                self.role is Role.LEADER
                and isinstance(m, (AppendEntriesResponse, HeartbeatResponse))
                and m.src not in self._leader.tracker.progress
            ):
                # An answer from a node we no longer replicate to (its removal committed): its
                # term may have run ahead while it campaigned as ``_may_campaign`` lets it
                # (PreVote off), and a removed node must not depose us (thesis §4.2.3; a
                # newcomer's schedule lost its leader for seconds that way). Answers of our
                # term or older from it are dropped by their handlers already.
                return
            else:
                leader = m.src if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)) else 0
                self._become_follower(m.term, leader)
        elif m.term < self.term:
            self._receive_stale(m)
            return

        if isinstance(m, AppendEntries):
            self._on_append_entries(m)
        elif isinstance(m, AppendEntriesResponse):
            self._on_append_response(m)
        elif isinstance(m, Heartbeat):
            self._on_heartbeat(m)
        elif isinstance(m, HeartbeatResponse):
            self._on_heartbeat_response(m)
        elif isinstance(m, RequestVote):
            self._on_request_vote(m)
        elif isinstance(m, RequestVoteResponse):
            self._on_vote_response(m)
        elif isinstance(m, ReadIndex):
            self._on_read_index(m)
        elif isinstance(m, ReadIndexResponse):
            self._on_read_index_response(m)
        elif isinstance(m, TimeoutNow):
            if self.role is Role.FOLLOWER and self._may_campaign():
                self._campaign(pre_vote=False, transfer=True)
        elif isinstance(m, InstallSnapshot):
            self._on_install_snapshot(m)

    def _learns_refused_term(self, m: RequestVote) -> bool:
        """Does a campaign refused for membership reasons (``_refuses_candidate``) still raise
        our term (we vote in it no more than before)?

        Only a real (not pre-) bootstrap campaign of an implicit node, to an explicit node that
        is not leading and has heard from no leader for the minimum election timeout (nor has
        just restarted): a cluster whose only holder of the bootstrap entry is us. Its
        implicit nodes cannot elect without our grant (a bootstrap election is unanimous), and
        we cannot win while we learn their terms only from the refusals of our own campaigns,
        each one for a term they have already voted in: with PreVote off that was no leader
        for good (``test_a_bootstrap_entry_held_by_one_node_with_prevote_off_elects_a_leader``).
        Learning the term puts our next campaign ahead of theirs. Raft's own rule is to take
        any higher term (§5.1), which is always safe; what this still ignores keeps a wiped
        node (implicit) from disrupting a running cluster, whose nodes hear from its leader:
        with PreVote on (the default) its real campaigns never start, as a bootstrap pre-vote
        needs our grant too."""
        return (
            not m.pre_vote
            and not m.explicit
            and m.term > self.term
            and not self.membership.implicit
            and self.role is not Role.LEADER
            and self.now >= self._votes_quiet_until
            and self.now - self._last_leader_contact >= self.config.election_timeout_min_ms
        )

    def _in_leader_lease(self) -> bool:
        """Would we refuse a (non-transfer) campaign now? While a leader may hold a lease
        that our acknowledgements back, or during the quiet period after a restart.

        The promise is about time, not about what we know now: having heard from a leader at
        time t, we help elect nobody before t + the minimum election timeout, even if a stale
        answer from another node has since raised our term and left us with no leader known
        (that alone would otherwise let us vote in the raised term behind a live lease)."""
        if self.now < self._votes_quiet_until:
            return True
        if not self.config.check_quorum:
            return False
        if self.role is Role.LEADER:
            return True
        return self.now - self._last_leader_contact < self.config.election_timeout_min_ms

    def _receive_stale(self, m: Message) -> None:
        """A message from an older term. Answer the ones whose sender is waiting on us with our
        term, so a deposed leader (or a pre-candidate) learns it is behind."""
        if isinstance(m, (AppendEntries, Heartbeat, InstallSnapshot)):
            self._send(AppendEntriesResponse(self.term, self.id, m.src, success=False))
        elif isinstance(m, RequestVote):
            self._send(RequestVoteResponse(self.term, self.id, m.src, False, m.pre_vote))
        elif isinstance(m, ReadIndex):
            self._send(ReadIndexResponse(self.term, self.id, m.src, m.request_id, 0, False))

    def _heard_from_leader(self, leader_id: int) -> None:
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, leader_id)
        self.leader_id = leader_id
        self._last_leader_contact = self.now
        self._reset_election_timer()

    # --- votes

    def _on_request_vote(self, m: RequestVote) -> None:
        up_to_date = self.log.is_up_to_date(m.last_log_index, m.last_log_term)
        if m.pre_vote:
            granted = m.term > self.term and up_to_date and self.now >= self._votes_quiet_until
            self._send(
                RequestVoteResponse(m.term if granted else self.term, self.id, m.src, granted, True)
            )
            return
        granted = (
            m.term == self.term
            # Stickiness applies to a vote request of our own term too: our term may have
            # been raised by a stale answer while a lease we back is still running.
            and (m.transfer or not self._in_leader_lease())
            and self.voted_for in (0, m.src)
            and (self.leader_id == 0 or self.voted_for == m.src)
            and up_to_date
        )
        if granted and self.voted_for != m.src:
            self.voted_for = m.src
            self._persist_hard_state()  # §5.2: the vote is durable before it is sent
        if granted:
            self._reset_election_timer()
        self._send(RequestVoteResponse(self.term, self.id, m.src, granted, False))

    def _on_vote_response(self, m: RequestVoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if m.pre_vote else Role.CANDIDATE
        if self.role is not expected:
            return
        if m.pre_vote and m.granted and m.term != self.term + 1:
            return  # a grant for some other campaign
        result = self._candidate.tracker.record_vote(m.src, m.granted)
        if result is VoteResult.WON:
            self._won_votes()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, 0)

    # --- replication, follower side

    def _on_append_entries(self, m: AppendEntries) -> None:
        if not _well_formed(m):
            return  # a confused peer must not be able to break our log's shape
        self._heard_from_leader(m.src)
        follower = self._follower
        prev_index, prev_term, entries = m.prev_log_index, m.prev_log_term, m.entries
        if prev_index < self.commit_index:
            # Our committed prefix matches every later leader's log (leader completeness), so
            # skip over it: a delayed duplicate can never try to rewrite it.
            entries = entries[self.commit_index - prev_index :]
            prev_index = self.commit_index
            prev_term = self.log.term_at(prev_index) or 0
        if not self.log.matches(prev_index, prev_term):
            if prev_index > self.log.last_index:
                conflict_index, conflict_term = self.log.last_index + 1, 0
            else:
                conflict_term = self.log.term_at(prev_index) or 0
                conflict_index = self.commit_index + 1
                if prev_index >= self.log.first_index:
                    conflict_index = max(
                        self.log.first_index_of_term_at(prev_index), conflict_index
                    )
                # else: the mismatch is at the log offset (= our commit index), whose entry
                # is compacted away. A leader that contradicts a committed entry exists only
                # after a lost MemFirst tail or a confused peer; reject, never raise.
            self._send(
                AppendEntriesResponse(
                    self.term,
                    self.id,
                    m.src,
                    success=False,
                    reject_index=m.prev_log_index,
                    conflict_index=conflict_index,
                    conflict_term=conflict_term,
                )
            )
            return
        new: tuple[Entry, ...] = ()
        configs_changed = False
        for pos, entry in enumerate(entries):
            have = self.log.term_at(entry.index)
            if have is None:
                new = entries[pos:]
                break
            if have != entry.term:
                # §5.3: a conflicting suffix is deleted; it can never hold a committed entry.
                # A CONFIG entry in it takes its membership back with it (thesis §4.1).
                self.log.truncate_from(entry.index)
                configs_changed = self._forget_configs_from(entry.index)
                self.durable_index = min(self.durable_index, entry.index - 1)
                # (Never below a match of this term: this leader's log only grows.)
                follower.leader_match = min(follower.leader_match, entry.index - 1)
                new = entries[pos:]
                break
        if new:
            self.log.append(new)
            self._out.append(PersistEntries(new))
            for entry in new:
                if entry.kind is EntryKind.CONFIG:
                    self._record_config(entry)
                    configs_changed = True
        if configs_changed:
            self._sync_membership()
        last_new = prev_index + len(entries)
        follower.leader_match = max(follower.leader_match, last_new)
        self._advance_follower_commit(min(m.leader_commit, last_new))
        # DiskFirst counts new entries only once durable, and the Persisted event reports
        # them then: an answer now would tell the leader nothing new, and would double the
        # messages of every write. Anything else (a heartbeat-like or duplicate AppendEntries,
        # MemFirst) is answered at once.
        self._report_match(m.src, force=self._mem_first or not new)

    def _advance_follower_commit(self, index: int) -> None:
        """Commit up to ``index`` as far as our log is known to match the leader's in this
        term, whatever message told us (AppendEntries, Heartbeat, ReadIndexResponse): a commit
        index past that would apply entries the leader does not have, or skip the
        AppendEntries that brings the missing ones (issue 11 item 7)."""
        index = min(index, self._follower.leader_match)
        if index > self.commit_index:
            self.commit_index = index

    def _report_match(self, leader: int, *, force: bool) -> None:
        """Tell the leader how far our log matches its own. Under DiskFirst only durable
        entries count, so the report may lag the append and follow the ``Persisted`` event."""
        follower = self._follower
        match = follower.leader_match
        if not self._mem_first:
            match = min(match, self.durable_index)
        if force or match > follower.reported_match:
            follower.reported_match = max(follower.reported_match, match)
            self._send(AppendEntriesResponse(self.term, self.id, leader, True, match_index=match))

    def _on_heartbeat(self, m: Heartbeat) -> None:
        self._heard_from_leader(m.src)
        follower = self._follower
        # The leader capped ``commit`` at what it believes we hold. A restarted MemFirst
        # follower may hold less, or an older entry there (its overwrite never reached the
        # disk): only holding the leader's very entry at ``commit`` shows the prefix is shared.
        # An entry compacted away here was committed (a snapshot covers nothing else, §7), and
        # every later leader holds our committed prefix (§5.4): shared too.
        held = self.log.term_at(m.commit)
        if m.commit > follower.leader_match and (
            held == m.commit_term or (held is None and m.commit <= self.log.snapshot_index)
        ):
            follower.leader_match = m.commit
        self._advance_follower_commit(m.commit)
        last_index = self.log.last_index
        if m.commit > follower.leader_match:
            last_index = min(last_index, m.commit - 1)  # "probe me": see HeartbeatResponse
        self._send(HeartbeatResponse(self.term, self.id, m.src, m.seq, last_index))

    def _on_install_snapshot(self, m: InstallSnapshot) -> None:
        """Raft paper §7 (Figure 13) and thesis chapter 5, with etcd raft's answers: a snapshot
        ending at or before our commit index tells us nothing (answer with the commit index);
        one whose last entry our log holds moves the commit index there and keeps the entries
        after it (Figure 13 step 6); any other replaces the log and the state machine
        (``RestoreSnapshot``, steps 7-8). Answered as an AppendEntries is."""
        if not _well_formed_snapshot(m):
            return
        self._heard_from_leader(m.src)
        follower = self._follower
        index, term = m.last_index, m.last_term
        if index <= self.commit_index:
            # Our committed prefix is in every later leader's log (§5.4), so it matches.
            follower.leader_match = max(follower.leader_match, self.commit_index)
        elif self.log.matches(index, term):
            follower.leader_match = max(follower.leader_match, index)
            self._advance_follower_commit(index)
        else:
            self.log.restore(index, term)
            # The snapshot's membership replaces whatever our log said (its entries are gone);
            # a sender with none (b"") leaves ours in place.
            adopted = self.membership
            try:
                if m.membership:
                    adopted = decode_membership(m.membership)
            except ValueError:
                pass  # a confused peer: keep ours rather than adopt garbage
            restored = m.membership if adopted is not self.membership else b""
            # A barrier: the runtime installs it durably before anything that follows (the
            # answer that reports it, above all).
            self._out.append(RestoreSnapshot(index, term, restored))
            self.commit_index = self.durable_index = self._applied_emitted = index
            self.snapshot_index, self.snapshot_term = index, term
            self._configs = [(index, adopted)]
            self._sync_membership()
            follower.leader_match = index
        self._report_match(m.src, force=True)

    # --- snapshots taken here

    def _check_snapshot_taken(self, event: SnapshotTaken) -> None:
        index = event.index
        if index < 0 or event.term < 0 or index > self._applied_emitted:
            raise ValueError(
                f"snapshot at ({index}, {event.term}) is not of applied entries"
                f" (applied up to {self._applied_emitted})"
            )
        held = self.log.term_at(index)
        if held is not None and held != event.term:
            raise ValueError(f"snapshot at ({index}, {event.term}): the log has term {held} there")

    def _on_snapshot_taken(self, event: SnapshotTaken) -> None:
        """§7: the runtime durably wrote a snapshot of applied entries; drop what it covers
        from the in-memory log (up to ``compact_through``). Applied entries are committed, so
        no leader change can take any of them back: the event is safe in any role."""
        index = event.index
        if index > self.snapshot_index:
            self.snapshot_index, self.snapshot_term = index, event.term
            # A restart now finds the snapshot, so it holds every entry up to ``index``
            # whatever the log's own writes have reached.
            self.durable_index = max(self.durable_index, index)
            # Memberships older than the one in effect at the snapshot can never be asked for
            # again (``membership_at`` answers from the snapshot on; truncation stops at the
            # commit index).
            keep = max(i for i, (at, _) in enumerate(self._configs) if at <= index or i == 0)
            del self._configs[:keep]
        self.log.compact(min(event.compact_through, index))

    def _on_snapshot_status(self, event: SnapshotStatus) -> None:
        """The runtime finished streaming a snapshot (``ok``: wait for the follower's answer,
        or for a heartbeat round started later to show whether it has the snapshot) or gave
        up (probe again, paced by heartbeat answers). etcd raft's ReportSnapshot."""
        if self.role is not Role.LEADER:
            return
        progress = self.progress.get(event.peer)
        if progress is None or progress.state is not ProgressState.SNAPSHOT:
            return
        if event.ok:
            # The follower's answer should follow; a heartbeat round started from now on tells
            # whether it installed the snapshot, if that answer is lost or never sent.
            progress.snapshot_delivered_round = self._leader.reads.seq
        else:
            progress.snapshot_failed()

    # --- replication, leader side

    def _append_local(self, entries: list[Entry]) -> None:
        self.log.append(entries)
        self._out.append(PersistEntries(tuple(entries)))

    def _self_match(self) -> int:
        return self.log.last_index if self._mem_first else self.durable_index

    def _maybe_commit(self) -> None:
        """§5.3/§5.4.2: commit the highest index a majority holds, but only by counting
        replicas of an entry of the current term (Figure 8)."""
        if self.role is not Role.LEADER:
            return
        leader = self._leader
        candidate = leader.tracker.committed_index(self._self_match())
        if candidate > self.commit_index and self.log.term_at(candidate) == self.term:
            first_in_term = not self._committed_in_term()
            departing = leader.tracker.departing and candidate >= self.membership_index
            self.commit_index = candidate
            leader.commit_advanced = True
            if departing:
                # The removal is committed: stop replicating to the members it removed, once
                # told (they may campaign until they know it committed, ``_may_campaign``).
                self._tell_commit(leader.tracker.departing)
                ms = self.membership
                leader.tracker.set_members(ms.voters, ms.learners, self.log.last_index + 1)
            if first_in_term:
                self._release_reads_before_commit()

    def _tell_commit(self, peers: Iterable[int]) -> None:
        """Leader, as the removal at ``membership_index`` commits: a heartbeat outside any
        read round to each of the members it removed, telling them it committed. A follower
        takes a commit index only if it holds that very entry (``_on_heartbeat``), so each is
        sent the newest one it can take: our commit index if it is known to hold it (or may:
        the match index may not yet count the append whose answer is on its way), else no
        less than the removal itself (it may lack the entries committed with it, say after a
        restart, yet hold the removal: a newcomer's schedule, in which it then campaigned for
        good). Best effort: a lost one leaves a removed member campaigning (refused by every
        member) until the handshake tells it (``Removed``)."""
        seq = self._leader.reads.seq
        for peer in peers:
            progress = self.progress.get(peer)
            match = progress.match_index if progress is not None else 0
            commit = (
                self.commit_index
                if match >= self.commit_index
                else max(match, self.membership_index)
            )
            term = self.log.term_at(commit)
            if term is not None:
                self._send(Heartbeat(self.term, self.id, peer, commit, seq, term))

    def _committed_in_term(self) -> bool:
        return self.log.term_at(self.commit_index) == self.term

    def _send_append(self, peer: int, progress: Progress, *, send_empty: bool) -> None:
        if progress.paused(self.config.max_inflight_msgs):
            return
        if progress.next_index <= self.log.snapshot_index:
            # The entry before the next one is compacted away, so no AppendEntries can pass
            # the log-matching check: the follower needs our snapshot (§7).
            self._send_snapshot(peer, progress)
            return
        cfg = self.config
        entries = self.log.batch_from(
            progress.next_index, cfg.max_entries_per_msg, cfg.max_bytes_per_msg
        )
        if not entries and not send_empty:
            return
        prev_index = progress.next_index - 1
        self._send(
            AppendEntries(
                term=self.term,
                src=self.id,
                dst=peer,
                prev_log_index=prev_index,
                prev_log_term=self.log.term_at(prev_index) or 0,  # known: prev >= offset
                entries=tuple(entries),
                leader_commit=self.commit_index,
            )
        )
        progress.sent_commit = self.commit_index
        if entries:
            progress.sent(entries[-1].index)
        elif progress.state is ProgressState.PROBE:
            progress.probe_sent = True

    def _send_snapshot(self, peer: int, progress: Progress) -> None:
        """Raft paper §7 (Figure 13): ask the runtime to stream our newest snapshot to
        ``peer``; nothing but heartbeats goes to it until it answers or the runtime reports
        the transfer failed (``SnapshotStatus``)."""
        index, term = self.snapshot_index, self.snapshot_term
        progress.become_snapshot(index, term, self._leader.reads.seq)
        # An implicit membership is every node's own (from its config): nothing to carry.
        at = self.membership_at(index)
        membership = b"" if at.implicit else encode_membership(at)
        self._send(InstallSnapshot(self.term, self.id, peer, index, term, membership))

    def _on_append_response(self, m: AppendEntriesResponse) -> None:
        if self.role is not Role.LEADER:
            return
        progress = self.progress.get(m.src)
        if progress is None:
            return
        self._touch(progress)
        if m.success:
            # Capped: no follower can hold more of our log than there is of it.
            if progress.acknowledge(min(m.match_index, self.log.last_index)):
                if progress.state is ProgressState.PROBE or (
                    # Out of SNAPSHOT once the follower has the snapshot, or any match from
                    # which our log can carry it on (etcd raft: whatever snapshot it applied).
                    progress.state is ProgressState.SNAPSHOT
                    and progress.match_index
                    >= min(progress.pending_snapshot, self.log.snapshot_index)
                ):
                    progress.become_replicate()
                self._maybe_commit()
                self._maybe_send_timeout_now(m.src, progress)
            elif progress.state is ProgressState.PROBE:
                progress.probe_sent = False
            self._send_append(m.src, progress, send_empty=False)
            return
        if m.conflict_term:
            last_of_term = self.log.last_index_of_term(m.conflict_term)
            hint_next = last_of_term + 1 if last_of_term else m.conflict_index
        else:
            hint_next = m.conflict_index
        if progress.reject(m.reject_index, max(hint_next, 1)):
            self._send_append(m.src, progress, send_empty=True)

    def _touch(self, progress: Progress) -> None:
        progress.last_contact_ms = self.now

    def _broadcast_heartbeat(self) -> None:
        """Start a heartbeat round. A majority acknowledging round ``seq`` proves we were
        leader when it was sent: ReadIndex waits for that, and the lease counts from it."""
        leader = self._leader
        leader.next_heartbeat_ms = self.now + self.config.heartbeat_interval_ms
        # A round sent while a transfer is pending, or after TimeoutNow went out in this term,
        # never extends the lease: the transferee's campaign passes the voters' stickiness,
        # so their acknowledgements promise nothing (issue 11 item 1).
        lease_ok = not leader.transfer_target and not leader.timeout_now_sent
        seq = leader.reads.start_round(self.now, lease_ok=lease_ok)
        self._round_open = True
        for peer, progress in self.progress.items():
            if progress.state is ProgressState.SNAPSHOT:
                # The snapshot's last entry (committed): the answer shows whether the follower
                # holds it yet, which releases SNAPSHOT if the snapshot's own answer is lost.
                commit, commit_term = progress.pending_snapshot, progress.pending_snapshot_term
            else:
                commit = min(progress.match_index, self.commit_index)
                known = self.log.term_at(commit)
                # A match below our log's offset: its term is compacted away, so tell nothing.
                commit, commit_term = (commit, known) if known is not None else (0, 0)
            progress.sent_commit = max(progress.sent_commit, commit)
            self._send(Heartbeat(self.term, self.id, peer, commit, seq, commit_term))
        self._advance_reads()  # a single-node cluster confirms itself

    def _on_heartbeat_response(self, m: HeartbeatResponse) -> None:
        if self.role is not Role.LEADER:
            return
        progress = self.progress.get(m.src)
        if progress is None:
            return
        self._touch(progress)
        if m.seq > progress.acked_seq:
            progress.acked_seq = m.seq
            self._advance_reads()
        if m.last_index < progress.match_index:
            # A MemFirst follower restarted without its unflushed tail: it no longer holds
            # what it acknowledged. Probe again from what it has.
            progress.match_index = m.last_index
            progress.become_probe()
        elif progress.state is ProgressState.SNAPSHOT:
            if m.seq > progress.snapshot_round and m.last_index >= progress.pending_snapshot:
                # It holds the snapshot's last entry (a heartbeat of a round started since the
                # snapshot went out carried it; an earlier one's answer proves nothing): the
                # answer to the snapshot itself may be lost, so do not wait for it.
                progress.snapshot_landed()
            elif progress.snapshot_delivered_round and m.seq > progress.snapshot_delivered_round:
                # The whole file reached it, yet a round started after that finds it without
                # the snapshot: it went down before the install was durable (or threw the file
                # away). Its answer to the snapshot will never come: send it again.
                progress.become_probe()
        if progress.state is ProgressState.PROBE:
            progress.probe_sent = False
        elif progress.state is ProgressState.REPLICATE and progress.paused(
            self.config.max_inflight_msgs
        ):
            progress.inflight.popleft()  # a reply may have been lost: let one more through
        if progress.match_index < self.log.last_index:
            self._send_append(m.src, progress, send_empty=True)

    # ------------------------------------------------------------------ proposals

    def _on_propose(self, event: Propose) -> None:
        if self.role is not Role.LEADER or self._leader.transfer_target:
            leader = 0 if self.role is Role.LEADER else self.leader_id
            self._out.append(ProposalRejected(event.request_id, leader))
            return
        entry = Entry(self.term, self.log.last_index + 1, event.data)
        self.log.append((entry,))
        # A run of proposals becomes one PersistEntries: one encode and one write for the
        # batch, which under load is most of what the leader's log costs per entry.
        self._proposed.append(entry)
        self._out.append(Proposed(event.request_id, entry.index, entry.term))

    def _persist_proposed(self) -> None:
        if self._proposed:
            self._out.append(PersistEntries(tuple(self._proposed)))
            self._proposed = []

    def _on_persisted(self, event: Persisted) -> None:
        index = min(event.index, self.log.last_index)
        if index <= self.durable_index or self.log.term_at(event.index) != event.term:
            return  # old news, or about entries since truncated away
        self.durable_index = index
        if self.role is Role.LEADER:
            self._maybe_commit()
        elif self.role is Role.FOLLOWER and self.leader_id and not self._mem_first:
            self._report_match(self.leader_id, force=False)

    # ------------------------------------------------------------------ reads

    def _on_read_request(self, event: ReadRequest) -> None:
        if self.role is Role.LEADER:
            self._leader_read(event.request_id, 0, event.lease)
        elif self.role is Role.FOLLOWER and self.leader_id:
            self._follower.forwarded_reads[event.request_id] = self.now
            self._send(ReadIndex(self.term, self.id, self.leader_id, event.request_id, event.lease))
        else:
            self._out.append(ReadFailed(event.request_id, 0))

    def _on_read_index(self, m: ReadIndex) -> None:
        if self.role is Role.LEADER:
            self._leader_read(m.request_id, m.src, m.lease)
        else:
            self._send(ReadIndexResponse(self.term, self.id, m.src, m.request_id, 0, False))

    def _on_read_index_response(self, m: ReadIndexResponse) -> None:
        state = self._state
        if (
            not isinstance(state, FollowerState)
            or state.forwarded_reads.pop(m.request_id, None) is None
        ):
            return
        if m.ok:
            # The read index is the leader's commit index: whatever of it our log is known to
            # share with the leader is committed, so the read need not wait for a heartbeat.
            self._advance_follower_commit(m.read_index)
            self._out.append(ReadReady(m.request_id, m.read_index))
        else:
            self._out.append(ReadFailed(m.request_id, self.leader_id))

    def _leader_read(self, request_id: int, origin: int, lease: bool) -> None:
        leader = self._leader
        if leader.transfer_target:
            self._read_done(request_id, origin, None, leader.transfer_target)
            return
        if not self._committed_in_term():
            # Until our no-op commits we do not know the commit index of earlier terms
            # (thesis §6.4): hold the read.
            leader.reads.held.append(HeldRead(request_id, origin, lease))
            return
        if lease and self.lease_valid(self.now):
            self._read_done(request_id, origin, self.commit_index)
            return
        if not self._round_open:
            self._broadcast_heartbeat()
        reads = leader.reads
        reads.pending.append(PendingRead(reads.seq, request_id, origin, self.commit_index))
        self._advance_reads()

    def _release_reads_before_commit(self) -> None:
        for read in self._leader.reads.take_held():
            self._leader_read(read.request_id, read.origin, read.lease)

    def _advance_reads(self) -> None:
        leader = self._leader
        confirmed = leader.tracker.confirmed_round(leader.reads.seq)
        for read in leader.reads.confirm(confirmed, self.config.lease_duration_ms):
            self._read_done(read.request_id, read.origin, read.read_index)

    def _read_done(
        self, request_id: int, origin: int, read_index: int | None, leader_hint: int = 0
    ) -> None:
        """Answer a read the leader took: ready at ``read_index``, or failed (None) with
        ``leader_hint`` (a transfer's target, or 0) as where to retry."""
        if origin == 0:
            if read_index is None:
                self._out.append(ReadFailed(request_id, leader_hint))
            else:
                self._out.append(ReadReady(request_id, read_index))
        else:
            ok = read_index is not None
            self._send(
                ReadIndexResponse(self.term, self.id, origin, request_id, read_index or 0, ok)
            )

    def _fail_leader_reads(self, leader: LeaderState) -> None:
        pending, held = leader.reads.take_all()
        hint = leader.transfer_target
        for read in pending:
            self._read_done(read.request_id, read.origin, None, hint)
        for waiting in held:
            self._read_done(waiting.request_id, waiting.origin, None, hint)

    # ------------------------------------------------------------------ leadership transfer

    def _on_transfer_leader(self, event: TransferLeader) -> None:
        """Thesis §3.10: stop taking proposals, bring the target up to date, then TimeoutNow."""
        if self.role is not Role.LEADER:
            return
        # Only a voter can be elected: a learner would never campaign, and a voter on a data
        # directory it is not bound to would find nobody to vote for it.
        uncounted = self._leader.tracker.uncounted
        voters = [p for p in self.progress if self.membership.is_voter(p) and p not in uncounted]
        if not voters:
            return
        target = event.target
        if target == 0:
            target = max(voters, key=lambda p: self.progress[p].match_index)
        if target == self.id or target not in voters:
            return
        leader = self._leader
        leader.transfer_target = target
        leader.transfer_deadline_ms = self.now + self.config.election_timeout_min_ms
        leader.reads.void_lease()  # the successor will not honour our lease
        progress = self.progress[target]
        if not self._maybe_send_timeout_now(target, progress):
            self._send_append(target, progress, send_empty=True)

    def _maybe_send_timeout_now(self, peer: int, progress: Progress) -> bool:
        leader = self._leader
        if leader.transfer_target != peer or progress.match_index != self.log.last_index:
            return False
        # From here on the target may win an election at any moment, however late the
        # TimeoutNow arrives (even after the transfer is abandoned) and whatever stickiness
        # the voters owe us: we never serve a lease read again in this term. That is what
        # makes a stale TimeoutNow harmless; it carries our term, so in any later term it is
        # ignored as stale.
        leader.timeout_now_sent = True
        leader.reads.void_lease()
        self._send(TimeoutNow(self.term, self.id, peer))
        return True

    # ------------------------------------------------------------------ membership
    #
    # Single-server changes (thesis §4.1): a CONFIG entry carries the whole new membership
    # and is in effect on a node from the moment it is in its log; a truncation takes it
    # back. One change at a time (``pending_conf_index``), and only once the leader has
    # committed an entry of its own term (Ongaro, raft-dev 2015: otherwise a change appended
    # by a deposed leader and one by its successor can have disjoint majorities).
    #
    # Membership and votes. A node campaigns only if it is a voter of its membership, and
    # grants votes only if it is a member, both only while that membership is implicit or
    # binds it to its own data-directory ``uuid``. A voter restarted on a wiped directory has
    # forgotten its votes; it comes back with the implicit membership and a new uuid, and
    # votes again only once it has appended a BIND of that uuid, an entry proposed after it
    # came back: its log then holds every entry its old acknowledgements could have helped
    # commit, and its term is at least that of the leader that bound it. (docs/architecture.md,
    # "Membership changes", gives the whole argument.)

    def _record_config(self, entry: Entry) -> None:
        """A CONFIG entry entered the log: its membership is the newest. One that does not
        decode changes nothing (only a confused peer could have sent it)."""
        try:
            membership = decode_membership(entry.data)
        except ValueError:
            return
        self._configs.append((entry.index, membership))

    def _forget_configs_from(self, index: int) -> bool:
        """Entries from ``index`` on were truncated away: so were their memberships (True if
        there were any). The base, at or below the commit index, is never truncated."""
        forgot = False
        while len(self._configs) > 1 and self._configs[-1][0] >= index:
            self._configs.pop()
            forgot = True
        return forgot

    def _sync_membership(self) -> None:
        """Make the newest recorded membership the one in effect, and tell the runtime and
        every rule that depends on it when it changed."""
        index, membership = self._configs[-1]
        changed = membership != self.membership
        self.membership_index, self.membership = index, membership
        self._vote_floor = self._bound_since_term()
        self._cache_self()  # also for the same members: the entry's index may be another
        if not changed:
            return  # the same members from another entry or a snapshot: nothing to redo
        self._update_auto_change_due()
        self._out.append(MembershipChanged(membership, index))
        state = self._state
        if isinstance(state, LeaderState):
            # A new member is probed from the entry that made it one: its first AppendEntries
            # carries that entry (and the answer tells how far back its log really ends).
            state.tracker.set_members(
                membership.voters,
                membership.learners,
                min(index, self.log.last_index) or 1,
                self._departing(),
            )
            self._refresh_uncounted()
            self._quorum_changed = True
            # A member gone (or turned learner) may have been what held the commit index or
            # a read round back; the quorum is over the new voters from now on.
            self._maybe_commit()
            self._advance_reads()
        elif isinstance(state, CandidateState):
            state.tracker.set_members(membership.voters, membership.learners, None)
        elif not self._may_campaign():
            self._election_deadline = NEVER
        elif self._election_deadline == NEVER:
            self._reset_election_timer()  # promoted, or bound: it may campaign from now on

    def _bound(self, member: Member) -> bool:
        """Is ``member`` (this node) bound to this node's data directory? Always, in the
        implicit membership, which binds nobody."""
        return self.membership.implicit or member.uuid == self.uuid

    def _bound_since_term(self) -> int:
        """The term of the entry that made this node what it is in its membership (a member
        with its current voter flag and binding): it grants votes only in later terms. A node
        that came back on a new data directory may have voted, before, in any term up to the
        one in which it was taken back; nothing older than its binding can be trusted."""
        mine = self._configs[-1][1].get(self.id)
        record = None if mine is None else (mine.voter, mine.uuid)
        since = self._configs[-1][0]
        for index, membership in reversed(self._configs):
            m = membership.get(self.id)
            if (None if m is None else (m.voter, m.uuid)) != record:
                break
            since = index
        term = self.log.term_at(since)
        return self.snapshot_term if term is None else term

    def _refresh_uncounted(self) -> None:
        """Leader: a voter whose data directory is not the one its membership binds (a wiped
        voter, or one the bootstrap entry could not bind) counts in no quorum: what it says
        may rest on promises its old disk made and forgot (see ``_on_peer_identity``)."""
        ms = self.membership
        uncounted: frozenset[int] = frozenset()
        if not ms.implicit:
            uncounted = frozenset(
                m.id
                for m in ms.members
                if m.voter and m.id != self.id and self._known_uuid(m.id) != m.uuid
            )
        tracker = self._leader.tracker
        if uncounted != tracker.uncounted:
            tracker.uncounted = uncounted
            self._quorum_changed = True
            self._maybe_commit()
            self._advance_reads()

    def _may_campaign(self) -> bool:
        """A voter of its membership, bound to this data directory (thesis §4.2.1: learners
        never campaign; a removed node neither, thesis §4.2.3); or a bound voter of an
        earlier membership whose removal of it has not committed yet (thesis §4.2.2: "a
        server that is not part of its own latest configuration should still start new
        elections, as it might still be needed until the Cnew entry is committed"; it does
        not count its own vote then, ``Tracker.start_votes``). Cached per membership, the
        commit index compared here."""
        return self._campaigns or self.commit_index < self._campaigns_until

    def _cache_self(self) -> None:
        """What this node is in the membership in effect (asked on hot paths: every heartbeat
        resets the election timer, every leader step checks for a removal)."""
        me = self.membership.get(self.id)
        self._self_voter = me is not None and me.voter
        self._campaigns = me is not None and me.voter and self._bound(me)
        # Removed (or taken back as a learner) by the newest configuration entry: we may
        # still be needed to elect a leader until it commits. Without this, a leader that
        # appended its own removal and lost office before it committed (its only other voter
        # down just then) stalled the cluster for good: that voter, back without the entry,
        # needed our vote and our log was longer (found by the simulator's quorum-risk).
        # Only the newest entry can be uncommitted: a leader appends one only once the one
        # before has committed (one change at a time), so a removal with any configuration
        # after it is committed, whatever our commit index says after a restart (a re-added
        # read replica or a node removed twice campaigned and led: newcomer strict xfails).
        self._campaigns_until = 0
        configs = self._configs
        if not self._campaigns and not self.membership.implicit and len(configs) > 1:
            before = configs[-2][1]
            was = before.get(self.id)
            if not before.implicit and was is not None and was.voter and was.uuid == self.uuid:
                self._campaigns_until = configs[-1][0]
        if self._removed_at > self.membership_index:
            # Told we were removed (``Removed``: committed), and not re-added.
            self._campaigns = False
            self._campaigns_until = 0

    def _refuses_candidate(self, m: RequestVote) -> bool:
        """Must this (pre-)vote request be ignored for membership reasons alone?

        Implicit membership: we grant an explicit candidate only if its membership binds us
        to our own uuid (so a wiped node, which restarts implicit with a new uuid, cannot vote
        in a running cluster, yet a member that missed the bootstrap entry can help elect a
        leader that has it). Explicit membership: we vote only while bound to our uuid (the
        amnesia rule), only in terms after the entry that bound us, and only for explicit
        candidates (a wiped node cannot disrupt) that are members (a removed node cannot).

        "Member" and "bound" are judged over every membership our log may still fall back
        to: the committed one and each uncommitted one after it. A removal not committed yet
        (ours, or the candidate's) may be truncated, and the candidate, with a later log
        without it, may need our vote: refusing could leave a majority of the committed
        configuration without a leader. Likewise a candidate that is only a learner here may
        be a voter in its own log (a PROMOTE we have not received): it gets the usual checks.
        """
        ms = self.membership
        if self._removed_at > self.membership_index:
            return True  # told we were removed (``Removed``): passive, as if we had appended it
        if ms.implicit:
            if ms.get(self.id) is None:
                return True  # a joining node, no member of anything yet
            return m.explicit and not (m.dst_uuid and m.dst_uuid == self.uuid)
        if not m.explicit or m.term <= self._vote_floor:
            return True
        bound = candidate = False
        # The implicit rule above, for a fallback membership that is implicit: our own uuid
        # named by the candidate. Not "bound" outright: a wiped node (new uuid) that appended
        # the bootstrap entry (binding its old uuid) before it committed would vote again in
        # a term its old directory may have voted in (S's generator, tests/sim/test_membership).
        own_uuid_named = bool(m.dst_uuid) and m.dst_uuid == self.uuid
        for membership in self._fallback_memberships():
            me = membership.get(self.id)
            if me is not None and (own_uuid_named if membership.implicit else me.uuid == self.uuid):
                bound = True
            if membership.get(m.src) is not None:
                candidate = True
        return not (bound and candidate)

    def _departing(self) -> tuple[int, ...]:
        """Members removed by a CONFIG entry not committed yet: a leader goes on replicating
        to them (not counting them) until the removal commits, so that they learn of it and
        stop campaigning (thesis §4.2.3)."""
        current = set(self.membership.ids)
        gone: set[int] = set()
        for membership in self._fallback_memberships():
            gone.update(i for i in membership.ids if i not in current and i != self.id)
        return tuple(sorted(gone))

    def _fallback_memberships(self) -> list[Membership]:
        """The membership in effect at the commit index and every later one in the log: what
        a truncation could still bring back."""
        configs = self._configs
        first = 0
        for i, (index, _) in enumerate(configs):
            if index <= self.commit_index:
                first = i
        return [membership for _, membership in configs[first:]]

    def _known_uuid(self, member_id: int) -> str:
        """The data-directory uuid ``member_id`` last said it runs on ("" if not heard)."""
        return self.uuid if member_id == self.id else self._peer_uuids.get(member_id, "")

    def _append_config(self, membership: Membership) -> Entry:
        """Leader: append ``membership`` as a CONFIG entry of this term; in effect at once."""
        data = encode_membership(membership)
        entry = Entry(self.term, self.log.last_index + 1, data, EntryKind.CONFIG)
        self._append_local([entry])
        self._configs.append((entry.index, membership))
        self._sync_membership()
        return entry

    def _append_bootstrap_config(self) -> None:
        """A new leader of an implicit membership makes it explicit, right after its no-op:
        the same voters, our cluster id, every member whose uuid we know bound (ourselves
        always). The quorums do not change, so it needs no committed entry first."""
        members = tuple(
            Member(m.id, m.address, m.voter, self._known_uuid(m.id), m.promote)
            for m in self.membership.members
        )
        self._append_config(Membership(self._bootstrap_cluster_id, members))

    def _on_propose_conf_change(self, event: ProposeConfChange) -> None:
        request_id, change = event.request_id, event.change
        if self.role is not Role.LEADER or self._leader.transfer_target:
            leader = 0 if self.role is Role.LEADER else self.leader_id
            self._reject_change(request_id, "not_leader", "this node is not the leader", leader)
            return
        if self.membership.implicit:
            self._reject_change(
                request_id, "bad_request", "the membership is implicit: no cluster id to change"
            )
            return
        if self.pending_conf_index or not self._committed_in_term():
            pending = self.pending_conf_index
            why = (
                f"the change at index {pending} is not committed yet"
                if pending
                else "the new leader has not committed an entry of its term yet"
            )
            self._reject_change(request_id, "pending", why, pending_index=pending)
            return
        try:
            membership = self.membership.with_change(change)
        except ConfChangeError as e:
            self._reject_change(request_id, e.code, e.message, **e.detail)
            return
        except (TypeError, ValueError) as e:  # malformed fields (wrong types)
            self._reject_change(request_id, "bad_request", str(e))
            return
        if change.kind is ConfChangeKind.PROMOTE:
            why_not = self._not_caught_up(change.id)
            if why_not is not None:
                lag = self._lag(change.id)
                self._reject_change(
                    request_id, "behind", why_not, lag=lag, heard_ms_ago=self._heard_ago(change.id)
                )
                return
        if self._loses_voters(membership):
            inactive, active, needed = self._inactive_voters(membership)
            if len(active) < needed:
                self._reject_change(
                    request_id,
                    "quorum_at_risk",
                    f"the cluster would lose quorum: voters {inactive} of the new membership "
                    f"are not active (silent for an election timeout, or not bound to the data "
                    f"directory they run on); {len(active)} active of {needed} needed",
                    active=active,
                    needed=needed,
                    inactive=inactive,
                )
                return
        entry = self._append_config(membership)
        self._out.append(Proposed(request_id, entry.index, entry.term))

    def _loses_voters(self, membership: Membership) -> bool:
        """Does ``membership`` (the one a change would make) drop a voter of the one in
        effect, or bind one to another data directory? (A REMOVE of a voter, a BIND that takes
        a voter back as a learner; a learner's removal, ADD_LEARNER and PROMOTE never do.)"""
        for m in self.membership.members:
            if not m.voter:
                continue
            after = membership.get(m.id)
            if after is None or not after.voter or after.uuid != m.uuid:
                return True
        return False

    def _inactive_voters(self, membership: Membership) -> tuple[list[int], list[int], int]:
        """Leader: the strict reconfiguration check (etcd's ``ErrNotEnoughStartedMembers``).
        Of ``membership``'s voters, which are not active and which are, and how many a
        majority is. Active: ourselves (if still a voter: a leader removing itself counts
        quorums without itself once the entry is appended), and each other voter that
        answered us within the minimum election timeout (the recency a promotion needs,
        ``_not_caught_up``) and can vote: bound, to the data directory it last said it runs
        on (a wiped voter, or one we have not heard name its directory, counts in no quorum
        and never votes, ``_refresh_uncounted`` and ``_refuses_candidate``)."""
        active: list[int] = []
        inactive: list[int] = []
        for m in membership.members:
            if m.voter:
                (active if self._is_active(m) else inactive).append(m.id)
        return inactive, active, len(membership.voters) // 2 + 1

    def _is_active(self, m: Member) -> bool:
        """Leader: ``m`` would count in a quorum now (``_inactive_voters``' rule): it is
        ourselves, or it answered within the minimum election timeout, bound to the data
        directory it last said it runs on."""
        if m.id == self.id:
            return True
        progress = self.progress.get(m.id)
        return (
            progress is not None
            and progress.last_contact_ms > self.now - self.config.election_timeout_min_ms
            and m.uuid != ""
            and self._known_uuid(m.id) == m.uuid
        )

    def member_contact(self) -> dict[int, tuple[int | None, bool]]:
        """Leader: for each member of the membership in effect, (ms since it last answered
        this leader, 0 for the leader itself and None if it never did; whether it is active
        as the strict reconfiguration check counts it, ``_inactive_voters``: what decides a
        ``quorum_at_risk`` refusal). Empty on any other node: only a leader hears from all.
        The clock is the core's (``Tick``), so the age is up to one tick old."""
        if self.role is not Role.LEADER:
            return {}
        return {
            m.id: (0 if m.id == self.id else self._heard_ago(m.id), self._is_active(m))
            for m in self.membership.members
        }

    def _not_caught_up(self, member_id: int) -> str | None:
        """Why the learner ``member_id`` may not be promoted yet (one line), or None (leader).

        Caught up: its log is known to match ours (replicating: not probing, no snapshot on
        the way), at most ``max_promote_lag_entries`` behind our last index, and it answered
        within the minimum election timeout. A learner that never acknowledged anything (an
        address nobody answers at) or went silent is refused even when the log is short: as a
        voter it would be down from its first moment, and the quorum would grow by one voter
        that cannot help reach it (thesis §4.2.1: a new server is caught up before it votes).
        Manual and automatic promotion (contract rule 7) ask the same."""
        progress = self.progress.get(member_id)
        lag = self._lag(member_id)
        limit = self.config.max_promote_lag_entries
        if lag > limit:
            return f"node {member_id} is {lag} entries behind (at most {limit} to be promoted)"
        if progress is None or progress.last_contact_ms == float("-inf"):
            return f"node {member_id} has not answered this leader yet ({lag} entries behind)"
        if progress.last_contact_ms <= self.now - self.config.election_timeout_min_ms:
            return (
                f"node {member_id} has not answered for {self._heard_ago(member_id)} ms "
                f"(at most {self.config.election_timeout_min_ms} to be promoted; {lag} entries "
                "behind)"
            )
        if progress.state is not ProgressState.REPLICATE:
            return (
                f"node {member_id} is still being brought up to date ({lag} entries behind, "
                f"{'a snapshot on the way' if progress.pending_snapshot else 'probing its log'})"
            )
        return None

    def _heard_ago(self, member_id: int) -> int | None:
        """Milliseconds since ``member_id`` last answered this leader, None if it never did."""
        progress = self.progress.get(member_id)
        if progress is None or progress.last_contact_ms == float("-inf"):
            return None
        return int(self.now - progress.last_contact_ms)

    def _lag(self, member_id: int) -> int:
        """How many entries ``member_id``'s log is known to be behind ours (leader)."""
        progress = self.progress.get(member_id)
        return self.log.last_index - (progress.match_index if progress else 0)

    def _reject_change(
        self, request_id: int, code: str, message: str, leader_id: int = 0, **detail: object
    ) -> None:
        self._out.append(ConfChangeRejected(request_id, code, message, leader_id, dict(detail)))

    def _on_removed(self, event: Removed) -> None:
        """A member says the configuration committed at ``event.index`` leaves us out (a
        removal whose entry never reached us: we were paused or cut off when it committed, and
        the leader stops replicating to a member once its removal commits). Unless our own log
        holds a membership that new, we go passive as a node whose removal committed is
        (thesis §4.2.3: it must not disrupt): no campaign, no vote, a candidate or leader
        steps down. Being passive never breaks safety, so a false claim costs at most this
        node's liveness; a membership at ``index`` or later in our log (we were added again)
        lifts it. If our log holds the removal itself, not committed as far as we know, the
        claim ends the campaigns ``_may_campaign`` still allowed."""
        if event.index <= self.membership_index or event.index <= self._removed_at:
            if self._campaigns_until and event.index >= self._campaigns_until:
                # Our newest entry removed us, and a member says it committed (the leader's
                # word, ``_tell_commit``, may not have reached us): no more campaigns.
                self._campaigns_until = 0
                if self.role in (Role.PRE_CANDIDATE, Role.CANDIDATE):
                    self._become_follower(self.term, 0)
                if self.role is not Role.LEADER:
                    self._election_deadline = NEVER
            return
        self._removed_at = event.index
        self._cache_self()
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, 0)
        else:
            self._reset_election_timer()

    def _on_peer_identity(self, event: PeerIdentity) -> None:
        """A peer said which data directory it runs on. If that is not the one its
        membership binds it to, whatever we knew of its log may describe a disk that is gone:
        a leader forgets its match and probes it afresh (its acknowledgements count again
        only for what it holds now), and ``_maybe_auto_change`` rebinds it."""
        peer, uuid = event.peer, event.uuid
        if not uuid or peer == self.id:
            return
        previous = self._peer_uuids.get(peer)
        self._peer_uuids[peer] = uuid
        self._update_auto_change_due()
        if self.role is not Role.LEADER:
            return
        member = self.membership.get(peer)
        progress = self.progress.get(peer)
        if previous != uuid and member is not None and member.uuid != uuid and progress:
            progress.match_index = 0
            progress.become_probe()
            progress.next_index = self.log.last_index + 1
        self._refresh_uncounted()

    def _maybe_hand_over(self) -> None:
        """Thesis §4.2.2: a leader removed from the membership keeps leading (counting
        quorums without itself) until the change commits; then it hands leadership to the
        most up-to-date voter (TimeoutNow, §3.10) and steps down, at once if the transfer
        cannot start or once it timed out."""
        leader = self._leader
        if self._self_voter or self.commit_index < self.membership_index:
            return
        if leader.transfer_target and not leader.timeout_now_sent:
            return  # the handover is under way
        if not leader.handover_started:
            leader.handover_started = True
            self._on_transfer_leader(TransferLeader(0))
            if leader.transfer_target and not leader.timeout_now_sent:
                return  # bringing the target up to date first
        # TimeoutNow went out, or no voter could take over, or the transfer timed out. The
        # followers learn the commit index (the removal's, at least) before we go quiet.
        self._notify_commit()
        self._become_follower(self.term, 0)

    def _update_auto_change_due(self) -> None:
        """See ``_auto_change_due``: a learner to promote, or a member whose data directory
        (as last heard) is not the one bound."""
        ms = self.membership
        self._auto_change_due = not ms.implicit and any(
            (m.promote and not m.voter) or ((u := self._known_uuid(m.id)) != "" and u != m.uuid)
            for m in ms.members
        )

    def _maybe_auto_change(self) -> None:
        """Changes the leader proposes itself, one at a time, once nothing is pending: BIND
        members whose data directory is not the one bound (a wiped voter, a member the
        bootstrap entry could not bind), else PROMOTE a joining learner (``promote``) that is
        caught up (replicating, within ``max_promote_lag_entries``) and was heard from within
        the minimum election timeout."""
        ms = self.membership
        if (
            not self._auto_change_due
            or self.pending_conf_index
            or self._leader.transfer_target
            or not self._self_voter
            or not self._committed_in_term()
        ):
            return
        # Every learner whose directory changed, and at most one voter (a rebound voter is
        # taken back as a learner: one server out per change, thesis §4.1).
        rebind: list[tuple[int, str]] = []
        voter_rebound = False
        for m in ms.members:
            uuid = self._known_uuid(m.id)
            if not uuid or uuid == m.uuid or (m.voter and voter_rebound):
                continue
            voter_rebound = voter_rebound or m.voter
            rebind.append((m.id, uuid))
        if rebind:
            # First: a voter on a directory not its own counts in the quorum's size and
            # never in a majority, worse than a learner.
            change = ConfChange(ConfChangeKind.BIND, uuids=tuple(rebind))
            try:
                self._append_config(ms.with_change(change))
                return
            except ConfChangeError:
                pass  # e.g. the last voter: nothing the leader can do by itself
        for m in ms.members:
            if not m.voter and m.promote and self._not_caught_up(m.id) is None:
                self._append_config(ms.with_change(ConfChange(ConfChangeKind.PROMOTE, m.id)))
                return

    # ------------------------------------------------------------------ end of step

    def _notify_commit(self) -> None:
        self._leader.commit_notify_at_ms = NEVER
        for peer, progress in self.progress.items():
            if progress.sent_commit < self.commit_index:
                self._send_append(peer, progress, send_empty=True)

    def _end_step(self) -> None:
        """What every step ends with, once all its events are in: the leader counts its own
        MemFirst append toward commit and sends what each follower lacks (batching), a new
        commit index is scheduled to reach the followers, committed entries go out as one
        ``Apply``, and a changed (role, term, leader) as ``RoleChanged``. (Not an fsync.)"""
        if self._quorum_changed:
            self._quorum_changed = False
            self._check_quorum()
        if self._campaigns_until and self.commit_index >= self._campaigns_until:
            # The entry that removed us has committed: no more campaigns, no timer.
            self._campaigns_until = 0
            if self.role is not Role.LEADER:
                self._election_deadline = NEVER
        if not self._self_voter and isinstance(self._state, LeaderState):
            self._maybe_hand_over()
        if self._auto_change_due and isinstance(self._state, LeaderState):
            self._maybe_auto_change()
        if isinstance(leader := self._state, LeaderState):
            if self._mem_first:
                # MemFirst counts the leader's own append at once (no Persisted to wait for);
                # this is what lets a single-node cluster commit a proposal in the same step.
                self._maybe_commit()
            progress_map = leader.tracker.progress
            for peer, progress in progress_map.items():
                self._send_append(peer, progress, send_empty=False)
            if (
                leader.commit_advanced
                and leader.commit_notify_at_ms == NEVER
                and any(p.sent_commit < self.commit_index for p in progress_map.values())
            ):
                # Followers learn a new commit index from the next AppendEntries, which under
                # load follows within a moment; only if none went out by then does a message
                # of its own carry it. This halves the messages of a lone client's writes.
                leader.commit_notify_at_ms = self.now + self.config.commit_notify_delay_ms
            leader.commit_advanced = False
        if self.commit_index > self._applied_emitted:
            entries = self.log.slice(self._applied_emitted + 1, self.commit_index)
            self._applied_emitted = self.commit_index
            self._out.append(Apply(tuple(entries)))
        state = (self.role, self.term, self.leader_id)
        if state != self._announced:
            self._announced = state
            self._out.append(RoleChanged(*state))
