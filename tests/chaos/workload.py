"""Clients of the process campaign: concurrent HTTP operations, recorded as a history.

Every operation is recorded with its invocation and completion times (``time.monotonic`` of
this process) and an outcome in the checker's terms:

- ``ok``: a put answered 200, or a get answered 200 (value) or 404 (absent);
- ``fail``: certainly not applied. A put that could not connect, or answered 503 with
  ``not_leader``, ``no_leader`` or ``overloaded`` (the engine retries only while nothing was
  committed, and refuses before proposing), or any other 4xx;
- ``unknown``: may or may not have been applied: a timeout, 504, 500, 503 ``stopped`` (a
  stopping leader fails proposals that may still commit), or a connection that broke after
  the request was sent. A get that did not return a value is ``fail`` (reads change nothing).
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import httpx
import trio

from tests.support.linearizability import Operation, Outcome

from .cluster import ChaosCluster

__all__ = ["CLIENT_TIMEOUT_S", "Workload", "lost_writes"]

CLIENT_TIMEOUT_S = 8.0
"""Above the nodes' ``request_timeout_ms`` (5 s), so the node's own verdict usually arrives."""
DEFINITELY_NOT_APPLIED = frozenset({"not_leader", "no_leader", "overloaded"})


def _error_code(response: httpx.Response) -> str:
    try:
        code = json.loads(response.content).get("error", "")
    except (ValueError, AttributeError):
        return ""
    return code if isinstance(code, str) else ""


def put_outcome(response: httpx.Response) -> Outcome:
    status = response.status_code
    if status == 200:
        return "ok"
    if status == 503 and _error_code(response) in DEFINITELY_NOT_APPLIED:
        return "fail"
    if 400 <= status < 500:
        return "fail"
    return "unknown"


class Workload:
    """``clients`` concurrent clients doing puts (unique values) and linearizable or lease gets
    on ``keys`` at random nodes, until ``stop()``; each finishes its operation in flight."""

    def __init__(
        self,
        cluster: ChaosCluster,
        seed: int,
        keys: list[str],
        clients: int = 3,
        *,
        lease_reads: bool = True,
        think_s: float = 0.02,
    ) -> None:
        self.cluster = cluster
        self.seed = seed
        self.keys = keys
        self.clients = clients
        self.lease_reads = lease_reads
        self.think_s = think_s
        self.history: list[Operation] = []
        self.responses: Counter[str] = Counter()
        """``<op> <status or error>`` -> count, for the report."""
        self._stopping = False

    def stop(self) -> None:
        self._stopping = True

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for n in range(1, self.clients + 1):
                nursery.start_soon(self._client, n)

    async def _client(self, n: int) -> None:
        rng = random.Random(f"{self.seed}/client{n}")
        seq = 0
        async with httpx.AsyncClient(trust_env=False, timeout=CLIENT_TIMEOUT_S) as http:
            while not self._stopping:
                node = rng.choice(self.cluster.ids)
                key = rng.choice(self.keys)
                draw = rng.random()
                if draw < 0.5:
                    seq += 1
                    await self.put(http, f"c{n}", node, key, f"{self.seed}.{n}.{seq}")
                else:
                    policy = "lease" if self.lease_reads and draw > 0.85 else "linearizable"
                    await self.get(http, f"c{n}", node, key, policy)
                await trio.sleep(rng.uniform(0, self.think_s))

    async def put(
        self, http: httpx.AsyncClient, client: str, node: int, key: str, value: str
    ) -> Operation:
        url = self.cluster.kv_url(node, "/kv")
        invoke = time.monotonic()
        outcome: Outcome
        try:
            response = await http.post(url, json={"key": key, "value": value})
        except httpx.ConnectError:
            outcome, what = "fail", "connect error"
        except httpx.HTTPError as exc:
            outcome, what = "unknown", type(exc).__name__
        else:
            outcome = put_outcome(response)
            what = f"{response.status_code} {_error_code(response)}".strip()
        op = Operation(f"{client} n{node}", "put", key, value, invoke, time.monotonic(), outcome)
        self.history.append(op)
        self.responses[f"put {what}"] += 1
        return op

    async def get(
        self, http: httpx.AsyncClient, client: str, node: int, key: str, policy: str
    ) -> Operation:
        url = self.cluster.key_url(node, key, policy)
        invoke = time.monotonic()
        value: str | None = None
        outcome: Outcome = "fail"
        try:
            response = await http.get(url)
        except httpx.HTTPError as exc:
            what = type(exc).__name__
        else:
            what = f"{response.status_code} {_error_code(response)}".strip()
            if response.status_code == 200:
                value, outcome = json.loads(response.content)["value"], "ok"
            elif response.status_code == 404:
                outcome = "ok"
        op = Operation(
            f"{client} n{node} {policy}", "get", key, value, invoke, time.monotonic(), outcome
        )
        self.history.append(op)
        self.responses[f"get {what}"] += 1
        return op

    async def final_reads(self, timeout_s: float) -> dict[str, str | None]:
        """One linearizable read of every key that succeeds (retrying at every node in turn),
        recorded in the history; returns what they read."""
        values: dict[str, str | None] = {}
        async with httpx.AsyncClient(trust_env=False, timeout=CLIENT_TIMEOUT_S) as http:
            with trio.move_on_after(timeout_s):
                for key in self.keys:
                    attempt = 0
                    while True:
                        node = self.cluster.ids[attempt % len(self.cluster.ids)]
                        attempt += 1
                        op = await self.get(http, "final", node, key, "linearizable")
                        if op.outcome == "ok":
                            values[key] = op.value  # type: ignore[assignment]
                            break
                        await trio.sleep(0.1)
        missing = [k for k in self.keys if k not in values]
        if missing:
            raise AssertionError(
                f"no linearizable read of {missing} succeeded within {timeout_s:.0f} s after "
                f"healing\n{self.cluster.logs()}"
            )
        return values


def lost_writes(history: list[Operation], final: dict[str, str | None]) -> list[Operation]:
    """Acknowledged puts that the final state of their key contradicts: the key is absent, or
    holds a value whose put had completed before the acknowledged put was invoked (so the
    acknowledged one must come after it in any linearization)."""
    puts = {op.value: op for op in history if op.kind == "put"}
    lost = []
    for op in history:
        if op.kind != "put" or op.outcome != "ok":
            continue
        value = final[str(op.key)]
        if value is None:
            lost.append(op)
            continue
        writer = puts.get(value)
        if writer is None:
            continue  # a value never written: the linearizability check reports it
        if writer.outcome == "ok" and writer.complete is not None and writer.complete < op.invoke:
            lost.append(op)
    return lost
