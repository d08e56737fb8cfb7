"""The leader's read-only machinery (thesis §6.4; etcd raft's ``read_only.go``): numbered
heartbeat rounds, the reads waiting for one to be confirmed by a majority (ReadIndex), the
reads held until the leader's first commit of its term, and the lease.

Pure bookkeeping: ``RaftNode`` decides when a round starts, whether a round may back the lease,
and what a confirmed round releases; the tracker says which round a majority confirmed.
"""

from __future__ import annotations

import attrs


@attrs.define(slots=True)
class PendingRead:
    """A read waiting for heartbeat round ``seq``. ``origin`` is 0 for a local client, else
    the follower that asked on behalf of its client."""

    seq: int
    request_id: int
    origin: int
    read_index: int


@attrs.define(slots=True)
class HeldRead:
    """A read that arrived before the leader committed an entry of its term."""

    request_id: int
    origin: int
    lease: bool


class ReadOnly:
    """Rounds, waiting reads and the lease of one leadership (a new one per role change)."""

    __slots__ = ("_sent", "confirmed_seq", "held", "lease_expiry", "pending", "seq")

    def __init__(self) -> None:
        self.seq = 0  # the newest round started
        self.confirmed_seq = 0  # the newest round a majority acknowledged
        self._sent: dict[int, tuple[float, bool]] = {}  # seq -> (sent at ms, may back lease)
        self.lease_expiry = float("-inf")  # ms
        self.pending: list[PendingRead] = []
        self.held: list[HeldRead] = []

    def start_round(self, now_ms: float, *, lease_ok: bool) -> int:
        """Number a new heartbeat round sent at ``now_ms``; ``lease_ok`` False: its
        acknowledgements never extend the lease (a transfer was pending, or TimeoutNow sent)."""
        self.seq += 1
        self._sent[self.seq] = (now_ms, lease_ok)
        return self.seq

    def confirm(self, confirmed: int, lease_duration_ms: float) -> list[PendingRead]:
        """A majority acknowledged every round up to ``confirmed``: extend the lease from the
        newest such round that may back it (it runs from when that round was *sent*: every
        voter that acked it then ignored campaigns for an election timeout from a later
        moment), and return the reads released, in order."""
        if confirmed > self.confirmed_seq:
            self.confirmed_seq = confirmed
            for seq in [s for s in self._sent if s <= confirmed]:
                sent_at, lease_ok = self._sent.pop(seq)
                if lease_ok:
                    self.lease_expiry = max(self.lease_expiry, sent_at + lease_duration_ms)
        if not self.pending or self.pending[0].seq > confirmed:
            return []
        ready = [r for r in self.pending if r.seq <= confirmed]
        self.pending = [r for r in self.pending if r.seq > confirmed]
        return ready

    def void_lease(self) -> None:
        """End the lease now (a transfer started or TimeoutNow went out, thesis §3.10):
        rounds acknowledged earlier no longer let lease reads be served locally."""
        self.lease_expiry = float("-inf")

    def take_held(self) -> list[HeldRead]:
        """The reads held until the leader's first commit of its term (thesis §6.4), in
        arrival order; none are held afterwards."""
        held, self.held = self.held, []
        return held

    def take_all(self) -> tuple[list[PendingRead], list[HeldRead]]:
        """Every read still waiting, to be failed (the leadership ends)."""
        pending, held = self.pending, self.held
        self.pending, self.held = [], []
        return pending, held
