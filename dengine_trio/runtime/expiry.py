"""The leader's expirer: it proposes the deletion of every key whose TTL deadline has passed.

Why the leader proposes: every replica must remove a key at the same point of the log, so the
removal is a command like any write (``kv_commands.encode_expire``), decided once. It carries
the key's ``mod_index``, and the state machine applies it only if the key still has that
index and a deadline at or before the command's ``now_ms``: a key rewritten (or given a new
TTL) after the expirer looked survives. Every :data:`EXPIRY_INTERVAL_MS` (50 ms) the leader
asks the state machine for keys due (``KVStateMachine.expired``, a heap of deadlines: cheap
when nothing is due) and proposes at most :data:`EXPIRY_BATCH` of them, with at most
:data:`MAX_IN_FLIGHT` proposals waiting at once; a proposal that fails (a leader change, a
timeout) is simply tried again at a later tick by whoever leads then.

A TTL survives leader changes and restarts because the deadline is in the log and the
snapshot (absolute wall-clock ms), not in the expirer: a new leader's expirer finds the same
keys due. Reads do not wait for the expirer: a read on any node treats a key whose deadline
is at or before that node's wall clock as absent (``KVStateMachine.get_item``). So no read
returns a key more than the clock offset between the proposer of its write and the reading
node past its deadline; the expirer only frees the memory, about one interval plus one commit
after the deadline (longer while no leader is elected).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..errors import DengineError
from ..kv_commands import encode_expire
from ..statemachine import KVStateMachine

if TYPE_CHECKING:
    from .node import NodeRuntime

__all__ = ["EXPIRY_BATCH", "EXPIRY_INTERVAL_MS", "MAX_IN_FLIGHT", "Expirer"]

EXPIRY_INTERVAL_MS = 50
"""How often (ms) the leader looks for keys past their deadline."""
EXPIRY_BATCH = 256
"""The most keys one tick proposes to expire."""
MAX_IN_FLIGHT = 64
"""The most expire proposals waiting for their commit at once (each holds a request slot)."""

log = logging.getLogger("dengine_trio.expiry")


class Expirer:
    """Expires the keys of ``sm`` while ``node`` leads; run :meth:`run` in the node's nursery
    (it ends when that nursery is cancelled at the node's stop). ``wall_clock_ms`` is the
    clock deadlines are compared with (ms since the Unix epoch)."""

    def __init__(
        self,
        node: NodeRuntime,
        sm: KVStateMachine,
        wall_clock_ms: Callable[[], int],
        interval_ms: int = EXPIRY_INTERVAL_MS,
    ) -> None:
        self._node = node
        self._sm = sm
        self._clock = wall_clock_ms
        self._interval_s = interval_ms / 1000
        self._in_flight: set[tuple[bytes, int]] = set()
        self.proposed = 0
        """Expire commands proposed so far (for tests and the curious)."""

    async def run(self) -> None:
        """Until cancelled: every interval, on the leader, propose what is due."""
        async with trio.open_nursery() as nursery:
            while True:
                await trio.sleep(self._interval_s)
                raft = self._node.raft
                if raft is None or not raft.is_leader or self._node.refusing:
                    continue
                self.tick(nursery)

    def tick(self, nursery: trio.Nursery) -> int:
        """Start the expire proposals due now (at most :data:`EXPIRY_BATCH`, and no more than
        :data:`MAX_IN_FLIGHT` waiting in all); returns how many were started."""
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return 0
        now_ms = self._clock()
        started = 0
        for key, mod_index in self._sm.expired(now_ms, EXPIRY_BATCH):
            if started >= room:
                break
            if (key, mod_index) in self._in_flight:
                continue
            self._in_flight.add((key, mod_index))
            nursery.start_soon(self._expire, key, mod_index, now_ms)
            started += 1
        return started

    async def _expire(self, key: bytes, mod_index: int, now_ms: int) -> None:
        try:
            self.proposed += 1
            await self._node.propose(encode_expire(key, mod_index, now_ms=now_ms))
        except DengineError as exc:
            # Lost leadership, a timeout, a stop: a later tick (on whoever leads) retries.
            log.debug("expire of a key at index %d not applied: %s", mod_index, exc)
        finally:
            self._in_flight.discard((key, mod_index))
