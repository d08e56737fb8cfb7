"""Failover through HAProxy, measured end to end (``make bench-failover``).

Three node processes and HAProxy running ``deploy/haproxy.cfg`` (its ports moved to free ones,
exactly as the e2e test runs it), with one client writing distinct keys through HAProxy the
whole time. Then, repeatedly:

* **SIGKILL of the leader**: (a) time until another node answers ``/primary`` 200 (health ports
  polled every 10 ms); (b) time until a write *sent after the kill* is acknowledged through
  HAProxy. The node is restarted and its catch-up timed: from the restart until its
  ``applied_index`` reaches the leader's ``commit_index`` as it was at the restart.
* **SIGTERM of the leader** (leadership transfer, then exit): time until another node is
  ``/primary``, and the write unavailability: the longest gap between two consecutive
  acknowledged writes from the signal until a write sent after the old process exited is
  acknowledged (normal write latency included). The node is restarted the same way.

At the end every acknowledged write is read back through HAProxy (linearizable) and must hold
its value: the run fails if one is lost. Loopback only; the temporary directory (data, logs,
rendered config) is removed at the end. Run from the repository root:

    .venv/bin/python -m bench.failover [--runs 10] [--graceful-runs 10] [--lb-port 8080]
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import math
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import trio

from tests.e2e.cluster import Cluster, Node, key_path
from tests.e2e.test_haproxy import HAPROXY, HAProxy, lb_cluster

POLL_S = 0.01
PROBE_TIMEOUT_S = 0.25
STEP_TIMEOUT_S = 30.0
"""Bound on every wait; a step that takes longer aborts the run."""
WARMUP_ACKS = 20
"""Acknowledged writes between a node's catch-up and the next fault: a steady stream."""
VERIFY_CONCURRENCY = 8

TARGETS_S = {"kill_leader": 1.0, "kill_writes": 2.0, "term_unavailable": 0.3}


class BenchError(Exception):
    """A step did not finish in time or the cluster misbehaved."""


@dataclass
class Writes:
    """What the steady writer did: every attempt and every acknowledged write, timestamped."""

    acked: dict[str, str] = field(default_factory=dict)
    ack_times: list[tuple[float, float]] = field(default_factory=list)
    """(sent, acknowledged) of every acknowledged write, in order."""
    attempts: list[tuple[float, float, str]] = field(default_factory=list)
    """(sent, answered, outcome) of every attempt: an HTTP status or a transport error."""
    failures: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def first_ack_sent_after(self, t: float) -> float | None:
        """When the earliest write sent at or after ``t`` was acknowledged (None: none yet)."""
        found = None
        for sent, acked in reversed(self.ack_times):
            if sent < t:
                break
            found = acked
        return found

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time without an acknowledgement, from the last one before ``start``
        to the first one at or after ``end``."""
        times = [acked for _, acked in self.ack_times]
        before = [t for t in times if t < start]
        inside = [t for t in times if start <= t <= end]
        points = ([before[-1]] if before else [start]) + inside
        return max((b - a for a, b in itertools.pairwise(points)), default=0.0)

    def timeline(self, t0: float, end: float) -> list[str]:
        """The attempts between ``t0`` and ``end`` as runs of one outcome, times from t0."""
        window = (a for a in self.attempts if a[1] >= t0 and a[0] <= end)
        lines = []
        for outcome, group in itertools.groupby(window, key=lambda attempt: attempt[2]):
            runs = list(group)
            first, last = runs[0][0] - t0, runs[-1][1] - t0
            lines.append(f"  {first:+7.3f} .. {last:+7.3f} s  {len(runs):4} x write {outcome}")
        return lines


async def steady_writer(client: httpx.AsyncClient, writes: Writes) -> None:
    """Write distinct keys through the load balancer, one at a time, until cancelled."""
    seq = 0
    while True:
        seq += 1
        key, value = f"bench-{seq}", f"value {seq}"
        sent = time.monotonic()
        try:
            response = await client.post("/kv", json={"key": key, "value": value})
            outcome = str(response.status_code)
        except httpx.TransportError as exc:
            outcome = type(exc).__name__
        done = time.monotonic()
        writes.attempts.append((sent, done, outcome))
        if outcome == "200":
            writes.acked[key] = value
            writes.ack_times.append((sent, done))
            writes.latencies_s.append(done - sent)
        else:
            # 502/503/504 or a cut connection: unknown outcome, not counted; next key.
            writes.failures += 1
            await trio.sleep(POLL_S)


async def poll_until(
    check: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = STEP_TIMEOUT_S
) -> float:
    """Call (and await) ``check`` every 10 ms until it is true; the time it first was."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await trio.sleep(POLL_S)


async def probe(client: httpx.AsyncClient, url: str) -> httpx.Response | None:
    try:
        return await client.get(url, timeout=PROBE_TIMEOUT_S)
    except httpx.TransportError:
        return None


async def any_primary(client: httpx.AsyncClient, nodes: Sequence[Node]) -> bool:
    found = False

    async def one(node: Node) -> None:
        nonlocal found
        response = await probe(client, f"http://127.0.0.1:{node.health_port}/primary")
        found = found or (response is not None and response.status_code == 200)

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(one, node)
    return found


async def status_of(client: httpx.AsyncClient, node: Node) -> dict[str, object] | None:
    response = await probe(client, f"http://127.0.0.1:{node.health_port}/status")
    if response is None or response.status_code != 200:
        return None
    status: dict[str, object] = response.json()
    return status


@dataclass
class Bench:
    cluster: Cluster
    lb: HAProxy
    probes: httpx.AsyncClient
    writes: Writes
    trace: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)

    def record(self, name: str, value_s: float) -> None:
        self.samples.setdefault(name, []).append(value_s)

    async def steady(self) -> Node:
        """Wait for one leader, HAProxy routing to it, every node caught up, writes flowing."""
        cluster, lb = self.cluster, self.lb
        leader = await trio.to_thread.run_sync(cluster.wait_for_leader, STEP_TIMEOUT_S)
        await trio.to_thread.run_sync(
            lb.wait_for_routes, leader, cluster.followers(leader), STEP_TIMEOUT_S
        )
        target = len(self.writes.acked) + WARMUP_ACKS
        await poll_until(lambda: len(self.writes.acked) >= target, "steady writes")
        return leader

    async def ack_sent_after(self, t: float, what: str) -> float:
        found: list[float] = []

        def check() -> bool:
            acked = self.writes.first_ack_sent_after(t)
            if acked is not None:
                found.append(acked)
            return acked is not None

        await poll_until(check, what)
        return found[0]

    async def restart_and_catch_up(self, node: Node) -> None:
        """Start ``node`` again; time it until it has applied what was committed meanwhile."""
        leader = next(n for n in self.cluster.alive() if n is not node)
        status = await status_of(self.probes, leader)
        if status is None or status.get("leader_id") is None:
            raise BenchError(f"node {leader.node_id} gave no status: {status}")
        leader_id = status["leader_id"]
        leader = next(n for n in self.cluster.nodes if n.node_id == leader_id)
        status = await status_of(self.probes, leader)
        if status is None:
            raise BenchError(f"the leader {leader_id} gave no status")
        target = status["commit_index"]
        assert isinstance(target, int)
        spawned = time.monotonic()
        node.stop_requested = False
        node.start(self.cluster.root)
        answering: list[float] = []

        async def caught_up() -> bool:
            own = await status_of(self.probes, node)
            if own is None:
                if not node.running():
                    raise BenchError(f"node {node.node_id} exited\n{node.log_text()[-3000:]}")
                return False
            if not answering:
                answering.append(time.monotonic())
            applied = own["applied_index"]
            return isinstance(applied, int) and applied >= target

        done = await poll_until(caught_up, f"node {node.node_id} to catch up")
        self.record("catchup_total", done - spawned)
        self.record("catchup_after_up", done - answering[0])

    async def kill_run(self) -> str:
        leader = await self.steady()
        survivors = self.cluster.followers(leader)
        t0, wall0 = time.monotonic(), time.time()
        assert leader.proc is not None
        leader.proc.kill()
        leader.stop_requested = True
        elected = await poll_until(lambda: any_primary(self.probes, survivors), "a new leader")
        resumed = await self.ack_sent_after(t0, "a write through HAProxy after the kill")
        await trio.to_thread.run_sync(leader.proc.wait, STEP_TIMEOUT_S)
        self.record("kill_leader", elected - t0)
        self.record("kill_writes", resumed - t0)
        self.show_trace(t0, wall0, resumed)
        await self.restart_and_catch_up(leader)
        return (
            f"killed node {leader.node_id}: new leader {elected - t0:.3f} s, "
            f"writes {resumed - t0:.3f} s, catch-up {self.samples['catchup_total'][-1]:.3f} s"
        )

    async def term_run(self) -> str:
        leader = await self.steady()
        others = self.cluster.followers(leader)
        t0, wall0 = time.monotonic(), time.time()
        leader.terminate()
        elected = await poll_until(lambda: any_primary(self.probes, others), "the hand-over")
        exited = await poll_until(lambda: not leader.running(), f"node {leader.node_id} to exit")
        assert leader.proc is not None
        if leader.proc.returncode != 0:
            raise BenchError(f"node {leader.node_id} exited with {leader.proc.returncode}")
        resumed = await self.ack_sent_after(exited, "a write after the old leader exited")
        gap = self.writes.longest_gap(t0, resumed)
        self.record("term_leader", elected - t0)
        self.record("term_unavailable", gap)
        self.record("term_exit", exited - t0)
        self.show_trace(t0, wall0, resumed)
        await self.restart_and_catch_up(leader)
        return (
            f"stopped node {leader.node_id}: hand-over {elected - t0:.3f} s, "
            f"longest write gap {gap:.3f} s, exit {exited - t0:.3f} s"
        )

    def show_trace(self, t0: float, wall0: float, end: float) -> None:
        """With --trace: the writes and HAProxy's server state changes around a fault."""
        if not self.trace:
            return
        lines = [(0.0, "  " + "fault".rjust(19))]
        lines += [(float(line.split()[0]), line) for line in self.writes.timeline(t0, end)]
        for line in self.lb.log_text().splitlines():
            stamp, _, message = line.partition(" ")
            try:
                at = float(stamp) - wall0
            except ValueError:
                continue
            state_change = re.search(r"Server \S+ is (UP|DOWN)", message)
            if 0 <= at <= end - t0 and state_change:
                lines.append((at, f"  {at:+7.3f} s  haproxy: {state_change.group(0)}"))
        for _, line in sorted(lines, key=lambda item: item[0]):
            print(line, flush=True)

    async def verify(self) -> int:
        """Read every acknowledged write back through HAProxy; the number lost."""
        lost: list[str] = []
        items = list(self.writes.acked.items())
        limiter = trio.Semaphore(VERIFY_CONCURRENCY)

        async def check(key: str, value: str) -> None:
            async with limiter:
                for _ in range(3):  # a 503 is a busy or moving cluster, not a lost write
                    response = await self.probes.get(
                        f"{self.lb.url}{key_path(key)}",
                        params={"consistency": "linearizable"},
                        timeout=10,
                    )
                    if response.status_code != 503:
                        break
                if response.status_code != 200 or response.json() != {"value": value}:
                    lost.append(f"{key}: {response.status_code} {response.text[:80]}")

        async with trio.open_nursery() as nursery:
            for key, value in items:
                nursery.start_soon(check, key, value)
        for line in lost[:10]:
            print(f"  LOST {line}", flush=True)
        return len(lost)


def _fmt(value_s: float) -> str:
    return f"{value_s:.3f} s"


ROWS = (
    ("kill_leader", "SIGKILL leader: new leader (`/primary` 200)", "kill_leader"),
    ("kill_writes", "SIGKILL leader: writes acknowledged through HAProxy again", "kill_writes"),
    ("catchup_total", "Restarted node: start to caught up (applied >= commit)", None),
    ("catchup_after_up", "Restarted node: health port up to caught up", None),
    ("term_leader", "SIGTERM leader: new leader (hand-over)", None),
    ("term_unavailable", "SIGTERM leader: write unavailability (longest gap)", "term_unavailable"),
    ("term_exit", "SIGTERM leader: old process exited", None),
)


def report(bench: Bench, lost: int, started: float) -> str:
    writes = bench.writes
    lines = [
        "| Measure | Runs | Median | Max | Target |",
        "|---|---:|---:|---:|---|",
    ]
    for name, label, target in ROWS:
        values = bench.samples.get(name)
        if not values:
            continue
        median = statistics.median(values)
        goal = "" if target is None else TARGETS_S[target]
        verdict = (
            ""
            if target is None
            else f"<= {goal} s {'met' if median <= TARGETS_S[target] else 'MISSED'}"
        )
        lines.append(
            f"| {label} | {len(values)} | {_fmt(median)} | {_fmt(max(values))} | {verdict} |"
        )
    latencies = sorted(writes.latencies_s)
    p50 = statistics.median(latencies) * 1000 if latencies else math.nan
    lines += [
        "",
        f"Acknowledged writes: {len(writes.acked)}, read back (linearizable, through HAProxy): "
        f"{len(writes.acked) - lost}, lost: {lost}. Failed attempts (not acknowledged, "
        f"not counted): {writes.failures}. Steady write latency median {p50:.1f} ms. "
        f"Total run {time.monotonic() - started:.0f} s.",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dengine-failover-") as root:
        with lb_cluster(Path(root), args.lb_port) as (cluster, lb):
            print(f"3 nodes + HAProxy on {lb.url} (data in {root})", flush=True)
            async with httpx.AsyncClient(base_url=lb.url, timeout=15, trust_env=False) as writer:
                async with httpx.AsyncClient(trust_env=False) as probes:
                    bench = Bench(cluster, lb, probes, Writes(), args.trace)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(steady_writer, writer, bench.writes)
                            for i in range(1, args.runs + 1):
                                line = await bench.kill_run()
                                print(f"[kill {i}/{args.runs}] {line}", flush=True)
                            for i in range(1, args.graceful_runs + 1):
                                line = await bench.term_run()
                                print(f"[term {i}/{args.graceful_runs}] {line}", flush=True)
                            await bench.steady()
                            nursery.cancel_scope.cancel()
                    except BenchError as exc:
                        print(f"failed: {exc}\n{cluster.logs()}", file=sys.stderr)
                        print(lb.log_text()[-3000:], file=sys.stderr)
                        return 1
                    print(f"verifying {len(bench.writes.acked)} acknowledged writes", flush=True)
                    lost = await bench.verify()
        print()
        print(report(bench, lost, started))
    return 1 if lost else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="SIGKILL repetitions (10)")
    parser.add_argument("--graceful-runs", type=int, default=10, help="SIGTERM repetitions (10)")
    parser.add_argument(
        "--lb-port", type=int, default=0, help="HAProxy's client port (default: a free one)"
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="after each fault, print the write outcomes and HAProxy's server state changes",
    )
    args = parser.parse_args(argv)
    if HAPROXY is None:
        print("haproxy is not installed: sudo apt-get install haproxy", file=sys.stderr)
        return 2
    # Ctrl+C: stop at once; the context managers still stop the nodes and HAProxy.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return trio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
