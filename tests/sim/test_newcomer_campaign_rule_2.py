"""A second newcomer's attacks on the campaign rule of fa45557/7e21e7e (docs/architecture.md,
"Membership changes in the core", rules 5 and 6; thesis §4.2.2): a node whose newest
configuration entry removed it, not committed as far as its commit index knows, campaigns
(without its own vote) if it was a bound voter of the explicit membership just before that
entry. These schedules go where tests/sim/test_newcomer_campaign_rule.py did not: log
truncation of the removing entry, snapshots (installed or taken), a re-add while the node
campaigns, two different uncommitted removals in a five-node cluster. Each asserts that what
it aimed at happened."""

from __future__ import annotations

from dengine_trio.raft import Role
from dengine_trio.raft.membership import ConfChange
from dengine_trio.raft.messages import AppendEntries, AppendEntriesResponse, Heartbeat

from .cluster import Cluster, SimNode
from .test_membership import explicit_cluster, finish, wait_op, wait_until
from .test_newcomer_campaign_rule import (
    ADD,
    CAMPAIGNING,
    REMOVE,
    _power_cut,
    _record_leaders,
    _removed_and_told,
)


def _campaign_times(c: Cluster, node_id: int, ms: float) -> list[float]:
    """Run ``ms`` in 10 ms slices; the times ``node_id`` was seen (pre-)campaigning."""
    seen: list[float] = []
    for _ in range(int(ms / 10)):
        c.run_for(10)
        raft = c.nodes[node_id].raft
        if raft is not None and raft.role in CAMPAIGNING:
            seen.append(c.now)
    return seen


def test_an_install_snapshot_without_the_node_stops_its_campaign_and_a_readd_keeps_it_quiet() -> (
    None
):
    """Voters {A, B, R}, snapshots keep no log before them.

    1. Every Heartbeat A -> R is dropped, so R appends its removal C2 = {A, B} (index i)
       but never learns that it committed: R campaigns (thesis §4.2.2), ignored by A and B.
    2. A writes, snapshots past i (its log now starts after C2), and adds R back as a read
       replica (C3, R a learner). A probes R from C3; R's log ends at i, below A's log
       offset: A sends an InstallSnapshot whose membership is C2 (without R).
    3. R, its campaign timer armed, installs it: its configurations are now [C2 at the
       snapshot] alone, its commit index the snapshot's: it may campaign no more (no
       "membership before" left), then takes C3 (a learner: still quiet).
    Expected: R never leads, has no timer once installed, ends a learner; writes commit."""
    c, a = explicit_cluster(seed=21, snapshot_retained=0)
    r = next(n for n in c.ids if n != a)
    c.drop(a, r, Heartbeat)
    op = c.change(a, ConfChange(REMOVE, r))
    wait_op(c, op)
    assert c.history[op].ok
    removal = c.raft(a).membership_index
    assert c.raft(r).membership_index == removal and c.raft(r).commit_index < removal
    assert wait_until(c, lambda: c.raft(r).role in CAMPAIGNING, 4_000)
    leaders = _record_leaders(c)
    for k in range(3):
        w = c.put(a, f"k{k}")
        wait_op(c, w)
        assert c.history[w].ok
    c.take_snapshot(a)
    assert wait_until(c, lambda: c.raft(a).log.first_index > removal + 1)
    seen: dict[str, object] = {}

    def at_install(moment: str, node: SimNode) -> bool:
        raft = node.raft
        if node.id == r and raft is not None and moment in ("install-staged", "install-start"):
            seen.setdefault(f"{moment}-may", raft._may_campaign())
            seen.setdefault(f"{moment}-configs", [ms for _, ms in raft._configs])
            seen.setdefault(f"{moment}-deadline", raft.next_deadline())
        return False

    c.hooks.append(at_install)
    c.add_node(r)
    op = c.change(a, ConfChange(ADD, r, c.address(r), promote=False))
    wait_op(c, op)
    assert c.history[op].ok
    readd = c.raft(a).membership_index
    assert wait_until(c, lambda: c.raft(r).snapshot_index > removal, 3_000)
    raft = c.raft(r)
    assert raft.commit_index >= raft.snapshot_index > removal
    # R still had its campaign timer when the snapshot came, and installing it (membership C2, no R:
    # the snapshot is older than C3) left it one configuration and no election timer.
    assert seen["install-staged-may"] is True, seen  # (A's probe made it a follower)
    assert seen["install-staged-deadline"] != float("inf"), seen
    assert seen["install-start-may"] is False, seen
    configs = seen["install-start-configs"]
    assert isinstance(configs, list) and len(configs) == 1 and r not in configs[0].ids, seen
    # (Its timer is still armed here: the snapshot's membership equals the one in effect,
    # so ``_sync_membership`` returns before it re-arms or clears the timer; it fires once
    # and ``_campaign`` finds ``_may_campaign`` false. Harmless, checked below.)
    assert wait_until(c, lambda: c.raft(r).membership_index >= readd, 3_000)
    me = c.raft(r).membership.get(r)
    assert me is not None and not me.voter
    assert c.raft(r).next_deadline() == float("inf")
    assert not _campaign_times(c, r, 3_000)
    assert not any(n == r for n, _, _ in leaders)
    finish(c)


def test_a_removal_overwritten_by_the_same_removal_at_the_next_index_keeps_the_campaign() -> None:
    """Voters {A, B, C, D, R}.

    1. A removes R: C2 = {A, B, C, D} at index i, term t, reaches R only (A's AppendEntries
       to B, C, D dropped). A crashes; R is cut off.
    2. B, C, D elect B (term t' > t); B's no-op at i commits. B removes R too: C2' (the
       very same members) at i + 1; C's and D's answers to B are dropped, so C2' stays
       uncommitted.
    3. R is back: one AppendEntries truncates C2 at i and appends B's no-op at i and C2' at
       i + 1, with commit index i. R's membership did not change (C2 == C2'), only the
       index of the entry that removed it: R's commit index (i) now reaches the OLD
       removal's index, not the new one. R must still be allowed to campaign (its removal,
       C2' at i + 1, is uncommitted; thesis §4.2.2). Before 7e21e7e ``_sync_membership``
       returned early for an unchanged membership and R kept ``_campaigns_until = i``:
       ``_end_step`` then cleared its timer.
    4. C2' commits; the commit heartbeat tells R (commit i + 1): no timer from then on. R
       never leads; writes commit."""
    c, a = explicit_cluster(size=5, seed=22)
    r, *others = (n for n in c.ids if n != a)
    cut = [c.drop(a, n, AppendEntries) for n in others]
    op = c.change(a, ConfChange(REMOVE, r))
    assert not c.history[op].code
    i = c.raft(a).membership_index
    t = c.raft(a).term
    assert wait_until(c, lambda: c.raft(r).membership_index == i, 1_000)
    assert c.raft(r).commit_index < i
    c.crash(a)
    for rule in cut:
        c.remove_rule(rule)
    c.partition([r], others)
    assert wait_until(c, lambda: c.leader() in others and c.raft(c.leader())._committed_in_term())
    b = c.leader()
    assert b is not None and c.raft(b).log.term_at(i) != t and c.raft(b).commit_index == i
    slow = [c.drop(n, b, AppendEntriesResponse) for n in others if n != b]
    op2 = c.change(b, ConfChange(REMOVE, r))
    assert not c.history[op2].code
    assert c.raft(b).membership_index == i + 1 and c.raft(b).membership == c.raft(r).membership
    leaders = _record_leaders(c)
    c.heal()
    for rule in slow:
        c.add_rule(rule)
    reverted = False  # R's membership back to C1 at some moment (two separate steps)
    for _ in range(2_000):
        if c.raft(r).membership_index == i + 1:
            break
        reverted = reverted or r in c.raft(r).membership.ids
        c.run_for(1)
    raft = c.raft(r)
    assert raft.membership_index == i + 1 and not reverted
    assert raft.log.term_at(i) == c.raft(b).log.term_at(i) != t  # C2 overwritten
    assert raft.commit_index == i < raft.membership_index and c.raft(b).commit_index == i
    assert raft._may_campaign() and raft.next_deadline() != float("inf")
    for rule in slow:
        c.remove_rule(rule)
    assert wait_until(c, lambda: c.raft(b).commit_index > i, 2_000)
    assert wait_until(c, lambda: c.raft(r).commit_index > i, 1_000)
    assert c.raft(r).next_deadline() == float("inf") and not c.raft(r)._may_campaign()
    assert not _campaign_times(c, r, 2_000)
    assert not any(n == r for n, _, _ in leaders)
    assert c.history[op2].ok
    finish(c)


def test_a_removed_node_that_lacks_the_writes_committed_with_its_removal_learns_it() -> None:
    """Voters {A, B, R}, defaults (PreVote, CheckQuorum). No message is lost once the
    removal has committed.

    1. A's AppendEntries to B are dropped (its heartbeats pass: B is active), so nothing
       commits for a while. A removes R: C2 = {A, B} at index i; R appends it durably (it
       is departing: A replicates to it).
    2. A's AppendEntries to R are dropped from then on. R restarts (a deploy, a crash): it
       holds C2, and its new follower state knows nothing of how far its log matches A's
       (``leader_match`` 0; A's heartbeats pass, so it follows A). A takes two writes
       (i + 1, i + 2): R does not get them.
    3. A's AppendEntries to B pass again: B gets i..i + 2 in one message and acknowledges
       them at once; A commits i + 2 in one step, C2 with it, sends R the commit heartbeat
       (``_tell_commit``: commit i + 2, its term) and stops replicating to R. The network
       is healed: every message is delivered from now on.
    4. R holds nothing at i + 2, so it rightly does not take that commit (``_on_heartbeat``:
       only the very entry vouches for the prefix), and its ``leader_match`` is below i.
       Nothing else will ever tell R: the leader no longer sends it anything, and the
       runtime's handshake does not step ``Removed`` into a node whose log already holds
       its removal (runtime/membership.py ``told``). R, its removal committed for good,
       keeps an election timer and pre-campaigns every election timeout, for ever, refused
       by A and B (harmless to safety; noise, and a node that looks like a candidate).

    Wrong: architecture rule 6 ("the removed node normally appends its own removal, learns
    it committed and, no voter any more, has no election timer"; ``_tell_commit``: "a lost
    one leaves a removed member campaigning ... until the handshake tells it") and thesis
    §4.2.2 (a removed server campaigns only "until the Cnew entry is committed"): here R
    appended its removal, nothing was lost after the commit, and it campaigns for good.
    The notice should name an entry R holds: the removal itself (index i, its term), which
    is all ``_campaigns_until`` waits for. Expected: R's timer stops."""
    c, a = explicit_cluster(seed=23)
    r = next(n for n in c.ids if n != a)
    b = next(n for n in c.ids if n not in (a, r))
    slow = c.drop(a, b, AppendEntries)
    op = c.change(a, ConfChange(REMOVE, r))
    assert not c.history[op].code
    i = c.raft(a).membership_index
    assert wait_until(c, lambda: c.raft(r).durable_index == i, 1_000)
    cut = c.drop(a, r, AppendEntries)
    c.crash(r, lose_unflushed=False)
    c.restart(r)
    assert c.raft(r).membership_index == i and c.raft(r)._may_campaign()
    assert wait_until(c, lambda: c.raft(r).leader_id == a, 1_000)  # A's heartbeats pass
    writes = [c.put(a, f"w{k}") for k in range(2)]
    assert c.raft(a).log.last_index == i + 2
    c.run_for(100)
    assert c.raft(r).log.last_index == i and c.raft(b).log.last_index < i
    assert c.raft(a).commit_index < i
    c.remove_rule(slow)
    assert wait_until(c, lambda: c.raft(a).commit_index >= i, 1_000)
    assert c.raft(a).commit_index == i + 2  # in one step: C2 and both writes
    c.remove_rule(cut)  # healed: nothing is lost from here on
    assert not c.raft(a).progress.get(r)  # A no longer replicates to R
    c.run_for(5_000)
    assert c.history[op].ok and all(c.history[w].ok for w in writes)
    assert c.leader() == a
    raft = c.raft(r)
    assert raft.membership_index == i and r not in raft.membership.ids
    assert raft.commit_index >= i and raft.next_deadline() == float("inf"), (
        f"node {r} holds its removal (index {i}, committed by {c.raft(a).commit_index}) but "
        f"its commit index is {raft.commit_index}: it campaigns for good "
        f"(role {raft.role}, term {raft.term}, next deadline {raft.next_deadline()})"
    )
    finish(c)


def test_two_nodes_holding_different_uncommitted_removals_and_the_newer_one_leads() -> None:
    """Voters {A, B, C, D, E}; L (the second leader) is one of B, C, D.

    1. A removes E: C2 = {A, B, C, D} at index i, term t, reaches E only. A crashes.
    2. The others (E cut off) elect L; L's no-op at i commits. E is back, but L's
       AppendEntries to E (and to the third voter M) are dropped; its heartbeats pass, so
       E and M are active and L may remove D: C2' = {A, L, M, E} at i + 1, term t' > t,
       reaching D only. L crashes.
    3. Up: M, D, E. E holds C2 (its removal, term t), D holds C2' (its removal, term t'),
       both uncommitted: both campaign (thesis §4.2.2), without their own votes. D has the
       newest log but only M and E of its voters {A, L, M, E}; E's log is stale; M (a
       voter of C1) needs D, which refuses it a shorter log: no leader, as in any Raft
       with C2' in effect on append (a majority of C2' is down).
    4. A restarts (its log ends with C2, like E's). A, M and E grant D (a member of every
       membership their logs may fall back to; D's log is the newest): D leads C2'
       without itself, commits it with its no-op (overwriting C2 on A and E), hands over
       to a voter, and is quiet. E, whose removal was overwritten, is a voter again.
    The simulator checks election safety, leader completeness and every apply."""
    c, a = explicit_cluster(size=5, seed=24)
    e, *rest = (n for n in c.ids if n != a)
    cut = [c.drop(a, n, AppendEntries) for n in rest]
    op = c.change(a, ConfChange(REMOVE, e))
    assert not c.history[op].code
    i = c.raft(a).membership_index
    t = c.raft(a).term
    assert wait_until(c, lambda: c.raft(e).durable_index == i, 1_000)
    c.crash(a, lose_unflushed=False)
    for rule in cut:
        c.remove_rule(rule)
    c.partition([e], rest)
    assert wait_until(c, lambda: c.leader() in rest and c.raft(c.leader())._committed_in_term())
    lead = c.leader()
    assert lead is not None and c.raft(lead).commit_index == i
    d, m = (n for n in rest if n != lead)
    c.heal()
    c.drop(lead, e, AppendEntries)
    c.drop(lead, m, AppendEntries)
    assert wait_until(c, lambda: c.raft(e).leader_id == lead, 2_000)
    c.run_for(200)
    op2 = c.change(lead, ConfChange(REMOVE, d))
    assert not c.history[op2].code, c.history[op2]
    assert c.raft(lead).membership_index == i + 1
    t2 = c.raft(lead).term
    assert wait_until(c, lambda: c.raft(d).durable_index == i + 1, 1_000)
    c.crash(lead, lose_unflushed=False)
    c.heal()
    leaders = _record_leaders(c)
    # Both removed nodes hold a different uncommitted removal of their own.
    assert e not in c.raft(e).membership.ids and c.raft(e).log.term_at(i) == t
    assert d not in c.raft(d).membership.ids and c.raft(d).log.term_at(i + 1) == t2
    assert c.raft(e).commit_index < i and c.raft(d).commit_index < i + 1
    seen_e = seen_d = False
    for _ in range(300):
        c.run_for(10)
        seen_e = seen_e or c.raft(e).role in CAMPAIGNING
        seen_d = seen_d or c.raft(d).role in CAMPAIGNING
    assert seen_e and seen_d and not leaders
    c.restart(a)
    assert wait_until(c, lambda: bool(leaders), 5_000)
    assert leaders[0][0] == d and not leaders[0][2]  # D led C2', a non-voter of it
    assert wait_until(c, lambda: c.leader() in (a, m, e), 5_000)
    assert c.raft(d).next_deadline() == float("inf") and d not in c.raft(d).membership.ids
    assert e in c.raft(e).membership.ids and c.raft(e).log.term_at(i) != t
    assert [n for n, _, _ in leaders].count(d) == 1
    written = c.put(c.wait_for_leader(), "after")
    c.run_for(500)
    assert c.history[written].ok
    c.restart(lead)
    finish(c)


def test_reads_at_a_leader_elected_under_the_rule_are_never_served_by_lease() -> None:
    """Voters {A, B, R}. A write k = v1 commits; A removes R; the removal (index i, the last
    entry) commits and R is told. Power cut: all restart (every commit index 0) and A and
    B cannot reach each other. R, whose newest entry removed it, may campaign (thesis
    §4.2.2) and leads {A, B} without itself. The moment it leads, a lease read and a
    linearizable read of k are asked of it: it must not serve the lease read locally (no
    entry of its term is committed, and the previous leader's lease may still run, thesis
    §6.4.1), and whatever it serves must be linearizable (v1, the simulator's checker).
    Then R hands over. (With this seed both reads fail: R hands over in the step its no-op
    commits, failing the reads in flight; a client retries at the new leader.)"""
    c, a = explicit_cluster(seed=26)
    r = next(n for n in c.ids if n != a)
    b = next(n for n in c.ids if n not in (a, r))
    w = c.put(a, "k")
    wait_op(c, w)
    assert c.history[w].ok
    removal = _removed_and_told(c, a, r)
    assert c.raft(a).log.last_index == removal == c.raft(r).log.last_index
    leaders = _record_leaders(c)
    _power_cut(c, [a, r], [b, r])
    for _ in range(5_000):
        if c.raft(r).role is Role.LEADER:
            break
        c.run_for(1)
    raft = c.raft(r)
    assert raft.role is Role.LEADER and r not in raft.membership.ids
    assert raft.commit_index < raft.membership_index or not raft._committed_in_term()
    assert not raft.lease_valid(raft.now)
    reads = [c.read(r, "k", "lease"), c.read(r, "k", "linearizable")]
    assert wait_until(c, lambda: c.raft(r).role is Role.FOLLOWER, 2_000)
    c.run_for(500)
    assert all(c.history[x].complete is not None for x in reads)
    served = [x for x in reads if c.history[x].ok]
    assert all(c.history[x].value == c.history[w].value for x in served), [
        c.history[x] for x in reads
    ]
    assert [n for n, _, _ in leaders].count(r) == 1
    finish(c)


def test_an_install_snapshot_with_the_node_makes_a_node_whose_removal_was_dropped_a_voter() -> None:
    """Voters {A, B, C, D, R}, snapshots keep no log before them.

    1. A removes R: C2 = {A, B, C, D} at index i, term t, reaching R only. A crashes; R is
       cut off and campaigns (its removal uncommitted, thesis §4.2.2), alone.
    2. B, C, D elect a leader L; its no-op overwrites index i (on them), it writes and
       snapshots past i (its membership C1, with R: C2 never reached it).
    3. R is back: its log conflicts with L's at i, below L's log offset: L sends an
       InstallSnapshot whose membership is C1. R, with its removal C2 in effect until now,
       installs it: C2 is gone with the log it was in, R is a bound voter of C1 again
       (counts its own vote, no "removal pending" left), and follows L; writes commit."""
    c, a = explicit_cluster(size=5, seed=27, snapshot_retained=0)
    r, *others = (n for n in c.ids if n != a)
    cut = [c.drop(a, n, AppendEntries) for n in others]
    op = c.change(a, ConfChange(REMOVE, r))
    assert not c.history[op].code
    i = c.raft(a).membership_index
    t = c.raft(a).term
    assert wait_until(c, lambda: c.raft(r).durable_index == i, 1_000)
    c.crash(a)
    for rule in cut:
        c.remove_rule(rule)
    c.partition([r], others)
    assert wait_until(c, lambda: c.raft(r).role in CAMPAIGNING, 4_000)
    assert r not in c.raft(r).membership.ids and c.raft(r)._campaigns_until == i
    assert wait_until(c, lambda: c.leader() in others and c.raft(c.leader())._committed_in_term())
    lead = c.leader()
    assert lead is not None and c.raft(lead).log.term_at(i) != t
    for k in range(3):
        w = c.put(lead, f"k{k}")
        wait_op(c, w)
        assert c.history[w].ok
    c.take_snapshot(lead)
    assert wait_until(c, lambda: c.raft(lead).log.first_index > i + 1)
    seen: dict[str, object] = {}

    def at_install(moment: str, node: SimNode) -> bool:
        raft = node.raft
        if node.id == r and raft is not None and moment == "install-start":
            me = raft.membership.get(r)
            seen.setdefault("voter", me is not None and me.voter and me.uuid == node.uuid)
            seen.setdefault("configs", len(raft._configs))
            seen.setdefault("until", raft._campaigns_until)
            seen.setdefault("self_votes", raft._may_campaign() and raft._campaigns)
        return False

    c.hooks.append(at_install)
    c.heal()  # A stays down
    assert wait_until(c, lambda: c.raft(r).snapshot_index > i, 3_000)
    assert seen == {"voter": True, "configs": 1, "until": 0, "self_votes": True}, seen
    assert c.raft(r).log.term_at(i) is None and c.raft(r).leader_id == c.leader()
    written = c.put(c.wait_for_leader(), "after")
    c.run_for(500)
    assert c.history[written].ok
    finish(c)


def test_a_leader_that_removed_itself_is_readded_while_it_campaigns() -> None:
    """Voters {A, B, R}.

    1. A removes itself: C2 = {B, R} at i reaches B and R, whose answers are lost; A is
       then cut off: it loses office (CheckQuorum) with C2 uncommitted in its eyes and
       campaigns (thesis §4.2.2), alone.
    2. B and R elect a leader L of C2, whose no-op commits C2; its commit heartbeat to A is
       lost (A is cut off) and L stops replicating to A.
    3. L adds A back (a joining learner, promoted once caught up). A is reachable again: it
       takes C2's commit and the re-add (a learner: no timer, no campaign), then its
       binding and promotion; it ends a bound voter. A never leads in between."""
    c, a = explicit_cluster(seed=28)
    r, b = (n for n in c.ids if n != a)
    c.drop(b, a, AppendEntriesResponse)
    c.drop(r, a, AppendEntriesResponse)
    op = c.change(a, ConfChange(REMOVE, a))
    assert not c.history[op].code
    i = c.raft(a).membership_index
    assert wait_until(c, lambda: c.raft(b).membership_index == i == c.raft(r).membership_index)
    c.partition([a], [b, r])
    assert wait_until(c, lambda: c.raft(a).role is not Role.LEADER, 3_000)
    assert c.raft(a).commit_index < i and a not in c.raft(a).membership.ids
    assert wait_until(c, lambda: c.raft(a).role in CAMPAIGNING, 4_000)
    assert wait_until(c, lambda: c.leader() in (b, r) and c.raft(c.leader()).commit_index > i)
    lead = c.leader()
    assert lead is not None
    c.run_for(300)
    assert a not in c.raft(lead).progress  # no longer replicated to
    leaders = _record_leaders(c)
    c.add_node(a)
    op = c.change(lead, ConfChange(ADD, a, c.address(a), promote=True))
    assert not c.history[op].code
    readd = c.raft(lead).membership_index
    c.heal()
    for _ in range(3_000):
        c.run_for(1)
        if c.raft(a).membership_index >= readd:
            break
    raft = c.raft(a)
    me = raft.membership.get(a)
    assert raft.membership_index >= readd and me is not None
    assert not me.voter  # a learner, not promoted yet
    assert raft.next_deadline() == float("inf") and not raft._may_campaign()
    assert raft.commit_index >= i

    def bound_voter() -> bool:
        m = c.raft(a).membership.get(a)
        return m is not None and m.voter and m.uuid == c.nodes[a].uuid

    assert wait_until(c, bound_voter, 5_000)
    assert not any(n == a for n, _, _ in leaders)
    written = c.put(c.wait_for_leader(), "after")
    c.run_for(500)
    assert c.history[written].ok
    finish(c)


def test_a_removed_node_does_not_depose_the_leader_once_its_removal_committed() -> None:
    """Voters {A, B, R}, PreVote off, CheckQuorum on (a supported configuration).

    1. B's answers to A are dropped, so A's removal of R (C2 = {A, B}, index i) stays
       uncommitted; R appends it.
    2. Everything A sends R is dropped for a while: R's election timer fires. R may
       campaign (its removal is uncommitted in its eyes, thesis §4.2.2) and, PreVote off,
       does so for real: its term runs ahead of A's (t + 1, ...). A (a leader) and B
       (which hears from A: sticky) ignore its RequestVotes, so A stays leader of term t:
       so far, as the thesis wants.
    3. Both links are back: B's answers commit C2 at A. R's removal is committed; A sends
       R the commit heartbeat (its AppendEntries before that too), and R, in a higher term,
       answers with its term (``_receive_stale``). A takes that answer's term and steps
       down, after R's removal committed. B has not heard the new commit index yet, so R
       is still a member of a membership B's log may fall back to: R's RequestVotes move
       B's term and take its vote term after term; A (whose committed C2 has no R) refuses
       R; A and B split: no leader for seconds (here ~4 s), caused by a removed server.

    Wrong: thesis §4.2.3 (removed servers must not disrupt the cluster once they are
    removed), architecture rule 6 ("Removed nodes cannot disrupt"). Before fa45557 R had no
    election timer and its term never ran ahead. Expected: A stays leader of term t, and
    ignores the answers of a member it no longer replicates to (its removal committed)."""
    c, a = explicit_cluster(seed=29, pre_vote=False)
    r = next(n for n in c.ids if n != a)
    b = next(n for n in c.ids if n not in (a, r))
    slow = c.drop(b, a, AppendEntriesResponse)
    op = c.change(a, ConfChange(REMOVE, r))
    assert not c.history[op].code
    i = c.raft(a).membership_index
    assert wait_until(c, lambda: c.raft(r).membership_index == i, 1_000)
    mute = c.drop(a, r)  # everything A sends R
    t = c.raft(a).term
    assert wait_until(c, lambda: c.raft(r).term > t, 4_000)  # R campaigned for real
    assert c.leader() == a and c.raft(a).term == t  # ignored: A leads on
    c.remove_rule(mute)
    c.remove_rule(slow)
    assert wait_until(c, lambda: c.raft(a).commit_index >= i, 1_000)
    assert c.raft(r).commit_index < i  # R does not know; it campaigns on
    deposed = []
    for _ in range(200):
        c.run_for(10)
        if c.raft(a).role is not Role.LEADER or c.raft(a).term != t:
            deposed.append((c.now, c.raft(a).term, c.raft(r).term))
            break
    assert not deposed, (
        f"leader {a} of term {t}, which committed node {r}'s removal (index {i}), was "
        f"deposed at t={deposed[0][0]} by node {r}'s term {deposed[0][2]}"
    )
    assert c.history[op].ok
    finish(c)
